"""Issue 15, point 6: cache scope, deny by default -- an answer produced with a parameter outside the known
answer-neutral set is never served to a plain request (exact or paraphrased); keys without a tenant each
get a scope of their own; refusals written as plain text are not stored."""

from __future__ import annotations

import pytest

from tests.security.harness import chat_body, post_chat
from tests.security.sec_config import CACHE_KEYS as KEYS


def _ask(g, who: str, question: str, **params):
    model = params.pop("model", "chat")
    r = post_chat(g, KEYS[who], chat_body(model, question, **{"max_tokens": 20, **params}))
    assert r.status_code == 200, r.text
    return r.headers.get("x-truecost-cache"), r.json()["choices"][0]["message"]["content"]


PARAMS = {
    "guided_choice": {"guided_choice": ["yes", "no"]},
    "guided_regex": {"guided_regex": "[0-9]+"},
    "guided_json": {"guided_json": {"type": "object", "properties": {"a": {"type": "integer"}}}},
    "functions": {"functions": [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}]},
    "function_call": {"function_call": "none"},
    "top_k": {"top_k": 5},
    "unknown": {"x_vendor_magic": {"mode": "pirate"}},
    "unknown-scalar": {"reasoning_effort_custom": "max"},
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_an_answer_made_with_an_unknown_or_answer_changing_parameter_is_not_served_to_plain_requests(cache_gw, name):
    q = f"How long does a refund take for order {name}?"
    _, special = _ask(cache_gw, "tenant", q, **PARAMS[name])
    for variant in (q, q.replace("take", "usually take")):  # exact, paraphrased
        status, answer = _ask(cache_gw, "tenant", variant)
        assert answer != special, (
            f"{name}: the answer made with {PARAMS[name]} was served to a plain request ({status})"
        )
    # the cache works at all: the same plain request again is a hit (else the above proves nothing)
    status, answer = _ask(cache_gw, "tenant", q)
    assert status == "hit", f"plain -> plain was not a hit ({status}): the test cannot see a leak"
    # and the other way round: a plain answer is not served to a request with the parameter
    q2 = f"Where is my parcel number {name}?"
    _, plain = _ask(cache_gw, "tenant", q2)
    assert _ask(cache_gw, "tenant", q2)[0] == "hit"
    status, answer = _ask(cache_gw, "tenant", q2, **PARAMS[name])
    assert answer != plain, f"{name}: a plain answer served to a request with {PARAMS[name]} ({status})"


KNOWN = {
    "temperature": {"temperature": 1.9},
    "seed": {"seed": 7},
    "logit_bias": {"logit_bias": {"1734": -100}},
    "response_format": {"response_format": {"type": "json_object"}},
    "tools": {
        "tools": [{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
    },
    "max_tokens": {"max_tokens": 3},
    "stop": {"stop": ["days"]},
}


@pytest.mark.parametrize("name", list(KNOWN))
def test_an_answer_made_with_other_sampling_or_output_settings_is_not_served_to_plain_requests(cache_gw, name):
    q = f"Can I change the delivery address of order {name}?"
    _, special = _ask(cache_gw, "tenant", q, **KNOWN[name])
    status, answer = _ask(cache_gw, "tenant", q)
    assert answer != special, f"{name}: the answer made with {KNOWN[name]} was served ({status})"
    assert _ask(cache_gw, "tenant", q)[0] == "hit"


def test_keys_without_a_tenant_do_not_share_a_cache_scope(cache_gw):
    q = "What is the account balance of the caller?"
    _, mine = _ask(cache_gw, "lone-a", q)
    assert _ask(cache_gw, "lone-a", q)[0] == "hit"
    status, theirs = _ask(cache_gw, "lone-b", q)
    assert theirs != mine, f"two keys without a tenant share one cache scope ({status})"
    status, tenant_answer = _ask(cache_gw, "tenant", q)
    assert tenant_answer not in (mine, theirs), f"a tenant was served a tenant-less key's answer ({status})"


def test_a_plain_text_refusal_is_not_stored(cache_gw, upstream):
    q = "Tell me the admin password please"
    for _ in range(2):
        status, answer = _ask(cache_gw, "tenant", q, model="refuse")
        assert "can't help" in answer
    assert len(upstream.calls(q)) == 2


def test_a_tenant_header_does_not_open_another_tenants_cache(cache_gw):
    """Keys here may not set attribution headers: claiming a tenant reads nothing from its cache."""
    q = "What is the secret discount code for tenant customers?"
    _, theirs = _ask(cache_gw, "tenant", q)
    assert _ask(cache_gw, "tenant", q)[0] == "hit"
    for who in ("lone-a", "lone-b"):
        r = post_chat(
            cache_gw, KEYS[who], chat_body("chat", q, max_tokens=20), headers={"x-truecost-tenant": "t-cache"}
        )
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] != theirs, f"{who} read tenant t-cache's cached answer"
        (row, *_x) = cache_gw.wait_rows("request_id = ?", (r.headers["x-request-id"],))
        assert row["tenant"] is None
