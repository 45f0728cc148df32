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
    assert luna["rates"]["input"] == "0.10" and luna["source"]
    r = run("prices", "show", "claude-sonnet-5.5", "--json")
    versions = json.loads(r.output)["versions"]
    assert [v["rates"]["cached_input"] for v in versions] == ["0.20", "0.10"]
    assert run("prices", "show", "claude-sonnet-5.5").exit_code == 0


def test_prices_show_unknown_model_is_a_clear_error():
    r = CliRunner().invoke(cli, ["prices", "show", "gpt-99"])
    assert r.exit_code != 0 and "unknown model or resource 'gpt-99'" in r.output


def test_report_totals_match_the_ledger(tmp_path):
    db = tmp_path / "l.db"
    store = SQLiteLedgerStore(db)
    t = datetime(2026, 11, 1, tzinfo=timezone.utc)
    a, b = Attribution(cost_center="A"), Attribution(cost_center="B")
    store.append([
        CostEvent(id="1", request_id="r1", ts=t, step="generate", cost=Decimal("0.30"), attribution=a),
        CostEvent(id="2", request_id="r1", ts=t, step="egress", cost=Decimal("0.10"), attribution=a),
        CostEvent(id="3", request_id="r2", ts=t, step="generate", cost=Decimal("0.20"), attribution=b),
        CostEvent(id="4", request_id="r2", ts=t, step="validate", cost=None, attribution=b,
                  details={"unknown_reason": "unknown model 'x'"}),
    ])
    store.close()
    data = json.loads(run("report", "--db", str(db), "--json", "--request", "r1").output)
    assert data["total_usd"] == "0.6" and data["requests"] == 2 and data["unknown_price_events"] == 1
    assert abs(data["generation_share"] - 0.5 / 0.6) < 1e-9
    assert {r["cost_center"]: r["cost_usd"] for r in data["totals"]["cost_center"]} == {"A": "0.4", "B": "0.2"}
    assert data["cost_per_request_usd"] == "0.3"
    assert [e["step"] for e in data["request"]["events"]] == ["generate", "egress"]
    human = run("report", "--db", str(db), "--by", "tenant,step").output
    assert "unknown price" in human and "totals by tenant, step" in human


def test_report_without_a_ledger_says_so(tmp_path):
    r = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "none.db")])
    assert r.exit_code != 0 and "no ledger" in r.output


def test_demo_runs_and_prices_every_step(tmp_path):
    db = tmp_path / "demo.db"
    r = run("demo", "--queries", "12", "--db", str(db), "--json")
    data = json.loads(r.output)
    assert data["queries"] == 12 and data["unknown_price_events"] == 0
    assert set(data["by_step_usd"]) == {"sanitize", "embed", "vector_search", "context_assembly", "generate",
                                        "validate", "log_storage", "egress", "reserved_capacity"}
    assert 0 < data["generation_share"] < 1
    store = SQLiteLedgerStore(db)
    assert sum(Decimal(v) for v in data["by_step_usd"].values()) == Decimal(data["total_usd"])
    assert store.aggregate([])[0].request_count == 12
    store.close()


def test_the_example_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "rag_pipeline.py"), "4"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "generation share" in out.stdout and "unknown prices: 0" in out.stdout


def test_report_rejects_a_bad_date_clearly(tmp_path):
    db = tmp_path / "l.db"
    SQLiteLedgerStore(db).close()
    r = CliRunner().invoke(cli, ["report", "--db", str(db), "--since", "yesterday"])
    assert r.exit_code == 2 and "--since" in r.output and "ISO date" in r.output
