"""routing.training, routing.data and routing.artifacts: one place for split, features, fit and artifacts."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from truecost.cache.embedders import StaticEmbedder
from truecost.cli.main import cli
from truecost.errors import TruecostError
from truecost.routing import training
from truecost.routing.artifacts import (
    ARTIFACT_VERSION,
    BASE_PROMPT_FEATURES,
    ArtifactInputs,
    read_artifact,
    write_artifact,
)
from truecost.routing.data import RoutingSchema, SchemaError, load_rows, resolve_schema
from truecost.routing.features import PROMPT_FEATURES
from truecost.routing.scorer import Example, FeatureSpec, GapScorer

WEAK, STRONG = "gpt-3.5-turbo-1106", "gpt-4-1106-preview"
SRC = Path(__file__).resolve().parents[3] / "src" / "truecost"


def _examples(n=300, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hard = rng.random() < 0.4
        text = ("prove step by step " * 3 + "x" * 300) if hard else f"hi there {i}"
        out.append(
            Example(
                text + " " + "preamble " * (i % 7),
                1.0 if hard and rng.random() < 0.9 else 0.0,
                {"topic": "math" if hard else "chat"},
            )
        )
    return out


def _as_version(path: Path, version: int) -> Path:
    """Rewrite a saved artifact's metadata as that version wrote it (fields it did not have removed)."""
    data = dict(np.load(path))
    meta = json.loads(str(data["meta"]))
    meta["version"] = version
    meta.pop("inputs")
    if version <= 2:
        meta.pop("prompt_features")
        meta.pop("embed_weight")
    if version == 1:
        meta["spec"].pop("embed_tail_chars")
    out = path.with_name(f"v{version}.npz")
    np.savez(out, **{**data, "meta": np.array(json.dumps(meta))})
    return out


@pytest.mark.parametrize("version", [1, 2, 3])
def test_old_artifact_versions_load_and_score_identically(tmp_path, version):
    emb = StaticEmbedder()
    train = _examples(150)  # under 200 rows: the embedding weight stays 1.0, as before it was recorded
    spec = FeatureSpec(embed=True, categorical=("topic",), embed_tail_chars=None if version == 1 else 1000)
    scorer = GapScorer(spec, emb)
    if version <= 2:
        scorer.prompt_features = BASE_PROMPT_FEATURES
    scorer.fit(train)
    old = _as_version(write_artifact(scorer, tmp_path / "new.npz"), version)
    assert "inputs" not in json.loads(str(np.load(old)["meta"]))
    back = read_artifact(old, emb)
    np.testing.assert_array_equal(back.score(train), scorer.score(train))
    inputs = ArtifactInputs.of(back)
    assert inputs.metadata == ("topic",) and inputs.embedder == emb.model_id and not inputs.weak_answer
    assert inputs.prompt_features == (BASE_PROMPT_FEATURES if version <= 2 else PROMPT_FEATURES)
    assert back.spec.embed_tail_chars == (None if version == 1 else 1000)


def test_a_new_artifact_records_its_inputs_and_an_altered_record_is_refused(tmp_path):
    scorer = GapScorer(FeatureSpec(embed=False, categorical=("topic",))).fit(_examples())
    path = write_artifact(scorer, tmp_path / "r")  # the .npz suffix is added, and returned
    assert path.name == "r.npz"
    meta = json.loads(str(np.load(path)["meta"]))
    assert meta["version"] == ARTIFACT_VERSION == 4
    assert meta["inputs"] == {
        "prompt_features": list(PROMPT_FEATURES),
        "metadata": ["topic"],
        "embedder": None,
        "weak_answer": False,
    }
    data = dict(np.load(path))
    meta["inputs"]["metadata"] = []  # claims to need nothing: a server would skip the header it needs
    np.savez(tmp_path / "altered.npz", **{**data, "meta": np.array(json.dumps(meta))})
    with pytest.raises(TruecostError, match="altered after it was saved"):
        read_artifact(tmp_path / "altered.npz")
    meta["version"] = 5
    np.savez(tmp_path / "future.npz", **{**data, "meta": np.array(json.dumps(meta))})
    with pytest.raises(TruecostError, match="reads 1 to 4"):
        read_artifact(tmp_path / "future.npz")


# ----------------------------------------------------------------- labels excluded by declaration
# The guard this replaces: a column was dropped when its name contained one of these words.
OLD_GUARD = ("oracle", "gold", "answer", "label", "split", "id", "quality", "prompt", "turns")


def _old_guard_metadata(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, str) and not any(x in k.lower() for x in OLD_GUARD)}


