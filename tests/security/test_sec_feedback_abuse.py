"""Abusing client feedback (``POST /v1/cache/feedback``) and regenerates through the real gateway app over HTTP.

The gateway runs in process (so a test can look at its cache, audit and ledger) in front of a mock upstream
that answers every question alike: a request sent twice is an exact hit the second time. Each attack either
holds (the assertion says what the attacker gets: nothing more than the README documents) or was a bug
fixed with it (the docstring says so).
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import httpx
import pytest

from tests.support.mock_upstream import ServerThread, make_app
from truecost.gateway.app import build
from truecost.gateway.config import hash_key, parse_config
from truecost.ledger import LedgerFilter

ADMIN = "sk-admin-fb-abuse"
KEYS = {
    "a": ("sk-fba-a", {"tenant": "acme", "cost_center": "cc-a"}),
    "a2": ("sk-fba-a2", {"tenant": "acme", "cost_center": "cc-a2"}),
    "b": ("sk-fba-b", {"tenant": "globex", "cost_center": "cc-b"}),
    "rpm": ("sk-fba-rpm", {"tenant": "acme", "cost_center": "cc-rpm", "rpm": 2}),
    "broke": ("sk-fba-broke", {"tenant": "acme", "cost_center": "cc-broke"}),
    "expired": ("sk-fba-expired", {"tenant": "acme", "cost_center": "cc-a", "expires_at": "2020-01-01T00:00:00Z"}),
}
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


class Gw:
    def __init__(self, server):
        self.server, self.url = server, server.url
        self.app = server.server.config.app

    @property
    def cache(self):
        return self.app.state.pipeline.cache

    def chat(self, key, text, user="u1", headers=None, secret=None, **extra):
        body = {"model": "support", "messages": [{"role": "user", "content": text}], **extra}
        if user is not None:
            body["user"] = user
        auth = {"authorization": f"Bearer {secret or KEYS[key][0]}"} if key or secret else {}
        return httpx.post(self.url + "/v1/chat/completions", json=body, headers={**auth, **(headers or {})}, timeout=30)

    def hit(self, key, text, user="u1", **extra):
        """An exact hit served to ``key`` (the question asked once by another end user first): its response."""
        first = self.chat(key, text, user=f"{user}-first", **extra)
        assert first.status_code == 200 and first.headers["x-truecost-cache"] == "miss", first.text
        r = self.chat(key, text, user=user, **extra)
        assert r.status_code == 200 and r.headers["x-truecost-cache"] == "hit", r.text
        return r

    def report(self, key, body, secret=None, raw=None):
        headers = {"authorization": f"Bearer {secret or KEYS[key][0]}"} if key or secret else {}
        if raw is not None:
            return httpx.post(
                self.url + "/v1/cache/feedback",
                content=raw,
                headers={**headers, "content-type": "application/json"},
                timeout=30,
            )
        return httpx.post(self.url + "/v1/cache/feedback", json=body, headers=headers, timeout=30)

    def feedback_audit(self, limit=10_000):
        return [a for a in self.app.state.keys.audit(limit) if a["action"] == "cache.feedback"]

    def ledger(self, **kw):
        self.app.state.writer.flush()
        return self.app.state.store.query(LedgerFilter(**kw))


@pytest.fixture(scope="module")
def upstream():
    with ServerThread(make_app()) as up:
        yield up


@pytest.fixture
def gateway(tmp_path, upstream):
    """``gateway(keys=True, feedback=None)`` -> a started Gw (exact-tier hits; a fixed semantic threshold)."""
    started = []

    def make(keys=True, feedback=None, budgets=()):
        config = parse_config(
            {
                "ledger": str(tmp_path / f"gw{len(started)}.db"),
                "upstreams": {"mock": {"base_url": upstream.url + "/v1", "timeout": 5, "max_retries": 0}},
                "models": {"support": {"candidates": [{"upstream": "mock", "model": "gpt-6-luna"}]}},
                "keys": [{"name": n, "key_sha256": hash_key(k), **x} for n, (k, x) in KEYS.items()] if keys else [],
                "admin_key_sha256": hash_key(ADMIN),
                "budgets": list(budgets),
                "cache": {
                    "enabled": True,
                    "embedder": "static-tuned",
                    "policy": "fixed:0.99",
                    **({"feedback": feedback} if feedback is not None else {}),
                },
            }
        )
        server = ServerThread(build(config)).__enter__()
        started.append(server)
        return Gw(server)

    yield make
    for server in started:
        server.__exit__(None, None, None)


# -- audit ----------------------------------------------------------------------------------------------


def test_a_flood_of_refused_reports_cannot_flush_the_audit_log(gateway):
    """Was broken: every refused report wrote an audit row, unthrottled for a key without ``rpm``: one key
    could bury (and, with the in-memory key store, evict) the admin rows -- key creations, rotations,
    revocations -- under its own noise. The admin API throttles its refused logins; reports now do too."""
    gw = gateway()
    assert httpx.get(gw.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
    t0 = time.monotonic()
    for i in range(200):
        assert gw.report("a", {"request_id": f"guess-{i}", "correct": False}).status_code == 404
    refill = (time.monotonic() - t0) / 2  # 30 a minute: one more row every two seconds
    refused = [r for r in gw.feedback_audit() if r["actor"] == "key:a"]
    assert 30 <= len(refused) <= 31 + refill < 60, (len(refused), refill)  # the first 30 written; the rest counted
    assert any(r["action"] == "key.list" for r in gw.app.state.keys.audit(100))  # still on the first page
    text = httpx.get(gw.url + "/metrics").text
    assert 'truecost_cache_feedback_total{outcome="unknown_request",verdict="wrong"} 200' in text
    # another key's refusals are not silenced by the first key's flood
    assert gw.report("a2", {"request_id": UNKNOWN_ID, "correct": False}).status_code == 404
    assert [r["outcome"] for r in gw.feedback_audit() if r["actor"] == "key:a2"] == ["refused:unknown_request"]
    # an accepted report is always audited, flood or not
    hit = gw.hit("a", "flood: how long does a refund take?")
    assert gw.report("a", {"request_id": hit.headers["x-request-id"], "correct": False}).status_code == 200
    ok = [r for r in gw.feedback_audit() if r["actor"] == "key:a" and r["outcome"] == "ok"]
    assert [r["target"] for r in ok] == [hit.headers["x-request-id"]]


def test_request_ids_with_control_characters_never_reach_the_audit_table(gateway):
    gw = gateway()
    for rid in ("r1\n", "r1\r\nX-Injected: 1", "r1\x00", "r1\u2028", "r1 ", " r1", "r" * 129, "r1%0a", "é"):
        r = gw.report("a", {"request_id": rid, "correct": False})
        assert r.status_code == 400 and r.json()["error"]["param"] == "request_id", (rid, r.text)
        assert rid not in r.text
    assert gw.feedback_audit() == []  # refused before any lookup: nothing of the attacker's string is stored
    raw = b'{"request_id": "\xff\xfe", "correct": false}'
    assert gw.report("a", None, raw=raw).status_code == 400  # not UTF-8


# -- who may report on what -----------------------------------------------------------------------------


def test_concurrent_reports_on_one_hit_count_once(gateway):
    gw = gateway()
    hit = gw.hit("a", "race: what are your opening hours?")
    rid = hit.headers["x-request-id"]
    barrier, codes = threading.Barrier(8), []

    def go():
        barrier.wait()
        codes.append(gw.report("a", {"request_id": rid, "verdict": "wrong"}).status_code)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [200] + [404] * 7
    assert gw.cache.stats["feedback_wrong"] == 1


def test_expired_revoked_and_admin_keys_cannot_report_and_a_rotated_key_keeps_its_own_hits(gateway):
    gw = gateway()
    admin = {"authorization": f"Bearer {ADMIN}"}
    created = httpx.post(gw.url + "/admin/keys", json={"name": "rot", "tenant": "acme"}, headers=admin)
    assert created.status_code == 201, created.text
    old = created.json()["secret"]
    hit = gw.chat(None, "rotate: how do I reset my password?", user="r-first", secret=old)
    hit = gw.chat(None, "rotate: how do I reset my password?", user="r", secret=old)
    assert hit.headers["x-truecost-cache"] == "hit"
    rid = hit.headers["x-request-id"]
    body = {"request_id": rid, "correct": False}
    r = gw.report("expired", body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"
    assert gw.report(None, body, secret=ADMIN).status_code == 401  # the admin key is no virtual key
    rotated = httpx.post(gw.url + "/admin/keys/rot/rotate", json={}, headers=admin)
    assert rotated.status_code == 200
    assert gw.report(None, body, secret=old).status_code == 401  # the old secret is dead
    # the same key (its name, tenant and cost center) under a new secret: its own hit, still its own
    assert gw.report(None, body, secret=rotated.json()["secret"]).status_code == 200
    hit2 = gw.chat(None, "rotate: how do I reset my password?", user="r2", secret=rotated.json()["secret"])
    assert hit2.headers["x-truecost-cache"] == "hit"
    assert httpx.post(gw.url + "/admin/keys/rot/revoke", json={}, headers=admin).status_code == 200
    r = gw.report(None, {"request_id": hit2.headers["x-request-id"], "correct": False}, secret=rotated.json()["secret"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"
    # a name is never reused (not even after revocation), so no later key inherits the revoked key's hits
    again = httpx.post(gw.url + "/admin/keys", json={"name": "rot", "tenant": "globex"}, headers=admin)
    assert again.status_code == 409


def test_development_mode_reports_are_anonymous_and_open_to_every_caller(gateway):
    """No keys configured: every request is unattributed (README: development mode), so any caller may report
    on any hit -- once. The audit names the caller ``anonymous``."""
    gw = gateway(keys=False)
    hit = gw.hit(None, "dev: when is the shop open?")
    rid = hit.headers["x-request-id"]
    r = gw.report(None, {"request_id": rid, "verdict": "wrong"})
    assert r.status_code == 200 and r.json()["cache"] == "hit_exact"
    assert gw.report(None, {"request_id": rid, "verdict": "wrong"}).status_code == 404
    rows = [(a["actor"], a["outcome"]) for a in gw.feedback_audit()]  # newest first
    assert rows == [("anonymous", "refused:unknown_request"), ("anonymous", "ok")]


def test_one_key_flooding_hits_cannot_make_the_cache_forget_another_keys_hits(gateway):
    """Was broken: the remembered hits were one table for every key, oldest forgotten first: one key asking
    the same question over and over (exact hits cost it nothing) made the gateway forget every other
    tenant's hits, so their reports got 404. Now a full table forgets the oldest hit of the key holding
    the most."""
    gw = gateway()
    gw.cache.served.capacity = 30  # the production table holds 10,000; the flood is the same, scaled down
    victim = gw.hit("b", "evict: what is the delivery fee?")
    gw.hit("a", "evict: flood question")
    for i in range(60):
        assert gw.chat("a", "evict: flood question", user=f"flood-{i}").headers["x-truecost-cache"] == "hit"
    assert len(gw.cache.served) <= 30
    r = gw.report("b", {"request_id": victim.headers["x-request-id"], "correct": False})
    assert r.status_code == 200, r.text


# -- regenerates: who pays, settled once ----------------------------------------------------------------


def test_a_streamed_regenerate_is_answered_upstream_billed_to_the_asker_and_settled_once(gateway):
    gw = gateway(feedback={"regenerate_window_seconds": 60})
    text = "stream: how much does shipping cost?"
    hit = gw.hit("a", text, user="s1")
    rid = hit.headers["x-request-id"]
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={"model": "support", "messages": [{"role": "user", "content": text}], "user": "s1", "stream": True},
        headers={"authorization": f"Bearer {KEYS['a'][0]}"},
        timeout=30,
    ) as r:
        assert r.status_code == 200 and r.headers["x-truecost-cache"] == "regenerate"
        again_id = r.headers["x-request-id"]
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    said = "".join(c["choices"][0]["delta"].get("content", "") for c in map(json.loads, lines[:-1]) if c["choices"])
    assert "refund reaches" in said  # the upstream's answer, streamed
    assert gw.cache.stats["regenerate"] == 1
    rows = gw.ledger(request_id=again_id)
    generate = [e for e in rows if e.step == "generate"]
    assert len(generate) == 1 and generate[0].details["regenerate_of"] == rid
    assert generate[0].cost is not None and generate[0].cost > 0  # priced, not 0 and not unknown
    assert {e.attribution.cost_center for e in rows} == {"cc-a"}  # the asker pays, nobody else
    assert gw.report("a", {"request_id": rid, "correct": False}).status_code == 404  # counted wrong once already


def test_a_regenerate_passes_admission_budgets_and_rate_limits_like_any_request(gateway):
    gw = gateway(
        feedback={"regenerate_window_seconds": 60},
        budgets=[{"cost_center": "cc-broke", "period": "day", "limit_usd": "0.00005", "hard": True}],
    )
    text = "budget: my card payment was declined"
    hit = gw.hit("broke", text, user="b1", max_tokens=20)  # one answer (~$0.000025) spent; the hit is free
    assert gw.chat("broke", "budget: something else", user="b1", max_tokens=20).status_code == 200
    spent = sum(
        (e.cost for e in gw.ledger(attribution=(("cost_center", "cc-broke"),)) if e.cost is not None), Decimal(0)
    )
    assert spent > Decimal("0.00005")  # the budget is spent
    for headers in ({}, {"x-truecost-cache": "bypass"}):
        r = gw.chat("broke", text, user="b1", headers=headers, max_tokens=20)
        assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
    # refused at admission: the hit was not consumed, and no upstream call was made on anyone's behalf
    assert gw.cache.stats["regenerate"] == 0
    assert gw.report("broke", {"request_id": hit.headers["x-request-id"], "correct": False}).status_code == 200
    # the rate limit: reports and regenerates draw on the same per-minute allowance
    gw.hit("rpm", "rate: cancel my plan", user="q1")  # two requests: the allowance (2) is used up
    r = gw.chat("rpm", "rate: cancel my plan", user="q1", headers={"x-truecost-cache": "bypass"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert gw.report("rpm", {"request_id": UNKNOWN_ID, "correct": False}).status_code == 429
    assert gw.cache.stats["regenerate"] == 0


def test_another_key_asking_the_same_question_is_never_a_regenerate_of_my_hit(gateway):
    gw = gateway(feedback={"regenerate_window_seconds": 60, "regenerate_by": "key"})
    text = "who: what is the refund policy?"
    mine = gw.hit("a", text, user=None)
    for key, headers in (("a2", {"x-truecost-cache": "bypass"}), ("b", {}), ("a2", {})):
        r = gw.chat(key, text, user=None, headers=headers)
        assert r.headers["x-truecost-cache"] != "regenerate", key
    assert gw.cache.stats["regenerate"] == 0
    assert gw.report("a", {"request_id": mine.headers["x-request-id"], "correct": False}).status_code == 200


def test_duplicate_keys_in_a_report_take_the_last_and_the_answer_says_which(gateway):
    gw = gateway()
    hit = gw.hit("a", "dup: reset password steps")
    rid = hit.headers["x-request-id"]
    raw = ('{"request_id": "%s", "correct": true, "correct": false}' % rid).encode()
    r = gw.report("a", None, raw=raw)
    assert r.status_code == 200 and r.json()["verdict"] == "wrong"  # what was taken is echoed back
    assert json.loads(r.text)["request_id"] == rid


def test_a_flood_of_wrong_admin_keys_at_cache_invalidate_cannot_flush_the_audit_log(gateway):
    """Was broken: every wrong admin key at ``POST /admin/cache/invalidate`` wrote an audit row, unthrottled and
    open to callers with no key at all; now refusals there are throttled like the admin API's own."""
    gw = gateway()
    assert httpx.get(gw.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
    t0 = time.monotonic()
    for i in range(200):
        r = httpx.post(
            gw.url + "/admin/cache/invalidate", json={"doc_ids": ["kb-1"]}, headers={"authorization": f"Bearer x{i}"}
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_key"
    refill = (time.monotonic() - t0) / 2
    rows = [r for r in gw.app.state.keys.audit(500) if r["action"] == "cache.invalidate"]
    assert 30 <= len(rows) <= 31 + refill < 60, (len(rows), refill)
    assert any(r["action"] == "key.list" for r in gw.app.state.keys.audit(100))  # still on the first page
    ok = httpx.post(
        gw.url + "/admin/cache/invalidate", json={"doc_ids": ["kb-1"]}, headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert ok.status_code == 200
    last = [r for r in gw.app.state.keys.audit(5) if r["action"] == "cache.invalidate"][0]
    assert last["outcome"] == "ok"  # an admin's action is always audited, flood or not
