"""Read a query log: JSON Lines, CSV, plain text (one query per line) or a truecost ledger.

Nothing is dropped silently: every skipped row is counted under a reason, and a file
that yields no query at all is an error naming what was looked for.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from truecost.errors import TruecostError

MAX_QUERY_CHARS = 8_000  # longer queries are cut for embedding (counted as "truncated")


class AuditInputError(TruecostError):
    """The input file cannot be read as asked (wrong format, missing column, empty)."""


@dataclass(slots=True)
class QueryRow:
    id: str
    text: str
    label: str | None = None


@dataclass(slots=True)
class ReadStats:
    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    notes: Counter = field(default_factory=Counter)  # kept but altered: truncated, decoded_latin1, duplicate_id

    def as_dict(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped), "notes": dict(self.notes)}


def _decode(raw: bytes, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.notes["decoded_latin1"] += 1  # mixed encodings: a line that is not UTF-8 is read as Latin-1
        return raw.decode("latin-1")


def _lines(path: Path, stats: ReadStats) -> Iterator[str]:
    with open(path, "rb") as fh:
        for raw in fh:
            yield _decode(raw.rstrip(b"\r\n"), stats)


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".db", ".sqlite", ".sqlite3"):
        return "ledger"
    return "text"


def read_queries(
    path: str | Path,
    text_field: str = "text",
    label_field: str | None = None,
    fmt: str | None = None,
    id_field: str = "id",
) -> tuple[list[QueryRow], ReadStats]:
    """All queries of ``path`` with their labels (if ``label_field``), plus what was skipped and why."""
    p = Path(path)
    if not p.exists():
        raise AuditInputError(f"{p}: no such file")
    fmt = fmt or detect_format(p)
    stats = ReadStats()
    if fmt == "jsonl":
        rows = _from_jsonl(p, text_field, label_field, id_field, stats)
    elif fmt == "csv":
        rows = _from_csv(p, text_field, label_field, id_field, stats)
    elif fmt == "text":
        rows = (QueryRow(str(i), line) for i, line in enumerate(_lines(p, stats), 1))
    elif fmt == "ledger":
        rows = _from_ledger(p, stats)
    else:
        raise AuditInputError(f"unknown query format {fmt!r}: jsonl, csv, text or ledger")
    out: list[QueryRow] = []
    seen: set[str] = set()
    for row in rows:
        stats.rows += 1
        text = row.text.strip() if isinstance(row.text, str) else ""
        if not text:
            stats.skipped["empty_text"] += 1
            continue
        if len(text) > MAX_QUERY_CHARS:
            stats.notes["truncated"] += 1
            text = text[:MAX_QUERY_CHARS]
        if row.id in seen:
            stats.notes["duplicate_id"] += 1
            row.id = f"{row.id}#{stats.rows}"
        seen.add(row.id)
        row.text = text
        out.append(row)
    stats.kept = len(out)
    if not out:
        raise AuditInputError(
            f"{p}: no queries found ({fmt}, field {text_field!r}; {stats.rows} rows read, "
            f"skipped: {dict(stats.skipped) or 'none'})"
        )
    return out, stats


def _from_jsonl(
    p: Path, text_field: str, label_field: str | None, id_field: str, stats: ReadStats
) -> Iterator[QueryRow]:
    for n, line in enumerate(_lines(p, stats), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            stats.skipped["invalid_json"] += 1
            continue
        if not isinstance(obj, dict) or text_field not in obj:
            stats.skipped[f"no_{text_field}_field"] += 1
            continue
        label = obj.get(label_field) if label_field else None
        yield QueryRow(str(obj.get(id_field, n)), str(obj[text_field] or ""), None if label is None else str(label))


def _from_csv(p: Path, text_field: str, label_field: str | None, id_field: str, stats: ReadStats) -> Iterator[QueryRow]:
    text = "\n".join(_lines(p, stats))
    dialect = csv.excel_tab if p.suffix.lower() == ".tsv" else csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    columns = reader.fieldnames or []
    if text_field not in columns:
        raise AuditInputError(
            f"{p}: no column {text_field!r} (columns: {', '.join(columns) or 'none'}); "
            f"name the query column with --text-field"
        )
    if label_field and label_field not in columns:
        raise AuditInputError(f"{p}: no label column {label_field!r} (columns: {', '.join(columns)})")
    for n, rec in enumerate(reader, 1):
        yield QueryRow(
            str(rec.get(id_field) or n), rec.get(text_field) or "", rec.get(label_field) if label_field else None
        )


def _from_ledger(p: Path, stats: ReadStats) -> Iterator[QueryRow]:
    """Queries recorded in a ledger: a step's ``details['query']`` (the PII-scrubbed question, when the
    application records it, as the demo's sanitize step does) or ``details['prompt']``."""
    import sqlite3

    con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    try:
        cur = con.execute(
            "SELECT request_id, details FROM cost_events WHERE details LIKE '%\"query\"%' "
            "OR details LIKE '%\"prompt\"%' ORDER BY ts_us"
        )
    except sqlite3.DatabaseError as exc:
        raise AuditInputError(f"{p}: not a truecost ledger ({exc})") from None
    seen: set[str] = set()
    for request_id, details in cur:
        d = json.loads(details or "{}") or {}
        text = d.get("query") or d.get("prompt")
        if not isinstance(text, str) or request_id in seen:
            continue
        seen.add(request_id)
        yield QueryRow(str(request_id), text)
    con.close()
