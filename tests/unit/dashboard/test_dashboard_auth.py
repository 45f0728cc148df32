"""The dashboard's login, sessions and scoped principals, through the ASGI app (no network)."""

import asyncio
import re
from datetime import datetime, timezone
from decimal import Decimal

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from truecost.dashboard.app import COOKIE, create_dashboard
from truecost.dashboard.auth import KeyTableAuth, Principal, SessionStore, StaticKeyAuth, key_sha256
from truecost.ledger import MemoryLedgerStore
from truecost.ledger.events import CostEvent
from truecost.ledger.store import LedgerFilter
from truecost.types import Attribution

T = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
ADMIN, READER, NO_TENANT = "admin-key-123", "reader-key-456", "reader-without-tenant"
READ = Principal("acme-reader", admin=False, tenant="acme", cost_center="cx")


def _event(i, tenant, cost_center, cost):
    return CostEvent(
        id=f"e{i}",
        request_id=f"req-{tenant}-{i}",
        ts=T,
        step="generate",
        service="gpt-6-luna",
        cost=Decimal(cost),
        attribution=Attribution(cost_center=cost_center, tenant=tenant, feature="bot"),
    )


@pytest.fixture
def store():
    s = MemoryLedgerStore()
    s.append(
        [
            _event(1, "acme", "cx", "0.25"),
            _event(2, "acme", "ops", "0.5"),
            _event(3, "globex", "cx", "4"),
            _event(4, "acme", "cx", "0.125"),
        ]
    )
    return s


def _auth():
    return KeyTableAuth(
        [
            (key_sha256(ADMIN), Principal("admin", admin=True)),
            (key_sha256(READER), READ),
            (key_sha256(NO_TENANT), Principal("odd", admin=False, cost_center="cx")),
        ]
    )


def _client(store, scheme="http", **kw):
    kw.setdefault("auth", _auth())
    app = Starlette(routes=[Mount("/ui", create_dashboard(store, **kw))])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"{scheme}://dash")


def run(coro):
    return asyncio.run(coro)


async def _login(c, key):
    return await c.post("/ui/login", data={"key": key})


def _figure(html, key):
    return re.search(rf'data-key="{key}" data-value="([^"]*)"', html).group(1)


def test_every_page_needs_a_session(store):
    async def go():
        async with _client(store) as c:
            for path in ("/ui/", "/ui/requests", "/ui/request/req-acme-1", "/ui/anything/else", "/ui/?tenant=acme"):
                r = await c.get(path)
                assert r.status_code == 303 and r.headers["location"] == "/ui/login", path
            r = await c.get("/ui/login")
            assert r.status_code == 200 and 'name="key"' in r.text and 'type="password"' in r.text
            assert (
                r.headers["cache-control"] == "no-store"
                and "frame-ancestors 'none'" in r.headers["content-security-policy"]
            )
            c.cookies.set(COOKIE, "forged-token", domain="dash", path="/ui")
            assert (await c.get("/ui/")).status_code == 303

    run(go())


