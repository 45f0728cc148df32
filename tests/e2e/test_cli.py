"""The CLI as a user runs it."""

import json
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from truecost.cli.main import cli
from truecost.ledger import CostEvent
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.types import Attribution

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def test_prices_list_and_show():
    r = run("prices", "list", "--kind", "chat", "--at", "2026-11-20", "--json")
    rows = json.loads(r.output)
    luna = next(x for x in rows if x["name"] == "gpt-6-luna")
    assert Decimal(luna["rates"]["input"]) == Decimal("0.10") and luna["source"]
    r = run("prices", "show", "claude-sonnet-5.5", "--json")
    versions = json.loads(r.output)["versions"]
    cached = [(v["effective_from"][:10], Decimal(v["rates"]["cached_input"])) for v in versions]
    changes = [c for i, c in enumerate(cached) if i == 0 or c[1] != cached[i - 1][1]]
    assert changes == [("2026-09-01", Decimal("0.20")), ("2026-10-07", Decimal("0.10"))]  # the cut, dated
    assert all(v["source"] for v in versions)
    assert run("prices", "show", "claude-sonnet-5.5").exit_code == 0


def test_prices_show_unknown_model_is_a_clear_error():
    r = CliRunner().invoke(cli, ["prices", "show", "gpt-99"])
    assert r.exit_code != 0 and "unknown model or resource 'gpt-99'" in r.output


def test_report_totals_match_the_ledger(tmp_path):
    db = tmp_path / "l.db"
    store = SQLiteLedgerStore(db)
    t = datetime(2026, 11, 1, tzinfo=timezone.utc)
    a, b = Attribution(cost_center="A"), Attribution(cost_center="B")
    store.append(
        [
            CostEvent(id="1", request_id="r1", ts=t, step="generate", cost=Decimal("0.30"), attribution=a),
            CostEvent(id="2", request_id="r1", ts=t, step="egress", cost=Decimal("0.10"), attribution=a),
            CostEvent(id="3", request_id="r2", ts=t, step="generate", cost=Decimal("0.20"), attribution=b),
            CostEvent(
                id="4",
                request_id="r2",
                ts=t,
                step="validate",
                cost=None,
                attribution=b,
                details={"unknown_reason": "unknown model 'x'"},
            ),
        ]
    )
    store.close()
    data = json.loads(run("report", "--db", str(db), "--json", "--request", "r1").output)
    assert data["total_usd"] == "0.6" and data["requests"] == 2 and data["unknown_price_events"] == 1
    assert abs(data["generation_share"] - 0.5 / 0.6) < 1e-9
    assert {r["cost_center"]: r["cost_usd"] for r in data["totals"]["cost_center"]} == {"A": "0.4", "B": "0.2"}
    assert data["cost_per_request_usd"] == "0.3"
    assert [e["step"] for e in data["request"]["events"]] == ["generate", "egress"]
    human = run("report", "--db", str(db), "--by", "tenant,step").output
    assert "unknown price" in human and "totals by tenant, step" in human


def test_report_shows_totals_by_source_and_filters_by_it(tmp_path):
    db = tmp_path / "l.db"
    store = SQLiteLedgerStore(db)
    t = datetime(2026, 11, 1, tzinfo=timezone.utc)
    store.append(
        [
            CostEvent(id=str(i), request_id=rid, ts=t, step="generate", cost=Decimal(cost), source=source)
            for i, (rid, cost, source) in enumerate(
                [("r1", "0.5", "gateway"), ("r1", "0.25", "sdk"), ("r2", "0.125", "langchain"), ("r3", "1", "otlp")]
            )
        ]
    )
    store.close()
    data = json.loads(run("report", "--db", str(db), "--json").output)
    assert {r["source"]: (r["cost_usd"], r["events"]) for r in data["totals"]["source"]} == {
        "otlp": ("1", 1),
        "gateway": ("0.5", 1),
        "sdk": ("0.25", 1),
        "langchain": ("0.125", 1),
    }
    human = run("report", "--db", str(db), "--request", "r1").output
    assert "totals by source" in human and "langchain" in human and "(source: gateway, sdk)" in human
    only = json.loads(run("report", "--db", str(db), "--json", "--source", "gateway", "--by", "source,step").output)
    assert only["total_usd"] == "0.5" and only["requests"] == 1
    assert only["totals"]["source,step"] == [
        {
            "source": "gateway",
            "step": "generate",
            "cost_usd": "0.5",
            "avoided_usd": "0",
            "events": 1,
            "requests": None,
            "unknown_price_events": 0,
        }
    ]


def test_report_without_a_ledger_says_so(tmp_path):
    r = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "none.db")])
    assert r.exit_code != 0 and "no ledger" in r.output


