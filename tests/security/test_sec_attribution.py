"""Issue 15, point 2: a virtual key's attribution is authoritative; client headers add only what the key allows.

Also: a client's x-request-id never becomes the ledger's request id, and the gateway's ids are unguessable.
"""

from __future__ import annotations

import re

import pytest

from tests.security.harness import chat_body, http, post_chat
from tests.security.sec_config import METRICS_TOKEN, key

HOSTILE_HEADERS = {
    "x-truecost-cost-center": "ops",
    "x-truecost-team": "t-evil",
    "x-truecost-tenant": "globex",
    "x-truecost-environment": "dev",
    "x-truecost-feature": "faq",
    "x-truecost-tags": "campaign=spring,cost_center=ops",
}


def _ignored_count(gw) -> float:
    with http() as c:
        text = c.get(gw.url + "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("truecost_attribution_headers_ignored_total")
    )


def test_attribution_headers_are_ignored_unless_the_key_allows_them(gw):
    before = _ignored_count(gw)
    r = post_chat(gw, key("locked"), chat_body("chat", "attr-locked", max_tokens=20), headers=HOSTILE_HEADERS)
    assert r.status_code == 200, r.text  # ignored, not an error
    rows = gw.wait_rows("request_id = ?", (r.headers["x-request-id"],))
    assert rows
    for row in rows:
        assert (row["cost_center"], row["team"], row["tenant"], row["environment"]) == (
            "cc-locked",
            "t-locked",
            "tn-locked",
            "prod",
        ), row
        assert row["feature"] == "faq" and row["tags"].get("campaign") == "spring"  # always allowed
    assert _ignored_count(gw) >= before + 1, "truecost_attribution_headers_ignored_total did not count the headers"


def test_a_key_may_be_allowed_one_attribution_header_and_no_other(gw):
    r = post_chat(
        gw,
        key("trusted"),
        chat_body("chat", "attr-trusted", max_tokens=20),
        headers={"x-truecost-cost-center": "cc-elsewhere", "x-truecost-team": "t-evil", "x-truecost-tenant": "globex"},
    )
    assert r.status_code == 200, r.text
    (row, *_rest) = gw.wait_rows("request_id = ?", (r.headers["x-request-id"],))
    assert row["cost_center"] == "cc-elsewhere"  # allow_attribution_headers: [cost_center]
    assert (row["team"], row["tenant"]) == ("t-trusted", "tn-trusted")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-truecost-cost-center": "ops"},
        {"x-truecost-cost-center": ""},
        {"x-truecost-cost-center": "cc-other", "x-truecost-tenant": "globex"},
        {"x-truecost-tenant": "", "x-truecost-team": ""},
        {"x-truecost-tags": "cost_center=ops"},
    ],
    ids=["none", "ops", "empty", "other-tenant", "empty-others", "tag"],
)
def test_an_exhausted_key_cannot_dodge_its_budget_with_a_header(gw, upstream, headers):
    marker = f"bypass-{sorted(headers.items())}"
    r = post_chat(gw, key("exhausted"), chat_body("chat", marker, max_tokens=50), headers=headers)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", (r.status_code, r.text[:300])
    assert "cost_center=cc-exhausted" in r.json()["error"]["message"]
    assert not upstream.calls(marker), "the refused request reached the upstream"
    assert not gw.rows("cost_center IN ('ops', '') OR tenant = 'tn-exhausted'"), "billed to another cost center"


def test_a_client_request_id_never_becomes_the_ledger_id(gw):
    shared = "req-reused-0001"
    ids = []
    for name in ("plain", "other"):  # two tenants, one client-chosen id
        r = post_chat(
            gw, key(name), chat_body("chat", f"reqid-{name}", max_tokens=20), headers={"x-request-id": shared}
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] != shared
        ids.append(r.headers["x-request-id"])
    assert ids[0] != ids[1]
    assert not gw.rows("request_id = ?", (shared,)), "a client's id was taken as a ledger request id"
    for rid, tenant in zip(ids, ("acme", "globex")):
        rows = gw.wait_rows("request_id = ?", (rid,))
        assert rows and {row["tenant"] for row in rows} == {tenant}, "two tenants' rows merged into one request"
        assert any(row["details"].get("client_request_id") == shared for row in rows)


def test_request_ids_are_unguessable(gw):
    ids = []
    for i in range(12):
        r = post_chat(gw, key("plain"), chat_body("chat", f"ids-{i}", max_tokens=5))
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    for rid in ids:
        assert re.fullmatch(r"[0-9a-f]{32,}", rid) or re.fullmatch(r"[A-Za-z0-9_-]{22,}", rid), rid
    assert len(set(ids)) == len(ids)
    common = 0
    while all(len(x) > common and x[common] == ids[0][common] for x in ids):
        common += 1
    assert common < 6, f"request ids share a {common}-character prefix: {ids[:3]}"
    if all(re.fullmatch(r"[0-9a-f]+", x) for x in ids):
        values = [int(x, 16) for x in ids]
        steps = {b - a for a, b in zip(values, values[1:])}
        assert len(steps) > 1 and all(abs(s) > 2**32 for s in steps), "request ids are sequential"
        assert all(len(x) * 4 >= 128 for x in ids)
    for rid in ids[:3]:  # and they are the ledger's ids
        assert gw.wait_rows("request_id = ?", (rid,))


@pytest.mark.parametrize("headers", [{}, {"x-truecost-cost-center": "ops"}], ids=["none", "ops"])
def test_the_anthropic_and_embeddings_endpoints_hold_the_same_budget(gw, upstream, headers):
    with http() as c:
        r = c.post(
            gw.url + "/v1/messages",
            headers={"x-api-key": key("exhausted"), "anthropic-version": "2023-06-01", **headers},
            json={"model": "chat", "max_tokens": 50, "messages": [{"role": "user", "content": "bypass-messages"}]},
        )
        assert r.status_code == 429, r.text[:300]
        assert r.json()["type"] == "error" and "budget" in r.json()["error"]["message"]
        r = c.post(
            gw.url + "/v1/embeddings",
            headers={"authorization": f"Bearer {key('exhausted')}", **headers},
            json={"model": "embed", "input": ["bypass-embeddings " + "word " * 200] * 20},
        )
        assert r.status_code == 429, r.text[:300]
    assert not upstream.calls("bypass-messages") and not upstream.calls("bypass-embeddings")
    assert not gw.rows("cost_center IN ('ops', '') OR tenant = 'tn-exhausted'")


def test_an_allowed_header_adds_a_budget_and_never_removes_one(gw, upstream):
    """A key allowed to set cost_center/tenant: billing elsewhere does not escape its own exhausted budget, and
    billing to an exhausted cost center meets that budget."""
    for headers in (
        {"x-truecost-cost-center": "ops"},
        {"x-truecost-cost-center": "ops", "x-truecost-tenant": "t-x"},
        {"x-truecost-cost-center": ""},
    ):
        r = post_chat(gw, key("trusted-exhausted"), chat_body("chat", "allowed-escape", max_tokens=50), headers=headers)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", (headers, r.text[:300])
    r = post_chat(
        gw,
        key("trusted"),
        chat_body("chat", "allowed-into-exhausted", max_tokens=50),
        headers={"x-truecost-cost-center": "cc-exhausted"},
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text[:300]
    assert not upstream.calls("allowed-escape") and not upstream.calls("allowed-into-exhausted")
    assert not gw.rows("cost_center IN ('ops', '', 'cc-exhausted', 'cc-exhausted2')")
