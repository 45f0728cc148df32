"""`truecost bench cache`: the protocol in bench/truecost_bench/cache.py and its command."""

import json

import numpy as np
from click.testing import CliRunner

from truecost.cli.bench import load_bench_module
from truecost.cli.main import cli


def _card_intents(path, prefixes):
    """Two intents (activate, cancel a card), 15 texts each, each text twice, once per prefix."""
    path.write_text(
        "".join(
            json.dumps({"text": f"{p}how do I {v} my card {i % 15}", "intent": v}) + "\n"
            for i in range(30)
            for v in ("activate", "cancel")
            for p in prefixes
        )
    )
    return path


def test_bench_cache_reports_bad_input_clearly(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = CliRunner().invoke(cli, ["bench", "cache", "--data", str(empty), "--no-peers", "--json"])
    assert r.exit_code == 1 and "has no queries" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    r = CliRunner().invoke(cli, ["bench", "cache", "--data", str(bad), "--no-peers", "--json"])
    assert r.exit_code == 1 and "line 1" in r.output
    r = CliRunner().invoke(cli, ["bench", "cache", "--data", str(bad), "--feedback", "magic"])
    assert r.exit_code == 2 and "verifier, label, none, judge" in r.output


def test_bench_cache_reports_every_feedback_mode_beside_the_hindsight_baseline(tmp_path):
    ok = _card_intents(tmp_path / "ok.jsonl", prefixes=("",))  # every text twice
    r = CliRunner().invoke(cli, ["bench", "cache", "--data", str(ok), "--embedder", "static", "--no-peers", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["queries"] == 60 and d["primary_feedback"] == "verifier" and d["embedder"].startswith("truecost/minilm")
    rows = {row["feedback"]: row for row in d["feedback"]}
    assert set(rows) == {"verifier", "label", "none", "judge"}
    assert rows["judge"]["status"].startswith("not configured")
    for mode in ("verifier", "label", "none"):
        row = rows[mode]
        assert row["hits"] >= 30 and 0 <= row["false_hit_rate"] <= 1  # the repeats hit the exact tier
        assert row["ratio_vs_baseline"] == row["hit_rate"] / d["baseline_fixed_hindsight"]["hit_rate"]
    assert rows["label"]["false_hits"] == 0 and rows["label"]["verifiers"] == ["answers:normalised"]
    assert rows["verifier"]["verifiers"] == ["query-pair(truecost/minilm-l6-v2-static-256)"]
    assert rows["none"]["policy"].startswith("verifier-only")
    assert (
        d["baseline_fixed_hindsight"]["curve"] and d["verifier_artifact"]["training_data"]["benchmark_files_used"] == []
    )
    both = {e["embedder"]: e for e in d["embedders"]}  # every embedder of the table, the chosen one first
    assert d["embedders"][0]["embedder"] == "truecost/minilm-l6-v2-static-256"
    assert "sentence-transformers/all-MiniLM-L6-v2" in both
    assert all(
        len(e["feedback"]) == 4 and e["baseline_fixed_hindsight"]["threshold"]
        for e in both.values()
        if "error" not in e
    )


def test_verifier_and_none_modes_never_see_the_intent():
    protocol = load_bench_module("cache")
    q = protocol.Query("cancel my order", "cancel_order")
    assert protocol.answer_for(q, 3, canonical=False)["choices"][0]["message"]["content"] == "[answer #3]"
    assert "cancel_order" in protocol.answer_for(q, 3, canonical=True)["choices"][0]["message"]["content"]


def test_hindsight_baseline_picks_the_best_threshold_within_the_error_target():
    protocol = load_bench_module("cache")
    Q = protocol.Query
    queries = [Q("a", "x"), Q("a2", "x"), Q("b", "y"), Q("c", "z")]
    v = np.array([[1, 0, 0], [0.96, 0.28, 0], [0.8, 0.6, 0], [0, 0, 1]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    out = protocol.hindsight_fixed(v, queries, 0.0, thresholds=np.array([0.5, 0.9, 0.99]))
    # at 0.5, "b" would hit "a" (a false hit); at 0.9 only "a2" hits "a"; at 0.99 nothing hits
    assert [c["hit_rate"] for c in out["curve"]] == [0.5, 0.25, 0.0]
    assert out["best"]["threshold"] == 0.9 and out["best"]["false_hit_rate"] == 0.0


def test_bench_cache_measures_a_judge_when_one_is_given(tmp_path):
    import re

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.support.mock_upstream import ServerThread

    asked = []

    async def chat(request: Request) -> JSONResponse:  # yes when both quoted requests name the same verb
        body = await request.json()
        quoted = re.findall(r'(?:Request A|Request B): ("(?:[^"\\]|\\.)*")', body["messages"][-1]["content"])
        verbs = [next(v for v in ("activate", "cancel") if v in json.loads(q)) for q in quoted]
        asked.append(body["model"])
        reply = "Yes" if len(verbs) == 2 and verbs[0] == verbs[1] else "No"
        return JSONResponse({"choices": [{"message": {"role": "assistant", "content": reply}}], "usage": {}})

    data = _card_intents(tmp_path / "ok.jsonl", prefixes=("", "please, "))
    args = ["bench", "cache", "--data", str(data), "--embedder", "static", "--no-peers", "--no-compare-embedders"]
    r = CliRunner().invoke(cli, [*args, "--feedback", "judge", "--judge-url", "http://127.0.0.1:9/v1"])
    assert r.exit_code == 2 and "go together" in r.output
    with ServerThread(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])) as judge:
        flags = ["--judge-url", judge.url + "/v1", "--judge-model", "rule-judge", "--judge-pairs", "20"]
        r = CliRunner().invoke(cli, [*args, "--feedback", "judge", *flags, "--judge-max-calls", "7", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    row = d["feedback"][0]
    assert row["feedback"] == "judge" and "hit_rate" in row and row["verifiers"][0] == "budgeted(judge:rule-judge)"
    assert row["judge_calls"]["yes"] + row["judge_calls"]["no"] == 7 and row["judge_calls"]["refused_by_budget"] > 0
    assert row["verifier_reliability"]["budgeted(judge:rule-judge)"]["pairs"] == 0  # the most trusted: the reference
    agreement = d["judge_agreement"]
    assert agreement["pairs"] == 20 and agreement["answered"] == 20 and agreement["accuracy_answered"] == 1.0
    assert agreement["by_truth"]["same"]["yes"] == 10 and agreement["by_truth"]["different"]["no"] == 10
    assert len(asked) == 7 + 20 and set(asked) == {"rule-judge"}