def test_demo_without_local_model_runs_both_passes_and_labels_the_replay(tmp_path):
    db = tmp_path / "demo.db"
    r = CliRunner().invoke(
        cli, ["demo", "--queries", "24", "--db", str(db), "--no-local-model", "--json"], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{") :])
    assert "REPLAY" in data["upstream"] and data["queries"] == 24
    off, on = data["off"], data["on"]
    assert off["requests"] == on["requests"] == 24 and off["errors"] == on["errors"] == 0
    assert off["cache_hits"] == 0 and off["served_by"] == {"gpt-6.2-sol": 24}  # cache and router off
    assert sum(on["served_by"].values()) == 24 - on["cache_hits"] + on["cache_hits"]
    assert "SmolLM2-135M-Instruct" in on["served_by"]  # the router sent short questions to the small model
    steps = set(off["by_step_per_request_usd"])
    assert {
        "sanitize",
        "embed",
        "vector_search",
        "context_assembly",
        "generate",
        "validate",
        "log_storage",
        "egress",
        "reserved_capacity",
    } <= steps
    assert off["unknown_events"] == 0 and on["unknown_events"] == 0
    assert Decimal(on["cost_per_request_usd"]) < Decimal(off["cost_per_request_usd"])
    store = SQLiteLedgerStore(db)
    by_feature = {r.keys[0]: r for r in store.aggregate(["feature"])}
    assert by_feature["support-bot/baseline"].request_count == 24
    assert by_feature["support-bot/baseline"].cost == Decimal(off["total_usd"])
    store.close()
    assert Path(data["report"]).exists()


def test_the_example_runs():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "rag_pipeline.py"), "4"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "generation share" in out.stdout and "unknown prices: 0" in out.stdout


def test_report_rejects_a_bad_date_clearly(tmp_path):
    db = tmp_path / "l.db"
    SQLiteLedgerStore(db).close()
    r = CliRunner().invoke(cli, ["report", "--db", str(db), "--since", "yesterday"])
    assert r.exit_code == 2 and "--since" in r.output and "ISO date" in r.output


def test_audit_commands_turn_bad_input_into_clear_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = CliRunner().invoke(cli, ["audit", "cache", str(empty), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "no queries found" in r.output and "Traceback" not in r.output
    csv_file = tmp_path / "q.csv"
    csv_file.write_text("question\nhello\n")
    r = CliRunner().invoke(cli, ["audit", "cache", str(csv_file), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "no column 'text'" in r.output
    r = CliRunner().invoke(cli, ["audit", "cache", str(csv_file), "--threshold", "1.5"])
    assert r.exit_code == 2 and "--threshold" in r.output
    bill = tmp_path / "bill.csv"
    bill.write_text("Cost,Service\n1,x\n")
    db = tmp_path / "l.db"
    SQLiteLedgerStore(db).close()
    r = CliRunner().invoke(cli, ["reconcile", str(bill), "--db", str(db)])
    assert r.exit_code == 1 and "missing column(s) ChargePeriodStart" in r.output
    r = CliRunner().invoke(cli, ["audit", "costs", str(db), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "no cost events" in r.output


def test_audit_cache_reads_queries_from_a_ledger(tmp_path):
    db = tmp_path / "l.db"
    store = SQLiteLedgerStore(db)
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    store.append(
        [
            CostEvent(id=f"e{i}", request_id=f"r{i}", ts=t0, step="sanitize", cost=Decimal(0), details={"query": q})
            for i, q in enumerate(["refund please", "refund please", "hi"])
        ]
    )
    store.close()
    r = CliRunner().invoke(cli, ["audit", "cache", str(db), "--out", str(tmp_path), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{") :])
    assert data["queries"] == 3 and data["thresholds"][0]["hit_rate"] == 1 / 3  # the exact repeat


def test_export_focus_writes_every_cost(tmp_path):
    db = tmp_path / "l.db"
    store = SQLiteLedgerStore(db)
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    store.append(
        [
            CostEvent(
                id=f"e{i}",
                request_id="r",
                ts=t0,
                step="egress",
                service="aws/inter_region",
                quantity=Decimal("0.5"),
                unit="GB",
                cost=Decimal("0.01"),
                attribution=Attribution(cost_center="cc"),
            )
            for i in range(3)
        ]
    )
    store.close()
    out = tmp_path / "focus.csv"
    r = CliRunner().invoke(cli, ["export", "focus", "--db", str(db), "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0 and "wrote 1 FOCUS rows" in r.output
    import csv

    rows = list(csv.DictReader(open(out)))
    assert rows[0]["BilledCost"] == "0.03" and rows[0]["ConsumedQuantity"] == "1.5"
    assert json.loads(rows[0]["Tags"]) == {"cost_center": "cc"}