def test_wrong_key_is_a_401_that_says_nothing_more(store):
    async def go():
        async with _client(store) as c:
            texts = []
            for key in ("nope", ADMIN + " x", "", "a" * 5000, NO_TENANT):
                r = await _login(c, key)
                assert r.status_code == 401 and COOKIE not in r.headers.get("set-cookie", "")
                texts.append(r.text)
            assert len(set(texts)) == 1  # an unknown key and a key without a scope look the same
            r = await c.post(
                "/ui/login",
                content=b"key=" + b"x" * 20000,
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert r.status_code == 413

    run(go())


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_the_session(store):
    async def go():
        async with _client(store) as c:
            r = await _login(c, ADMIN)
            assert r.status_code == 303 and r.headers["location"] == "/ui/"
            cookie = r.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
            assert "Secure" not in cookie  # plain http (a test or a loopback port)
            token = r.cookies[COOKIE]
            assert len(token) >= 43
            r = await c.get("/ui/")
            assert r.status_code == 200 and Decimal(_figure(r.text, "total_usd")) == Decimal("4.875")
            r = await c.post("/ui/logout")
            assert r.status_code == 303 and r.headers["location"] == "/ui/login"
            c.cookies.set(COOKIE, token, domain="dash", path="/ui")  # a stolen token is dead after logout
            assert (await c.get("/ui/")).status_code == 303
        async with _client(store, scheme="https") as c:
            r = await _login(c, ADMIN)
            assert "Secure" in r.headers["set-cookie"]

    run(go())


def test_a_scoped_principal_sees_only_its_tenant_and_cost_center(store):
    async def go():
        async with _client(store) as c:
            await _login(c, READER)
            scope = LedgerFilter(attribution=(("tenant", "acme"), ("cost_center", "cx")))
            expected = store.aggregate([], scope)[0]
            for query in ("", "?tenant=globex", "?cost_center=ops&tenant=", "?tenant=globex&cost_center=cx"):
                r = await c.get("/ui/" + query)
                assert r.status_code == 200
                assert Decimal(_figure(r.text, "total_usd")) == expected.cost == Decimal("0.375"), query
                assert int(_figure(r.text, "requests")) == expected.request_count == 2
                assert "globex" not in r.text and "req-globex" not in r.text
            assert (await c.get("/ui/request/req-acme-1")).status_code == 200
            for other in ("req-globex-3", "req-acme-2"):  # another tenant; the same tenant's other cost center
                r = await c.get("/ui/request/" + other)
                assert r.status_code == 404 and "4.00" not in r.text
            r = await c.get("/ui/?feature=nothing")  # narrowing further is fine
            assert Decimal(_figure(r.text, "total_usd")) == 0

    run(go())


def test_an_admin_sees_every_tenant_and_request(store):
    async def go():
        async with _client(store) as c:
            await _login(c, ADMIN)
            r = await c.get("/ui/?tenant=globex")
            assert Decimal(_figure(r.text, "total_usd")) == Decimal(4)
            assert (await c.get("/ui/request/req-globex-3")).status_code == 200

    run(go())


def test_without_auth_the_dashboard_fails_closed_and_opens_only_when_asked(store):
    async def go():
        async with _client(store, auth=None) as c:
            assert (await c.get("/ui/")).status_code == 303
            r = await _login(c, ADMIN)
            assert r.status_code == 401 and "No dashboard credentials" in r.text
        async with _client(store, auth=None, insecure_open=True) as c:
            assert (await c.get("/ui/")).status_code == 200

    run(go())


def test_static_key_auth_and_sessions():
    auth = StaticKeyAuth(key_sha256("s3cret"))
    assert auth.login("s3cret") == Principal("admin", admin=True)
    assert auth.login("s3cret ") is None and auth.login("") is None and auth.login("\ud800") is None
    with pytest.raises(ValueError):
        StaticKeyAuth("not-a-digest")
    now = [0.0]
    sessions = SessionStore(ttl_seconds=10, max_sessions=3, clock=lambda: now[0])
    tokens = [sessions.create(READ) for _ in range(4)]
    assert len(sessions) == 3 and sessions.get(tokens[0]) is None and sessions.get(tokens[3]) == READ
    assert len(set(tokens)) == 4 and all(len(t) >= 43 for t in tokens)
    now[0] = 10.0
    assert sessions.get(tokens[3]) is None and sessions.get(None) is None
    sessions.create(READ)
    assert len(sessions) == 1  # expired sessions do not pile up
    admin = sessions.create(Principal("admin", admin=True))
    assert sessions.revoke_principal("acme-reader") == 1 and len(sessions) == 1 and sessions.get(admin).admin


def test_a_revoked_key_loses_its_sessions(store):
    sessions = SessionStore()

    async def go():
        async with _client(store, sessions=sessions) as c:
            await _login(c, READER)
            assert (await c.get("/ui/")).status_code == 200
            sessions.revoke_principal(READ.name)  # what the gateway does when the key is revoked or rotated
            assert (await c.get("/ui/")).status_code == 303

    run(go())


def test_the_requests_list_is_scoped_too(store):
    async def go():
        async with _client(store) as c:
            await _login(c, READER)
            r = await c.get("/ui/requests?tenant=globex&cost_center=ops")
            assert r.status_code == 200
            assert set(re.findall(r"/ui/request/(req-[\w-]+)", r.text)) == {"req-acme-1", "req-acme-4"}
            assert (await c.get("/ui/requests?since=yesterday")).status_code == 400
        async with _client(store) as c:
            await _login(c, ADMIN)
            r = await c.get("/ui/requests")
            assert set(re.findall(r"/ui/request/(req-[\w-]+)", r.text)) == {
                f"req-{t}-{i}" for t, i in (("acme", 1), ("acme", 2), ("globex", 3), ("acme", 4))
            }

    run(go())
