"""The dashboard in a real headless Chromium, over a ledger the demo wrote through the gateway.

Every page is behind a login: the tests log in through the form, as the admin or as a key with
the read scope (one tenant and cost center of the demo: globex in cx-support).
"""

from decimal import Decimal
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.support.browser import Page, browser_fixture, shown_number
from tests.support.mock_upstream import ServerThread
from truecost.cli.main import cli
from truecost.dashboard.app import COOKIE, create_dashboard
from truecost.dashboard.auth import KeyTableAuth, Principal, key_sha256
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.ledger.store import LedgerFilter

pytestmark = pytest.mark.slow  # a real browser (Chromium)

ADMIN_KEY, READ_KEY = "tc-admin-e2e-4f1d9a", "tc-read-globex-77c2"
READER = Principal("globex-reader", admin=False, tenant="globex", cost_center="cx-support")
READER_SCOPE = LedgerFilter(attribution=(("tenant", "globex"), ("cost_center", "cx-support")))


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    db = tmp_path_factory.mktemp("dash") / "demo.db"
    r = CliRunner().invoke(
        cli, ["demo", "--queries", "30", "--db", str(db), "--no-local-model", "--json"], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    return db


@pytest.fixture(scope="module")
def server(ledger):
    store = SQLiteLedgerStore(ledger)
    auth = KeyTableAuth([(key_sha256(ADMIN_KEY), Principal("admin", admin=True)), (key_sha256(READ_KEY), READER)])
    app = Starlette(
        routes=[Mount("/ui", create_dashboard(store, title="truecost test", cache_target_error=0.01, auth=auth))]
    )
    with ServerThread(app) as s:
        yield s, store
    store.close()


browser = pytest.fixture(scope="module")(browser_fixture)


def _total(store, flt=LedgerFilter()):
    row = store.aggregate([], flt)[0]
    return row.cost, row.request_count


def _admin(browser, srv) -> Page:
    page = Page(browser)
    assert page.login(srv.url, ADMIN_KEY).status == 303
    return page


def test_overview_shows_the_ledger_totals(browser, server):
    srv, store = server
    page = _admin(browser, srv).open(srv.url + "/ui/")
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
        lookups = sum(
            r.events for r in store.aggregate(["step"], LedgerFilter(steps=("cache_lookup",)), count_requests=False)
        )
        assert float(figs["cache_false_hit_bound"][0]) == pytest.approx(0.01 * lookups)
        page.page.select_option("select[name=by]", "step")
        page.page.click("form.filters button[type=submit]")
        page.page.wait_for_load_state("load")
        # one hour of demo traffic is drawn as bars, several hours as lines: either way, one mark per step
        series = page.page.eval_on_selector_all(
            "#spend-over-time [data-series], #spend-over-time rect[data-label]",
            "els => els.map(e => e.dataset.series || e.dataset.label)",
        )
        assert "generate" in series and "cx-support" not in series
        assert "e-0" not in page.page.inner_text("main")  # small amounts in dollars, not scientific notation
    finally:
        page.close()


def test_filters_change_the_numbers(browser, server):
    srv, store = server
    page = _admin(browser, srv).open(srv.url + "/ui/")
    try:
        page.page.fill("input[name=feature]", "support-bot/baseline")
        page.page.click("form.filters button[type=submit]")
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
    page = _admin(browser, srv).open(srv.url + "/ui/")
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
        resp = page.page.goto(srv.url + "/ui/request/" + quote("no-such-id"))
        assert resp.status == 404
    finally:
        page.close()


def test_bad_filter_is_a_clear_400(server):
    import httpx

    srv, _ = server
    with httpx.Client(base_url=srv.url) as c:
        assert c.post("/ui/login", data={"key": ADMIN_KEY}).status_code == 303
        r = c.get("/ui/?since=yesterday")
    assert r.status_code == 400 and "yesterday" in r.text


def test_without_a_session_every_page_is_the_login_page(browser, server):
    srv, store = server
    rid = store.query(limit=1)[0].request_id
    page = Page(browser)
    try:
        for path in ("/ui/", "/ui/?tenant=acme", f"/ui/request/{rid}", "/ui/requests"):
            page.open(srv.url + path)
            assert page.page.url == srv.url + "/ui/login", path
            assert page.page.locator("input[name=key][type=password]").count() == 1
            assert page.page.locator("[data-key]").count() == 0 and rid not in page.page.content()
        page.screenshot("dashboard-login")
        assert page.errors == []
    finally:
        page.close()


def test_a_wrong_key_is_rejected(browser, server):
    srv, _ = server
    page = Page(browser)
    try:
        for key in ("tc-admin-e2e-4f1d9b", ADMIN_KEY.upper(), READ_KEY + "x"):
            answer = page.login(srv.url, key)
            assert answer.status == 401
            assert page.page.url == srv.url + "/ui/login" and "not accepted" in page.page.inner_text("main")
            assert page.session_cookies() == []
        page.open(srv.url + "/ui/")
        assert page.page.url == srv.url + "/ui/login"
    finally:
        page.close()


def test_the_session_cookie_is_httponly_and_strict(browser, server):
    srv, _ = server
    page = _admin(browser, srv)
    try:
        (cookie,) = page.session_cookies()
        assert cookie["name"] == COOKIE and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/ui" and cookie["secure"] is False  # plain http on loopback; https sets Secure
        assert len(cookie["value"]) >= 43
        assert COOKIE not in page.page.evaluate("document.cookie")  # page scripts cannot read it
        page.page.click("nav form.who button[type=submit]")  # log out
        page.page.wait_for_load_state("load")
        assert page.page.url == srv.url + "/ui/login" and page.session_cookies() == []
        page.page.context.add_cookies([{**cookie, "sameSite": "Strict"}])  # the old token is dead on the server
        page.open(srv.url + "/ui/")
        assert page.page.url == srv.url + "/ui/login"
    finally:
        page.close()


def test_a_read_key_sees_only_its_tenant_and_cost_center(browser, server):
    srv, store = server
    page = Page(browser)
    try:
        assert page.login(srv.url, READ_KEY).status == 303
        total, requests = _total(store, READER_SCOPE)
        everything, _ = _total(store)
        assert 0 < total < everything
        for query in ("", "?tenant=acme", "?tenant=&cost_center=", "?cost_center=platform&tenant=acme"):
            page.open(srv.url + "/ui/" + query)
            figs = page.figures()
            assert Decimal(figs["total_usd"][0]) == total, query
            assert int(figs["requests"][0]) == requests
            assert shown_number(figs["total_usd"][1]) == pytest.approx(float(total), rel=1e-2)
            assert page.page.input_value("input[name=tenant]") == "globex"
            assert "budgets are shown to admins" in page.page.inner_text("main")  # a budget's spend spans tenants
        page.screenshot("dashboard-read-scope")
        assert page.errors == []
        mine = page.page.eval_on_selector_all("table a[href*='/request/']", "els => els.map(e => e.textContent)")
        assert mine and all(
            e.attribution.tenant == "globex" for rid in mine for e in store.query(LedgerFilter(request_id=rid))
        )
        page.open(srv.url + "/ui/requests?tenant=acme")
        listed = page.page.eval_on_selector_all("table a[href*='/request/']", "els => els.map(e => e.textContent)")
        assert set(mine) <= set(listed) and all(
            store.query(LedgerFilter(request_id=rid), limit=1)[0].attribution.tenant == "globex" for rid in listed
        )
        theirs = store.query(LedgerFilter(attribution=(("tenant", "acme"),)), limit=1)[0].request_id
        assert page.page.goto(srv.url + f"/ui/request/{theirs}").status == 404
        assert page.page.goto(srv.url + f"/ui/request/{mine[0]}").status == 200
    finally:
        page.close()
