"""Client feedback on cache hits through the real gateway: ``POST /v1/cache/feedback`` and the regenerate pattern.

The gateway runs in process, over HTTP, in front of an upstream that answers by intent, with the online
policy (static-tuned embedder, answer agreement after each miss). A warm-up of 160 requests teaches the
policy where it may answer from the cache; then a hostile client tries to report on what it was not served.
"""

import itertools
import json
import random
import re
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.mock_upstream import USAGE, ServerThread
from truecost.gateway.app import build
from truecost.gateway.config import hash_key, parse_config
from truecost.ledger import LedgerFilter

INTENTS = {
    "refund": ["how long does a refund take", "when will I get my refund", "how many days until my refund arrives"],
    "password": ["how do I reset my password", "I forgot my password how can I change it", "reset password steps"],
    "hours": ["what are your opening hours", "when is the shop open", "what time do you open"],
    "shipping": ["how much does shipping cost", "what is the delivery fee", "shipping price to Spain"],
    "cancel": ["how do I cancel my subscription", "cancel my plan", "I want to stop my subscription"],
    "card": ["my card payment was declined", "why was my card declined", "card declined at checkout"],
}
PRE, SUF = ["", "hi, ", "please ", "quick question: ", "hello, ", "excuse me, "], ["", "?", " please", " thanks", "??"]
# never in the warm-up: a probe built from these is new to the cache (a semantic hit, never an exact one)
NEW_PRE = ["hey there, ", "good morning, ", "one thing: ", "sorry to bother, ", "so, "]
NEW_SUF = [" (asking for a friend)", " - thanks in advance", ", urgent", "!"]
KEYS = {
    "a": ("sk-fb-a", {"tenant": "acme", "cost_center": "cc-a"}),
    "a2": ("sk-fb-a2", {"tenant": "acme", "cost_center": "cc-a2"}),  # the same tenant, another key
    "b": ("sk-fb-b", {"tenant": "globex", "cost_center": "cc-b"}),
    "rpm": ("sk-fb-rpm", {"tenant": "acme", "cost_center": "cc-rpm", "rpm": 3}),
    "revoked": ("sk-fb-revoked", {"tenant": "acme", "revoked": True}),
}
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def completion_reply(reply_id: str, model: str, content: str, usage: dict) -> JSONResponse:
    """An OpenAI chat completion with one assistant message (the test upstreams' answer)."""
    message = {"role": "assistant", "content": content}
    return JSONResponse(
        {
            "id": reply_id,
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
    )


def _intent_upstream() -> Starlette:
    """An OpenAI-compatible upstream whose answer is the intent's: the cache's answer check is then meaningful."""
    calls = {"n": 0}

    async def chat(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        calls["n"] += 1
        text = body["messages"][-1]["content"]
        intent = next((i for i, cores in INTENTS.items() if any(c in text for c in cores)), "other")
        return completion_reply(f"cmpl-{calls['n']}", body["model"], f"The answer about {intent}.", USAGE)

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.calls = calls
    return app


def novel(intent):
    """Probes of an intent the warm-up never sent, in a fixed order."""
    return [p + core + s for p, core, s in itertools.product(NEW_PRE, INTENTS[intent], NEW_SUF)]


class Gw:
    def __init__(self, url, app, upstream):
        self.url, self.app, self.upstream = url, app, upstream

    @property
    def cache(self):
        return self.app.state.pipeline.cache

    @property
    def calls(self):
        return self.upstream.server.config.app.state.calls["n"]

    def chat(self, key, text, user, headers=None):
        body = {"model": "support", "messages": [{"role": "user", "content": text}]}
        if user is not None:
            body["user"] = user
        auth = {"authorization": f"Bearer {KEYS[key][0]}"}
        return httpx.post(self.url + "/v1/chat/completions", json=body, headers={**auth, **(headers or {})}, timeout=30)

    def report(self, key, body, raw=None):
        headers = {"authorization": f"Bearer {KEYS[key][0]}"} if key else {}
        if raw is not None:
            headers["content-type"] = "application/json"
            return httpx.post(self.url + "/v1/cache/feedback", content=raw, headers=headers, timeout=30)
        return httpx.post(self.url + "/v1/cache/feedback", json=body, headers=headers, timeout=30)

    def semantic_hit(self, key, intent, user, skip=0):
        """The first probe of ``intent`` (after ``skip``) the cache answers: (probe, response)."""
        for text in novel(intent)[skip:]:
            r = self.chat(key, text, user)
            assert r.status_code == 200
            if r.headers["x-truecost-cache"] == "hit":
                return text, r
        raise AssertionError(f"no cache hit for {intent}: the warm-up did not teach the policy")

    def observations(self):
        """The policy's training samples (verifications)."""
        return self.cache.policy.state()["observations"]

    def reports(self):
        """Client verdicts that reached the policy."""
        state = self.cache.policy.state()
        return state["reported_wrong"] + state["reported_right"]

    def metric(self, name, **labels):
        text = httpx.get(self.url + "/metrics").text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        found = re.search(rf"^{name}{{{re.escape(want)}}} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def ledger(self, request_id):
        self.app.state.writer.flush()
        return self.app.state.store.query(LedgerFilter(request_id=request_id))


@pytest.fixture(scope="module")
def upstream():
    with ServerThread(_intent_upstream()) as up:
        yield up


@pytest.fixture
def gateway(tmp_path, upstream):
    """``gateway(feedback={...}, cache=True, warm=True)`` -> a started, warmed-up Gw; stopped at teardown."""
    started = []

    def make(feedback=None, cache=True, warm=True):
        cache_conf = {"enabled": True, "embedder": "static-tuned", "policy": "online", "target_error": 0.05}
        config = parse_config(
            {
                "ledger": str(tmp_path / f"gw{len(started)}.db"),
                "compute": "aws/c7i.xlarge",
                "upstreams": {"intents": {"base_url": upstream.url + "/v1", "timeout": 5, "max_retries": 0}},
                "models": {"support": {"candidates": [{"upstream": "intents", "model": "gpt-6-luna"}]}},
                "keys": [{"name": n, "key_sha256": hash_key(k), **extra} for n, (k, extra) in KEYS.items()],
                "cache": {**cache_conf, **({"feedback": feedback} if feedback is not None else {})} if cache else {},
                "limits": {"max_body_bytes": 20_000, "max_json_depth": 16},
            }
        )
        server = ServerThread(build(config)).__enter__()
        started.append(server)
        gw = Gw(server.url, server.server.config.app, upstream)
        if warm:
            rng = random.Random(0)
            for i in range(160):  # a new end user each time: the warm-up never looks like a regenerate
                text = rng.choice(PRE) + rng.choice(INTENTS[rng.choice(list(INTENTS))]) + rng.choice(SUF)
                assert gw.chat("a", text, f"warm-{i}").status_code == 200
            assert gw.cache.stats["hit_semantic"] > 20  # the policy answers: there are hits to report on
        return gw

    yield make
    for server in started:
        server.__exit__(None, None, None)


def _refund_hits(gw):
    """Every novel refund probe, each from its own end user: the request ids of the hits."""
    sent = [gw.chat("a", text, f"traffic-{i}") for i, text in enumerate(novel("refund"))]
    return [r.headers["x-request-id"] for r in sent if r.headers["x-truecost-cache"] == "hit"]


def _hits(gw, intent):
    """How many of nine new probes of ``intent`` the cache answers (each from its own end user)."""
    probes = [f"{p}{core}!!" for p in ("ok ", "well ", "now ") for core in INTENTS[intent]]
    return sum(gw.chat("a", t, f"probe-{j}").headers["x-truecost-cache"] == "hit" for j, t in enumerate(probes))


def test_a_wrong_report_teaches_the_policy_to_stop_answering_there(gateway):
    gw = gateway()
    probe, hit = gw.semantic_hit("a", "refund", "t1")
    rid, before = hit.headers["x-request-id"], gw.observations()
    r = gw.report("a", {"request_id": rid, "correct": False})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "accepted": True,
        "request_id": rid,
        "verdict": "wrong",
        "cache": "hit_semantic",
        "learned": True,
    }
    assert gw.cache.stats["feedback_wrong"] == 1 and gw.cache.policy.state()["reported_wrong"] == 1
    assert gw.observations() == before  # evidence about the hit's class, not a one-sided training sample
    assert gw.metric("truecost_cache_feedback_total", outcome="learned", verdict="wrong") == 1
    (row,) = [a for a in gw.app.state.keys.audit(20) if a["action"] == "cache.feedback"]
    assert (row["actor"], row["target"], row["outcome"]) == ("key:a", rid, "ok")


def test_wrong_reports_stop_the_reported_topic_and_leave_the_others_alone(gateway):
    """The same traffic on two identical gateways; then, on one of them, every refund hit is reported wrong.

    The reports count against the class of the hits they name: refund questions stop being answered from
    the cache, while opening-hours questions are answered as before (the threshold does not move: a
    client's one-sided reports never become training samples for the shared model).
    """
    quiet, told = gateway(), gateway()
    _refund_hits(quiet)
    reported = _refund_hits(told)
    tau, seen = told.cache.policy.tau, told.observations()
    for rid in reported:
        assert told.report("a", {"request_id": rid, "verdict": "wrong"}).status_code == 200
    assert len(reported) >= 25 and told.observations() == seen
    assert told.cache.policy.tau == tau == quiet.cache.policy.tau
    refund = (_hits(quiet, "refund"), _hits(told, "refund"))
    hours = (_hits(quiet, "hours"), _hits(told, "hours"))
    assert refund[0] >= 6 and refund[1] <= 1, refund
    assert hours[0] >= 6 and hours[1] >= hours[0] - 1, hours


def test_a_key_reports_only_on_its_own_hits_once_and_every_other_id_looks_the_same(gateway):
    gw = gateway()
    _, hit = gw.semantic_hit("a", "card", "t2")
    rid = hit.headers["x-request-id"]
    miss = gw.chat("a", "what is the weather like in Lisbon", "t2")
    assert miss.headers["x-truecost-cache"] == "miss"
    seen = gw.reports()
    unknown = gw.report("a", {"request_id": UNKNOWN_ID, "correct": False})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_request"
    attempts = {
        "another tenant": gw.report("b", {"request_id": rid, "correct": False}),
        "the same tenant, another key": gw.report("a2", {"request_id": rid, "verdict": "wrong"}),
        "a miss": gw.report("a", {"request_id": miss.headers["x-request-id"], "correct": False}),
    }
    for what, r in attempts.items():
        assert (r.status_code, r.json()) == (404, unknown.json()), what  # nothing tells them apart
    assert gw.reports() == seen  # none of them reached the policy
    ok = gw.report("a", {"request_id": rid, "correct": False})  # the attempts consumed nothing
    assert ok.status_code == 200 and ok.json()["learned"] and gw.reports() == seen + 1
    again = gw.report("a", {"request_id": rid, "correct": False})
    assert (again.status_code, again.json()) == (404, unknown.json())  # each hit counts once
    assert gw.reports() == seen + 1
    rows = [(a["actor"], a["outcome"]) for a in gw.app.state.keys.audit(50) if a["action"] == "cache.feedback"]
    assert ("key:b", "refused:unknown_request") in rows and ("key:a2", "refused:unknown_request") in rows
    assert rows.count(("key:a", "ok")) == 1
    assert gw.metric("truecost_cache_feedback_total", outcome="unknown_request", verdict="wrong") == 5


def test_an_exact_hit_is_accepted_but_teaches_the_policy_nothing(gateway):
    gw = gateway()
    text = "write a haiku about the zebra in the marmalade jar"
    first = gw.chat("a", text, "t3")
    assert first.headers["x-truecost-cache"] == "miss"  # a new question: answered upstream, stored
    second = gw.chat("a", text, "t3-other-user")  # the same request again: the exact tier
    assert second.headers["x-truecost-cache"] == "hit"
    seen = gw.reports()
    r = gw.report("a", {"request_id": second.headers["x-request-id"], "verdict": "wrong"})
    assert r.status_code == 200 and r.json()["cache"] == "hit_exact" and r.json()["learned"] is False
    assert gw.reports() == seen
    assert gw.metric("truecost_cache_feedback_total", outcome="recorded", verdict="wrong") == 1


def test_right_reports_are_accepted_but_do_not_teach_the_policy_unless_allowed(gateway):
    default = gateway()
    _, hit = default.semantic_hit("a", "shipping", "t4")
    seen = default.reports()
    r = default.report("a", {"request_id": hit.headers["x-request-id"], "verdict": "right"})
    assert r.status_code == 200 and r.json()["verdict"] == "right" and r.json()["learned"] is False
    assert default.reports() == seen and default.cache.stats["feedback_right"] == 1
    assert default.metric("truecost_cache_feedback_total", outcome="recorded", verdict="right") == 1
    trusting = gateway(feedback={"accept_right": True})
    _, hit = trusting.semantic_hit("a", "shipping", "t4")
    seen = trusting.reports()
    r = trusting.report("a", {"request_id": hit.headers["x-request-id"], "correct": True})
    assert r.status_code == 200 and r.json()["learned"] is True and trusting.reports() == seen + 1


def test_asking_again_within_the_window_is_answered_upstream_and_counts_the_hit_wrong_once(gateway):
    gw = gateway(feedback={"regenerate_window_seconds": 30})
    probe, hit = gw.semantic_hit("a", "password", "t5")
    rid, seen, calls = hit.headers["x-request-id"], gw.reports(), gw.calls
    again = gw.chat("a", probe, "t5")
    assert again.status_code == 200 and again.headers["x-truecost-cache"] == "regenerate"
    assert gw.calls == calls + 1 and again.json()["id"].startswith("cmpl-")  # from the upstream, not the cache
    assert gw.reports() == seen + 1  # the earlier hit, learned as wrong
    assert gw.metric("truecost_cache_regenerations_total", via="repeat") == 1
    steps = {e.step: e for e in gw.ledger(again.headers["x-request-id"])}
    assert steps["generate"].details["regenerate_of"] == rid and steps["cache_lookup"].name == "regenerate"
    assert gw.report("a", {"request_id": rid, "correct": False}).status_code == 404  # counted once already
    third = gw.chat("a", probe, "t5")  # the regenerate took the earlier hit: asking again is no second one
    assert third.headers["x-truecost-cache"] in ("hit", "miss") and gw.reports() == seen + 1
    # another end user of the same key asking the same thing is no regenerate
    assert gw.chat("a", probe, "t5-someone-else").headers["x-truecost-cache"] in ("hit", "miss")
    assert gw.reports() == seen + 1
    # skipping the cache for the very request just served is a regenerate too
    probe, hit = gw.semantic_hit("a", "cancel", "t5b")
    bypass = gw.chat("a", probe, "t5b", headers={"x-truecost-cache": "bypass"})
    assert bypass.headers["x-truecost-cache"] == "regenerate" and gw.reports() == seen + 2
    assert gw.metric("truecost_cache_regenerations_total", via="bypass") == 1
    assert gw.report("a", {"request_id": hit.headers["x-request-id"], "correct": False}).status_code == 404
    plain_bypass = gw.chat("a", probe, "t5b", headers={"x-truecost-cache": "bypass"})
    assert plain_bypass.headers["x-truecost-cache"] == "bypass" and gw.reports() == seen + 2


def test_without_an_end_user_a_repeat_is_a_regenerate_only_when_the_key_is_the_client(gateway):
    service = gateway()  # regenerate_by: user (the default): a key that names no end user may be many people
    probe, hit = service.semantic_hit("a", "card", None)
    assert service.chat("a", probe, None).headers["x-truecost-cache"] == "hit"
    assert service.cache.stats["regenerate"] == 0
    personal = gateway(feedback={"regenerate_by": "key"})
    probe, hit = personal.semantic_hit("a", "card", None)
    assert personal.chat("a", probe, None).headers["x-truecost-cache"] == "regenerate"
    assert personal.report("a", {"request_id": hit.headers["x-request-id"], "correct": False}).status_code == 404


def test_asking_again_after_the_window_is_an_ordinary_hit(gateway):
    gw = gateway(feedback={"regenerate_window_seconds": 1})
    probe, hit = gw.semantic_hit("a", "hours", "t6")
    seen = gw.reports()
    time.sleep(1.3)
    again = gw.chat("a", probe, "t6")
    assert again.headers["x-truecost-cache"] == "hit" and gw.reports() == seen
    assert gw.metric("truecost_cache_regenerations_total", via="repeat") == 0
    assert gw.report("a", {"request_id": hit.headers["x-request-id"], "correct": False}).status_code == 200


def test_with_feedback_off_a_repeat_is_a_hit_and_reports_are_refused(gateway):
    gw = gateway(feedback={"enabled": False})
    probe, hit = gw.semantic_hit("a", "refund", "t7")
    assert gw.chat("a", probe, "t7").headers["x-truecost-cache"] == "hit"
    r = gw.report("a", {"request_id": hit.headers["x-request-id"], "correct": False})
    assert r.status_code == 409 and r.json()["error"]["code"] == "feedback_disabled"


def test_malformed_reports_are_400s_that_name_the_field_and_strangers_get_401(gateway):
    gw = gateway(warm=False)
    bad = [
        ({"correct": False}, "request_id"),
        ({"request_id": 5, "correct": False}, "request_id"),
        ({"request_id": "r" * 129, "correct": False}, "request_id"),
        ({"request_id": "a b", "correct": False}, "request_id"),
        ({"request_id": "r1"}, "correct"),
        ({"request_id": "r1", "correct": "false"}, "correct"),
        ({"request_id": "r1", "correct": 0}, "correct"),
        ({"request_id": "r1", "correct": None}, "correct"),
        ({"request_id": "r1", "verdict": "maybe"}, "verdict"),
        ({"request_id": "r1", "verdict": ["wrong"]}, "verdict"),
        ({"request_id": "r1", "correct": False, "verdict": "wrong"}, "verdict"),
        ({"request_id": "r1", "correct": False, "comment": "it lied"}, "comment"),
    ]
    for body, field in bad:
        r = gw.report("a", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (body, r.text)
        assert "it lied" not in r.text
    for raw in (b"not json", b"[]", b'"x"', b'{"request_id": "\\ud800", "correct": false}', b"[" * 40 + b"]" * 40):
        r = gw.report("a", None, raw=raw)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", (raw[:20], r.text)
    big = json.dumps({"request_id": "r1", "correct": False, "pad": "x" * 30_000}).encode()
    assert gw.report("a", None, raw=big).status_code == 413
    good = {"request_id": UNKNOWN_ID, "correct": False}
    for key in (None, "revoked"):
        r = gw.report(key, good)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(gw.url + "/v1/cache/feedback", json=good, headers={"authorization": "Bearer sk-guess"})
    assert r.status_code == 401
    assert gw.report("a", good).status_code == 404
    assert httpx.get(gw.url + "/v1/cache/feedback").status_code == 405


def test_reports_pass_the_key_rate_limit_and_never_touch_the_ledger_or_budgets(gateway):
    gw = gateway(warm=False)
    gw.app.state.writer.flush()
    before = len(gw.app.state.store.query(LedgerFilter()))
    for _ in range(3):
        assert gw.report("rpm", {"request_id": UNKNOWN_ID, "correct": False}).status_code == 404
    limited = gw.report("rpm", {"request_id": UNKNOWN_ID, "correct": False})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    gw.app.state.writer.flush()
    assert len(gw.app.state.store.query(LedgerFilter())) == before  # a report is no spend of anyone's


def test_without_the_cache_there_is_nothing_to_report_on(gateway):
    gw = gateway(cache=False, warm=False)
    r = gw.report("a", {"request_id": UNKNOWN_ID, "correct": False})
    assert r.status_code == 409 and r.json()["error"]["code"] == "cache_disabled"
    assert "/v1/cache/feedback" in httpx.get(gw.url + "/openapi.json").json()["paths"]


def test_one_tenants_wrong_reports_leave_another_tenants_answers_alone(gateway):
    """Cache classes never span scopes (a class grows only from candidates of the entry's own scope), and
    reports never move the shared threshold: tenant globex reporting every one of its refund hits wrong
    stops refund answers in globex and leaves acme's exactly as on a gateway without the reports."""
    quiet, told = gateway(), gateway()
    for gw in (quiet, told):  # the same warm-up for globex (key b) as the fixture gave acme (key a)
        rng = random.Random(1)
        for i in range(160):
            text = rng.choice(PRE) + rng.choice(INTENTS[rng.choice(list(INTENTS))]) + rng.choice(SUF)
            assert gw.chat("b", text, f"warm-b-{i}").status_code == 200
    sent = [told.chat("b", text, f"b-traffic-{i}") for i, text in enumerate(novel("refund"))]
    reported = [r.headers["x-request-id"] for r in sent if r.headers["x-truecost-cache"] == "hit"]
    for i, text in enumerate(novel("refund")):  # the same traffic on the quiet gateway, unreported
        quiet.chat("b", text, f"b-traffic-{i}")
    tau = told.cache.policy.tau
    assert len(reported) >= 10
    for rid in reported:
        assert told.report("b", {"request_id": rid, "verdict": "wrong"}).status_code == 200
    assert told.cache.policy.tau == tau  # reports never move the shared threshold
    acme = (_hits(quiet, "refund"), _hits(told, "refund"))
    assert acme[0] >= 6 and acme[1] == acme[0], acme  # acme: untouched (measured: 9 and 9, after 58 reports)
    probes = [f"{p}{core}!!" for p in ("ok ", "well ", "now ") for core in INTENTS["refund"]]
    globex = [
        sum(gw.chat("b", t, f"b-probe-{j}").headers["x-truecost-cache"] == "hit" for j, t in enumerate(probes))
        for gw in (quiet, told)
    ]
    assert globex[0] >= 6 and globex[1] <= 1, globex  # globex: stopped where it reported (measured: 9 -> 0)
