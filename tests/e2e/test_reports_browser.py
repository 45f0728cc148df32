"""Every audit report renders in a real headless Chromium without console errors, and the
figures on the page are the figures in its JSON file."""

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.browser import Page, browser_fixture, shown_number
from truecost.cli.main import cli
from truecost.ledger.events import CostEvent
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.types import Attribution

pytestmark = pytest.mark.slow  # a real browser (Chromium)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "src" / "truecost" / "demo" / "banking77_sample.jsonl"  # bundled: no ../shared needed
FOCUS_BILL = ROOT / "tests" / "data" / "focus_per_token_ai_model_api.csv"


browser = pytest.fixture(scope="module")(browser_fixture)


def _ledger(path: Path) -> None:
    store = SQLiteLedgerStore(str(path))
    t0 = datetime(2025, 5, 3, tzinfo=timezone.utc)
    events = []
    for i in range(30):
        a = Attribution(cost_center=f"cc{i % 3}", feature="faq" if i % 2 else "chat")
        rid = f"r{i}"
        events += [
            CostEvent(
                id=f"{rid}-g",
                request_id=rid,
                ts=t0 + timedelta(hours=i),
                step="generate",
                provider="solora",
                service="solora-saturn-4.8",
                quantity=Decimal(1200),
                unit="tokens",
                cost=Decimal(1000) * Decimal("0.000005") + Decimal(200) * Decimal("0.000025"),
                attribution=a,
                details={
                    "tokens": {"input": 1000, "output": 200},
                    "unit_prices": {"input": "0.000005", "output": "0.000025"},
                },
            ),
            CostEvent(
                id=f"{rid}-e",
                request_id=rid,
                ts=t0 + timedelta(hours=i),
                step="egress",
                service="aws/inter_region",
                quantity=Decimal("0.001"),
                unit="GB",
                cost=Decimal("0.00002"),
                attribution=a,
            ),
        ]
    store.append(events)
    store.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    db = out / "ledger.db"
    _ledger(db)
    runs = [
        [
            "audit",
            "cache",
            str(SAMPLE),
            "--label-field",
            "intent",
            "--threshold",
            "0.85",
            "--threshold",
            "0.9",
            "--embedder",
            "static",
        ],
        ["audit", "routing", str(SAMPLE), "-n", "200", "--label-with", "rules"],
        ["audit", "costs", str(db)],
        ["whatif", str(ROOT / "examples" / "whatif_support_bot.yaml")],
        ["reconcile", str(FOCUS_BILL), "--db", str(db)],
    ]
    for args in runs:
        r = CliRunner().invoke(cli, args + ["--out", str(out)], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    return out


# figure key -> where its number lives in the report's JSON
EXPECTED = {
    "cache_audit": {
        "hit_rate": lambda d: d["thresholds"][0]["hit_rate"],
        "clustered_share": lambda d: d["thresholds"][0]["clustered_share"],
        "false_hit_rate": lambda d: d["thresholds"][0]["false_hit_rate"],
        "queries": lambda d: d["queries"],
        "monthly_net_savings_usd": lambda d: d["savings"]["monthly_net_savings_usd"],
    },
    "routing_audit": {
        "small_capable_share": lambda d: d["small_capable_share"],
        "ci_low": lambda d: d["ci95"][0],
        "ci_high": lambda d: d["ci95"][1],
        "labelled": lambda d: d["labelled"],
    },
    "cost_audit": {
        "total_usd": lambda d: d["total_usd"],
        "requests": lambda d: d["requests"],
        "generation_share": lambda d: d["generation_share"],
        "unknown_requests": lambda d: d["unknown_requests"],
        "cost_per_request_usd": lambda d: d["cost_per_request_usd"],
    },
    "whatif": {
        "monthly_total_usd": lambda d: d["monthly_total_usd"],
        "generation_share": lambda d: d["generation_share"],
        "cost_per_request_usd": lambda d: d["cost_per_request_usd"],
    },
    "reconciliation": {
        "billed": lambda d: d["totals"]["billed"],
        "ledger": lambda d: d["totals"]["ledger"],
        "unattributed": lambda d: d["totals"]["unattributed"],
        "matched_share": lambda d: d["matched_share"],
    },
}


@pytest.mark.parametrize("stem", list(EXPECTED))
def test_report_renders_and_matches_its_json(browser, reports, stem):
    data = json.loads((reports / f"{stem}.json").read_text())
    page = Page(browser).open((reports / f"{stem}.html").as_uri())
    try:
        page.screenshot(f"report-{stem}")
        assert page.errors == []
        assert page.page.locator("svg.chart").count() >= 1, "every report has at least one chart"
        embedded = json.loads(page.page.locator("#truecost-data").text_content())
        assert embedded == data
        shown = page.figures()
        for key, where in EXPECTED[stem].items():
            raw, text = shown[key]
            expected = where(data)
            assert raw == str(expected), f"{key}: page says {raw}, JSON says {expected}"
            assert shown_number(text) == pytest.approx(float(expected), rel=0.01, abs=0.0015), (key, text, expected)
    finally:
        page.close()


def test_reconciliation_numbers_are_right_for_the_focus_example(reports):
    data = json.loads((reports / "reconciliation.json").read_text())
    # the ledger holds 30 requests x (1000 in, 200 out) in May 2025 against a bill of 8.4M in / 2.1M out
    rows = {r["token_class"]: r for r in data["rows"]}
    assert Decimal(rows["input"]["ledger_usd"]) == Decimal("0.15") and rows["input"]["status"] == "unattributed"
    assert Decimal(data["totals"]["billed"]) == Decimal("94.50")
