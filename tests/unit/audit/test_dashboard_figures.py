"""What the dashboard shows: dollars without exponents, a chart for one hour of data, the models that served."""

import re
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from truecost.audit import charts
from truecost.audit.overview import make_filter, overview, request_detail
from truecost.clock import FixedClock
from truecost.dashboard.app import render_overview, render_request
from truecost.ledger import MemoryLedgerStore
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.pricing import PriceCatalog
from truecost.tracking import Tracker

AT = datetime(2026, 11, 20, 9, 17, tzinfo=timezone.utc)
E_NOTATION = re.compile(r"(?<![\w.-])\d+(?:\.\d+)?[eE][-+]?\d+\b")


@pytest.mark.parametrize(
    "value, shown",
    [
        (2.022e-05, "$0.0000202"),
        (Decimal("0.00002022"), "$0.0000202"),
        (Decimal("2.022E-7"), "$0.000000202"),
        (0.5, "$0.50"),
        (0.1234, "$0.123"),
        (0.0412, "$0.0412"),
        (0.99999, "$1.00"),
        (0, "$0.00"),
        (Decimal(0), "$0.00"),
        (1234.5, "$1,234.50"),
        (Decimal("12.346"), "$12.35"),
        (-2.5e-05, "-$0.000025"),
        (-3, "-$3.00"),
        (None, "n/a"),
        (float("nan"), "n/a"),
    ],
)
def test_usd_never_uses_scientific_notation(value, shown):
    assert charts.usd(value) == shown


def test_small_numbers_on_axes_are_fixed_point():
    assert charts.default_fmt(2.5e-06) == "0.0000025" and charts.default_fmt(0.0) == "0"
    svg = charts.lines([0, 1, 2], {"a": [1e-6, 3e-6, 2e-5]}, "t", "x", "USD", fmt_y=charts.usd)
    assert not E_NOTATION.search(re.sub(r"<style>.*?</style>|<[^>]*>", " ", svg))


def test_a_line_chart_with_one_bucket_draws_a_point():
    svg = charts.lines(
        [0], {"generate": [2.022e-05], "embed": [1e-6]}, "Spend per hour", "hour", "USD", fmt_y=charts.usd
    )
    marks = re.findall(r'<circle [^>]*data-series="([^"]+)" data-value="([^"]+)"', svg)
    assert marks == [("generate", "2.022e-05"), ("embed", "1e-06")]
    assert "$0.0000202" in svg


def _tracker(store):
    return Tracker(PriceCatalog.bundled(), lambda e: store.append([e]), clock=FixedClock(AT), compute="aws/c7i.xlarge")


def _self_hosted_calls(tracker, n=3):
    """Generate steps of a self-hosted model: tokens at its list price plus the machine's time (as the gateway does)."""
    for i in range(n):
        with tracker.request(cost_center="cx", feature="bot", tenant="acme") as req:
            with req.step("generate") as s:
                s.tokens("gpt-6-luna", {"prompt_tokens": 100 + i, "completion_tokens": 3})
                tracker.charge_compute(s, 250.0)
    with tracker.request(cost_center="cx", feature="bot", tenant="acme") as req:
        with req.step("generate") as s:
            s.tokens("gpt-6.2-sol", {"prompt_tokens": 40, "completion_tokens": 2})


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_routing_mix_counts_models_not_the_compute_they_ran_on(kind, tmp_path):
    store = MemoryLedgerStore() if kind == "memory" else SQLiteLedgerStore(tmp_path / "l.db")
    _self_hosted_calls(_tracker(store))
    assert {e.service for e in store.query()} == {"gpt-6-luna", "c7i.xlarge", "gpt-6.2-sol"}  # the compute is charged
    data = overview(store, now=AT)
    assert data["routing"]["mix"] == {"gpt-6-luna": 3, "gpt-6.2-sol": 1}
    assert overview(store, make_filter(tenant="acme"), now=AT)["routing"]["mix"] == {"gpt-6-luna": 3, "gpt-6.2-sol": 1}
    html = render_overview("/ui", data, {"by": "cost_center"}, "t")
    mix_chart = html[html.index("Generations by model served") :]
    assert "c7i.xlarge" not in mix_chart[: mix_chart.index("</svg>")]
    rid = store.query()[0].request_id
    assert request_detail(store, rid)["served_by"] == "gpt-6-luna"
    store.close()


def test_spend_over_one_hour_is_drawn():
    store = MemoryLedgerStore()
    _self_hosted_calls(_tracker(store))
    data = overview(store, now=AT, series_by="step")
    assert data["bucket"] == "hour" and len(data["spend_over_time"]["buckets"]) == 1
    html = render_overview("/ui", data, {"by": "step"}, "t")
    chart = html[html.index('data-key="unknown_requests"') :]  # the chart after the overview's figures
    chart = chart[chart.index("<svg") : chart.index("</svg>")]
    assert "Spend" in chart and "hour" in chart
    marks = re.findall(r'data-label="([^"]+)" data-value="([^"]+)"', chart)
    assert [m[0] for m in marks] == ["generate"] and float(marks[0][1]) == pytest.approx(float(data["total_usd"]))
    assert "no spend" not in html


def test_dashboard_pages_show_small_amounts_in_dollars():
    store = MemoryLedgerStore()
    tracker = _tracker(store)
    with tracker.request(cost_center="cx", tenant="acme") as req:
        with req.step("generate") as s:
            s.tokens("gpt-6-luna", {"prompt_tokens": 100, "completion_tokens": 3})  # $0.0000115
            tracker.charge_compute(s, 1.0)
    data = overview(store, now=AT)
    assert data["total_usd"] < Decimal("0.0001")
    pages = [render_overview("/ui", data, {"by": "cost_center"}, "t")]
    pages += [render_request("/ui", request_detail(store, e.request_id), "t") for e in store.query()]
    for html in pages:
        visible = re.sub(r"<style>.*?</style>|<[^>]*>", " ", html, flags=re.S)  # the text a reader sees
        for e in store.query():
            visible = visible.replace(e.request_id, "<id>")
        assert not E_NOTATION.search(visible), E_NOTATION.search(visible)
    assert re.search(r'data-key="total_usd" data-value="[^"]+">\$0\.0000\d', pages[0])
