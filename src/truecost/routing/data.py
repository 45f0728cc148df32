"""Labelled routing data: the rows a router is trained and calibrated on, and their declared schema.

A row is one line of shared/data's routing JSON Lines format: ``prompt``, ``prompt_tokens``,
``models: {name: {quality, output_tokens?, cost_usd?, response?}}`` and columns of its own.
Which of those columns a scorer may read is declared, never guessed from a column's name: a
``RoutingSchema`` names the metadata features, the label-derived columns (a gold answer, the
oracle's choice, what quality means) and the columns the scorer ignores. A column it does not
name is refused: it may hold the label under an innocent name, and a scorer trained on it would
read the answer instead of the request.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from truecost.routing.scorer import TrainingDataError

# What the routing format itself declares: the prompt and its size, a row id, the per-model
# outcomes (quality, outputs, costs: every one a label) and what quality means in the file.
FORMAT_INPUTS = ("prompt", "prompt_tokens", "prompt_chars", "prompt_id")
FORMAT_LABELS = ("models", "quality_kind")
SCHEMA_KEYS = ("features", "labels", "ignore")


class SchemaError(TrainingDataError):
    """A routing file's columns and its declared schema disagree."""


@dataclass(frozen=True)
class RoutingSchema:
    """What each column of a routing file is: a feature the scorer may read, a label, or ignored."""

    features: tuple[str, ...] = ()  # metadata a scorer may read (a benchmark subject, a product feature)
    labels: tuple[str, ...] = ()  # derived from the outcome: never a feature
    ignore: tuple[str, ...] = ()  # inputs or provenance the scorer does not read
    source: str = "the routing format alone (no schema file)"

    def __post_init__(self) -> None:
        named = [*self.features, *self.labels, *self.ignore]
        twice = sorted({c for c in named if named.count(c) > 1})
        if twice:
            raise SchemaError(f"{self.source}: columns declared more than once: {', '.join(twice)}")
        reserved = sorted(set(self.features) & {*FORMAT_INPUTS, *FORMAT_LABELS})
        if reserved:
            raise SchemaError(
                f"{self.source}: {', '.join(reserved)} belong to the routing format and cannot be features"
            )

    @classmethod
    def parse(cls, doc: Any, source: str) -> "RoutingSchema":
        if not isinstance(doc, dict):
            raise SchemaError(f"{source}: a routing schema is a mapping with {', '.join(SCHEMA_KEYS)}")
        unknown = sorted(str(k) for k in set(doc) - set(SCHEMA_KEYS))
        if unknown:
            raise SchemaError(f"{source}: unknown keys {', '.join(unknown)}; known: {', '.join(SCHEMA_KEYS)}")
        for key in SCHEMA_KEYS:
            value = doc.get(key, [])
            if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
                raise SchemaError(f"{source}: {key} must be a list of column names, got {value!r}")
        features, labels, ignore = (tuple(doc.get(k, [])) for k in SCHEMA_KEYS)
        return cls(features, labels, ignore, source)

    @classmethod
    def read(cls, path: str | Path) -> "RoutingSchema":
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SchemaError(f"{path}: cannot read a routing schema ({exc})") from None
        return cls.parse(doc, str(path))

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(getattr(self, k)) for k in SCHEMA_KEYS}

    def metadata(self, row: Mapping[str, Any], where: str) -> dict[str, str]:
        """The row's declared features; an undeclared column is an error naming it."""
        undeclared = set(row) - {*FORMAT_INPUTS, *FORMAT_LABELS, *self.features, *self.labels, *self.ignore}
        if undeclared:
            raise SchemaError(
                f"{where}: undeclared columns {', '.join(sorted(undeclared))} (schema: {self.source}). "
                "A router reads only declared features: declare each column as a feature, a label "
                "(derived from the outcome) or ignored, in a JSON schema file such as "
                '{"features": ["subject"], "labels": ["gold_answer"], "ignore": []}'
            )
        return {k: str(row[k]) for k in self.features if isinstance(row.get(k), (str, int, float))}


def schema_path_for(data: str | Path) -> Path:
    """Where a data file's own schema is looked for: ``mmlu.schema.json`` beside ``mmlu.jsonl``."""
    return Path(data).with_suffix(".schema.json")


def resolve_schema(data: str | Path, schema: str | Path | None = None) -> RoutingSchema:
    """The schema given, else the one beside the data file, else the routing format's alone."""
    if schema is not None:
        return RoutingSchema.read(schema)
    beside = schema_path_for(data)
    return RoutingSchema.read(beside) if beside.is_file() else RoutingSchema()


@dataclass
class LabelledRow:
    prompt: str
    prompt_tokens: int
    q_weak: float
    q_strong: float
    out_weak: int
    out_strong: int
    metadata: dict
    file_cost_weak: float | None
    file_cost_strong: float | None
    weak_answer: str | None = None


def _model_entry(models: dict, name: str) -> dict | None:
    for k, v in models.items():
        if k == name or k.lower() == name.lower():
            return v
    return None


def _row(d: dict, w: dict, s: dict, metadata: dict) -> LabelledRow:
    return LabelledRow(
        d["prompt"],
        int(d.get("prompt_tokens") or max(len(d["prompt"]) // 4, 1)),
        float(w["quality"]),
        float(s["quality"]),
        int(w.get("output_tokens") or 1),
        int(s.get("output_tokens") or 1),
        metadata,
        w.get("cost_usd"),
        s.get("cost_usd"),
        w.get("response") or w.get("output"),
    )


def load_rows(
    path: str | Path, weak: str, strong: str, schema: RoutingSchema | None = None
) -> tuple[list[LabelledRow], int, list[str]]:
    """Rows with a quality for both models, how many lacked one, and every model the file names."""
    schema = schema if schema is not None else resolve_schema(path)
    rows, skipped, names = [], 0, set()
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                models = d["models"]
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path} line {n}: not a routing row ({exc})") from None
            names.update(models)
            metadata = schema.metadata(d, f"{path} line {n}")
            w, s = _model_entry(models, weak), _model_entry(models, strong)
            if w is None or s is None or w.get("quality") is None or s.get("quality") is None:
                skipped += 1
                continue
            rows.append(_row(d, w, s, metadata))
    for name in (weak, strong):
        if not any(name.lower() == m.lower() for m in names):
            raise ValueError(f"model {name!r} is not in {path}; it has: {', '.join(sorted(names))}")
    return rows, skipped, sorted(names)


def attach_responses(rows: list[LabelledRow], data_path: Path, weak: str) -> str | None:
    """Find the weak model's answers in raw/<stem>_responses.csv beside the data file, if any."""
    csv_path = data_path.parent / "raw" / f"{data_path.stem}_responses.csv"
    if not csv_path.exists() or all(r.weak_answer is not None for r in rows):
        return None if not all(r.weak_answer is not None for r in rows) else "inline"
    csv.field_size_limit(1 << 30)
    with open(csv_path, encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        col = next(
            (
                c
                for c in reader.fieldnames or []
                if c.lower().endswith(f"{weak.lower()}_response")
                or c.lower().split("/")[-1] == f"{weak.lower()}_response"
            ),
            None,
        )
        if col is None:
            return None
        answers = {r["prompt"].strip(): r[col] for r in reader}
    for r in rows:
        r.weak_answer = answers.get(r.prompt.strip(), r.weak_answer)
    return str(csv_path) if all(r.weak_answer is not None for r in rows) else None
