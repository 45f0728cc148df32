"""`truecost audit routing`: its flags travel as one options value; each label source is reached."""

import json

from click.testing import CliRunner

from truecost.cli.main import cli


def _routing_file(path, n=40):
    with open(path, "w") as fh:
        for i in range(n):
            weak_ok = i % 4 != 0  # a quarter needs the strong model
            fh.write(
                json.dumps(
                    {
                        "prompt_id": f"p{i}",
                        "prompt": f"question {i}",
                        "prompt_tokens": 5,
                        "models": {"weak-m": {"quality": int(weak_ok)}, "strong-m": {"quality": 1}},
                    }
                )
                + "\n"
            )


def _audit(*args):
    return CliRunner().invoke(cli, ["audit", "routing", *args])


def test_quality_labels_from_a_routing_file(tmp_path):
    f = tmp_path / "r.jsonl"
    _routing_file(f)
    res = _audit(
        str(f),
        "--weak",
        "weak-m",
        "--strong",
        "strong-m",
        "--out",
        str(tmp_path / "out"),
        "--json",
        "--requests-per-day",
        "100",
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["label_source"] == "quality" and r["labelled"] == 40 and r["small_capable_share"] == 0.75
    assert r["prices"]["requests_per_day"] == 100 and (tmp_path / "out" / "routing_audit.html").exists()


def test_rules_labels_by_default_and_usage_errors_by_source(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text("".join(json.dumps({"id": str(i), "text": f"hello {i}"}) + "\n" for i in range(10)))
    res = _audit(str(f), "--out", str(tmp_path / "out"), "--json")
    assert res.exit_code == 0 and json.loads(res.output)["label_source"] == "rules"
    assert "needs --labels FILE" in _audit(str(f), "--label-with", "csv").output
    routing = tmp_path / "r.jsonl"
    _routing_file(routing)
    assert "needs --weak and --strong" in _audit(str(routing), "--label-with", "quality").output
    assert "needs --judge-url and --judge-model" in _audit(str(f), "--label-with", "judge").output
