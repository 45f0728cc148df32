"""Issue 15, point 5: /ui and /metrics behind credentials; a read-scoped key sees only its own tenant's and
cost center's data."""

from __future__ import annotations

import pytest

from tests.security.harness import chat_body, http, post_chat, ui_login
from tests.security.sec_config import ADMIN_KEY, METRICS_TOKEN, key


@pytest.fixture(scope="module")
def two_tenants(gw):
    """One request by acme (key plain, cc-plain) and one by globex (key other, cc-other)."""
    ids = {}
    for name in ("plain", "other"):
        r = post_chat(gw, key(name), chat_body("chat", f"ui-{name}", max_tokens=5))
        assert r.status_code == 200
        ids[name] = r.headers["x-request-id"]
        gw.wait_rows("request_id = ?", (ids[name],))
    return ids


def test_every_ui_page_needs_a_session(gw, two_tenants):
    with http(follow_redirects=False) as c:
        for path in ("/ui/", "/ui/requests", f"/ui/request/{two_tenants['plain']}", "/ui/nope", "/ui/static/x.js"):
            r = c.get(gw.url + path)
            assert r.status_code == 303 and r.headers["location"].endswith("/ui/login"), (path, r.status_code)
            assert "cc-plain" not in r.text and "acme" not in r.text
        for presented in ("", "wrong-key", key("noscope"), key("revoked"), key("expired"), METRICS_TOKEN):
            r = c.post(gw.url + "/ui/login", data={"key": presented})
            assert r.status_code not in (302, 303) and "set-cookie" not in r.headers, presented[:10]
        assert c.get(gw.url + "/ui/").status_code == 303


def test_the_session_cookie_is_httponly_samesite_strict_and_random(gw):
    cookies = []
    for _ in range(2):
        with http(follow_redirects=False) as c:
            r = c.post(gw.url + "/ui/login", data={"key": ADMIN_KEY})
            assert r.status_code in (302, 303), r.text[:300]
            raw = r.headers["set-cookie"]
            low = raw.lower()
            assert "httponly" in low and "samesite=strict" in low and "path=/ui" in low, raw
            cookies.append(raw.split(";", 1)[0].split("=", 1)[1])
    assert cookies[0] != cookies[1] and all(len(v) >= 22 for v in cookies)
    assert ADMIN_KEY not in "".join(cookies)


def test_a_read_key_sees_only_its_own_tenant_and_cost_center(gw, two_tenants):
    with ui_login(gw, key("plain")) as c:
        home = c.get(gw.url + "/ui/")
        assert home.status_code == 200, home.status_code
        assert "globex" not in home.text and "cc-other" not in home.text
        assert c.get(gw.url + f"/ui/request/{two_tenants['plain']}").status_code == 200
        theirs = c.get(gw.url + f"/ui/request/{two_tenants['other']}")
        assert theirs.status_code == 404 and "cc-other" not in theirs.text
        for query in ("?tenant=globex", "?cost_center=cc-other", "?tenant=globex&cost_center=cc-other"):
            r = c.get(gw.url + "/ui/" + query)
            assert "cc-other" not in r.text and "globex" not in r.text, query
            r = c.get(gw.url + "/ui/requests" + query)
            assert two_tenants["other"] not in r.text, query
    with ui_login(gw, ADMIN_KEY) as c:
        for rid in two_tenants.values():
            assert c.get(gw.url + f"/ui/request/{rid}").status_code == 200


def test_logout_ends_the_session(gw):
    with ui_login(gw, ADMIN_KEY) as c:
        assert c.get(gw.url + "/ui/").status_code == 200
        token = c.cookies.get("truecost_session") or next(iter(c.cookies.values()), None)
        c.post(gw.url + "/ui/logout")
        assert c.get(gw.url + "/ui/").status_code == 303
    assert token
    with http(follow_redirects=False) as c:  # the old cookie, replayed, is dead server-side
        name = "truecost_session"
        r = c.get(gw.url + "/ui/", headers={"cookie": f"{name}={token}"})
        assert r.status_code == 303


def test_metrics_need_the_bearer_token(gw):
    with http() as c:
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"authorization": f"Bearer {ADMIN_KEY}"},
            {"authorization": f"Bearer {key('plain')}"},
            {"authorization": METRICS_TOKEN},
        ):
            r = c.get(gw.url + "/metrics", headers=headers)
            assert r.status_code == 401 and "truecost_" not in r.text, headers
        r = c.get(gw.url + "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200 and "truecost_requests_total" in r.text


def test_client_controlled_strings_are_escaped_on_every_page(gw):
    """A client chooses its feature, tags and request id; an admin later opens the dashboard."""
    payload = '<script>alert("xss-7f3a")</script>'
    r = post_chat(
        gw,
        key("plain"),
        chat_body("chat", "ui-xss", max_tokens=5),
        headers={
            "x-truecost-feature": payload,
            "x-truecost-tags": 'note=<img src=x onerror=alert("xss-7f3a")>',
            "x-request-id": '<svg onload=alert("xss-7f3a")>',
        },
    )
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    (row, *_x) = gw.wait_rows("request_id = ?", (rid,))
    assert row["feature"] == payload  # stored as sent (it is data), so every page must escape it
    with ui_login(gw, ADMIN_KEY) as c:
        pages = {
            p: c.get(gw.url + p) for p in ("/ui/", "/ui/requests", f"/ui/request/{rid}", "/ui/?feature=" + payload)
        }
    assert pages[f"/ui/request/{rid}"].status_code == 200
    assert "xss-7f3a" in pages[f"/ui/request/{rid}"].text, "the request page does not show the feature at all"
    for path, page in pages.items():
        for raw in ("<script>alert(", "<img src=x onerror", "<svg onload"):
            assert raw not in page.text, f"{path} renders a client's {raw}... unescaped"