def _leaky_file(path: Path, n=600, seed=0) -> None:
    """The prompt says little; ``verdict`` is derived from the outcome (whether the weak model failed)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for i in range(n):
            weak_ok = int(rng.random() < 0.6)
            row = {
                "prompt_id": f"p{i}",
                "prompt": f"Question {i} about {rng.choice(['tax', 'cats', 'maps'])}",
                "prompt_tokens": 8,
                "team": rng.choice(["north", "south"]),
                "quality_kind": "correct_0_1",
                "verdict": "fine" if weak_ok else "escalate",
                "models": {
                    WEAK: {"quality": weak_ok, "output_tokens": 10},
                    STRONG: {"quality": 1, "output_tokens": 10},
                },
            }
            fh.write(json.dumps(row) + "\n")


def test_a_label_column_with_an_innocent_name_is_excluded_because_the_schema_declares_it(tmp_path):
    data = tmp_path / "traffic.jsonl"
    _leaky_file(data)
    first = json.loads(data.read_text().splitlines()[0])
    assert "verdict" in _old_guard_metadata(first)  # the old name-based guard let it through into training

    leaked = RoutingSchema(features=("team", "verdict"), source="a careless declaration")
    rows, _, _ = load_rows(data, WEAK, STRONG, leaked)
    train, test = training.split(rows, 0.5, 0)
    assert training.categorical_features(train) == ("team", "verdict")
    model = training.fit("trained", train, StaticEmbedder(), training.categorical_features(train))
    gaps = np.array([r.q_strong - r.q_weak for r in test])
    s = training.scores("trained", model, test, WEAK, STRONG)
    assert np.corrcoef(s, gaps)[0, 1] > 0.95  # it reads the answer: a router that only works on labelled data

    declared = RoutingSchema(features=("team",), labels=("verdict",), source="traffic.schema.json")
    rows, _, _ = load_rows(data, WEAK, STRONG, declared)
    assert all(set(r.metadata) == {"team"} for r in rows)
    train, test = training.split(rows, 0.5, 0)
    model = training.fit("trained", train, StaticEmbedder(), training.categorical_features(train))
    assert model.spec.categorical == ("team",)
    s = training.scores("trained", model, test, WEAK, STRONG)
    assert np.corrcoef(s, gaps)[0, 1] < 0.3


def test_an_undeclared_column_is_refused_by_name(tmp_path):
    data = tmp_path / "traffic.jsonl"
    _leaky_file(data, n=30)
    with pytest.raises(SchemaError, match="undeclared columns team, verdict"):
        load_rows(data, WEAK, STRONG)
    res = CliRunner().invoke(
        cli, ["router", "calibrate", str(data), "--weak", WEAK, "--strong", STRONG, "--max-strong-share", "0.3"]
    )
    assert res.exit_code == 1 and "undeclared columns team, verdict" in res.output
    (tmp_path / "traffic.schema.json").write_text(json.dumps({"features": ["team"], "labels": ["verdict"]}))
    assert resolve_schema(data).labels == ("verdict",)  # the schema beside the data file is found
    rows, _, _ = load_rows(data, WEAK, STRONG)
    assert rows[0].metadata == {"team": json.loads(data.read_text().splitlines()[0])["team"]}


@pytest.mark.parametrize(
    "doc,match",
    [
        ({"features": ["a"], "labels": ["a"]}, "more than once"),
        ({"features": ["quality_kind"]}, "belong to the routing format"),
        ({"labels": "gold"}, "must be a list"),
        ({"label": ["gold"]}, "unknown keys label"),
    ],
)
def test_a_bad_schema_is_refused(doc, match):
    with pytest.raises(SchemaError, match=match):
        RoutingSchema.parse(doc, "s.json")


def test_router_train_records_the_schema_and_the_inputs_in_its_artifact(tmp_path):
    data = tmp_path / "traffic.jsonl"
    _leaky_file(data, n=120)
    schema = tmp_path / "declared.json"
    schema.write_text(json.dumps({"features": ["team"], "labels": ["verdict"]}))
    res = CliRunner().invoke(
        cli,
        [
            "router",
            "train",
            str(data),
            "--weak",
            WEAK,
            "--strong",
            STRONG,
            "--out",
            str(tmp_path / "r.npz"),
            "--schema",
            str(schema),
        ],
        catch_exceptions=False,
    )
    out = json.loads(res.output)
    assert out["categorical_features"] == ["team"] and out["examples"] == 120
    meta = read_artifact(tmp_path / "r.npz").meta
    assert meta["schema"] == {"features": ["team"], "labels": ["verdict"], "ignore": []}
    assert meta["inputs"]["metadata"] == ["team"] and meta["inputs"]["embedder"] == StaticEmbedder().model_id


# ----------------------------------------------------------------- calibration and split
def test_split_is_seeded_and_complete():
    tr, te = training.split_indices(10, 0.3, seed=1)
    assert len(tr) == 3 and sorted(tr + te) == list(range(10))
    assert training.split_indices(10, 0.3, seed=1) == (tr, te) and training.split_indices(10, 0.3, seed=2) != (tr, te)


def test_target_needs_exactly_one_aim_and_picks_its_order():
    with pytest.raises(ValueError, match="exactly one"):
        training.Target()
    with pytest.raises(ValueError, match="exactly one"):
        training.Target(max_strong_share=0.3, min_quality=0.9)
    assert training.Target(max_strong_share=0.3).default_order() == "gap"
    assert training.Target(min_quality=0.95).on_curve(0.8) == {"min_quality": pytest.approx(0.76)}
    assert training.Target(max_cost_per_1k=2.0).on_curve(0.8) == {"max_cost": 0.002}


def test_threshold_for_share_covers_the_ends():
    s = np.arange(10.0)
    assert training.threshold_for_share(s, 0.0) == float("inf") and training.threshold_for_share(s, 1.0) == float(
        "-inf"
    )
    assert (s >= training.threshold_for_share(s, 0.3)).sum() == 3


# ----------------------------------------------------------------- benchmark code outside the package
def test_no_module_of_the_package_imports_the_benchmarks():
    bad = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            bad += [f"{path}: {n}" for n in names if n.split(".")[0] in ("bench", "truecost_bench")]
    assert bad == []
    assert not (SRC / "audit" / "routing_bench.py").exists()


def test_bench_router_from_an_install_without_the_bench_folder_says_so(tmp_path, monkeypatch):
    import truecost.cli.bench as bench_cli

    monkeypatch.setattr(bench_cli, "bench_dir", lambda: tmp_path / "site-packages" / "bench")
    data = tmp_path / "traffic.jsonl"
    _leaky_file(data, n=30)
    res = CliRunner().invoke(cli, ["bench", "router", "--data", str(data), "--weak", WEAK, "--strong", STRONG])
    assert res.exit_code == 1 and "does not ship its benchmarks" in res.output and "clone" in res.output
