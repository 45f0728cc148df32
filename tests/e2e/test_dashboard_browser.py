"""The dashboard in a real headless Chromium, over a ledger the demo wrote through the gateway."""

import json
from decimal import Decimal
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.support.browser import Page, browser_fixture, shown_number
from tests.support.mock_upstream import ServerThread
from truecost.cli.main import cli
from truecost.dashboard.app import create_dashboard
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.ledger.store import LedgerFilter


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    db = tmp_path_factory.mktemp("dash") / "demo.db"
    r = CliRunner().invoke(cli, ["demo", "--queries", "30", "--db", str(db), "--no-local-model", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return db


@pytest.fixture(scope="module")
def server(ledger):
    store = SQLiteLedgerStore(ledger)
    app = Starlette(routes=[Mount("/ui", create_dashboard(store, title="truecost test", cache_target_error=0.01))])
    with ServerThread(app) as s:
        yield s, store
    store.close()


browser = pytest.fixture(scope="module")(browser_fixture)


def _total(store, flt=LedgerFilter()):
    row = store.aggregate([], flt)[0]
    return row.cost, row.request_count


def test_overview_shows_the_ledger_totals(browser, server):
    srv, store = server
    page = Page(browser).open(srv.url + "/ui/")
    try:
        page.screenshot("dashboard-overview")
        assert page.errors == []
        figs = page.figures()
        total, requests = _total(store)
        assert Decimal(figs["total_usd"][0]) == total
        assert int(figs["requests"][0]) == requests
        assert shown_number(figs["total_usd"][1]) == pytest.approx(float(total), rel=1e-3)
        hit_rate = figs["cache_hit_rate"][0]
        assert hit_rate == "" or 0 <= float(hit_rate) <= 1
        assert page.page.locator("svg.chart").count() >= 4
        lookups = sum(r.events for r in store.aggregate(["step"], LedgerFilter(steps=("cache_lookup",)), count_requests=False))
        assert float(figs["cache_false_hit_bound"][0]) == pytest.approx(0.01 * lookups)
        page.page.select_option("select[name=by]", "step")
        page.page.click("button[type=submit]")
        page.page.wait_for_load_state("load")
        series = page.page.eval_on_selector_all("svg[data-chart=lines] polyline", "els => els.map(e => e.dataset.series)")
        assert "generate" in series and "cx-support" not in series
    finally:
        page.close()


def test_filters_change_the_numbers(browser, server):
    srv, store = server
    page = Page(browser).open(srv.url + "/ui/")
    try:
        page.page.fill("input[name=feature]", "support-bot/baseline")
        page.page.click("button[type=submit]")
        page.page.wait_for_load_state("load")
        assert "feature=support-bot%2Fbaseline" in page.page.url
        figs = page.figures()
        total, requests = _total(store, LedgerFilter(attribution=(("feature", "support-bot/baseline"),)))
        assert Decimal(figs["total_usd"][0]) == total and int(figs["requests"][0]) == requests == 30
        assert total < _total(store)[0]
        page.screenshot("dashboard-filtered")
        assert page.errors == []
        page.open(srv.url + "/ui/?tenant=acme&model=gpt-6.2-sol")
        total, _ = _total(store, LedgerFilter(service="gpt-6.2-sol", attribution=(("tenant", "acme"),)))
        assert Decimal(page.figures()["total_usd"][0]) == total
    finally:
        page.close()


def test_request_page_shows_the_waterfall(browser, server):
    srv, store = server
    page = Page(browser).open(srv.url + "/ui/")
    try:
        page.page.click("table a[href*='/request/']")
        page.page.wait_for_load_state("load")
        assert page.errors == []
        rid = page.page.url.rsplit("/request/", 1)[1].split("?")[0]
        events = store.query(LedgerFilter(request_id=rid))
        figs = page.figures()
        assert Decimal(figs["request_total_usd"][0]) == sum(e.cost for e in events if e.cost is not None)
        assert page.page.locator("svg[data-chart=waterfall] rect[data-label]").count() == len(events) + 1
        page.screenshot("dashboard-request")
        missing = Page(browser)
        resp = missing.page.goto(srv.url + "/ui/request/" + quote("no-such-id"))
        assert resp.status == 404
        missing.close()
    finally:
        page.close()


def test_bad_filter_is_a_clear_400(server):
    import httpx

    srv, _ = server
    r = httpx.get(srv.url + "/ui/?since=yesterday")
    assert r.status_code == 400 and "yesterday" in r.text
    json.dumps({})
