"""Client feedback against a running ``truecost serve``: a key reports only on the hits it was served.

An attacker who learns another tenant's request id (a log, a screenshot, a shared trace) and even sends that
id as its own ``x-request-id`` cannot report on, poison or probe the other tenant's hit."""

from __future__ import annotations

import httpx

from tests.security.harness import chat_body, post_chat, unique
from tests.security.sec_config import CACHE_KEYS as KEYS


def _report(g, who: str | None, body: dict) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEYS[who]}"} if who else {}
    return httpx.post(g.url + "/v1/cache/feedback", json=body, headers=headers, timeout=30)


def _semantic_hit(g, who: str, question: str) -> httpx.Response:
    first = post_chat(g, KEYS[who], chat_body("chat", question, max_tokens=20))
    assert first.status_code == 200 and first.headers["x-truecost-cache"] == "miss", first.text
    for variant in (question + " please", question.replace("How long", "how long"), question + "??"):
        r = post_chat(g, KEYS[who], chat_body("chat", variant, max_tokens=20))
        if r.headers.get("x-truecost-cache") == "hit":
            return r
    raise AssertionError("no paraphrase was a cache hit: the test cannot see a leak")


def test_another_tenant_cannot_report_on_a_hit_even_with_its_id_as_its_own_request_id(cache_gw):
    marker = unique("fb")
    victim = _semantic_hit(cache_gw, "tenant", f"How long does a refund take for order {marker}?")
    rid = victim.headers["x-request-id"]
    # the attacker sends the victim's id as its own x-request-id, on a hit of its own
    own = _semantic_hit(cache_gw, "lone-a", f"How long does a refund take for order {marker}-a?")
    tagged = post_chat(
        cache_gw,
        KEYS["lone-a"],
        chat_body("chat", f"How long does a refund take for order {marker}-a? thanks", max_tokens=20),
        headers={"x-request-id": rid},
    )
    assert tagged.status_code == 200 and tagged.headers["x-request-id"] != rid  # not trusted to set the id
    made_up = _report(cache_gw, "lone-a", {"request_id": "f" * 32, "correct": False})
    assert made_up.status_code == 404
    for who in ("lone-a", "lone-b"):
        r = _report(cache_gw, who, {"request_id": rid, "verdict": "wrong"})
        assert (r.status_code, r.json()) == (404, made_up.json()), who
    assert _report(cache_gw, None, {"request_id": rid, "correct": False}).status_code == 401
    mine = _report(cache_gw, "tenant", {"request_id": rid, "correct": False})
    assert mine.status_code == 200, mine.text
    # a fixed threshold learns nothing: the report says so rather than claim it taught the policy
    assert mine.json()["cache"] == "hit_semantic" and mine.json()["learned"] is False
    assert _report(cache_gw, "lone-a", {"request_id": own.headers["x-request-id"], "correct": False}).status_code == 200
    assert _report(cache_gw, "tenant", {"request_id": rid, "correct": False}).status_code == 404  # once
