"""The LiteLLM logger's mapping (kwargs as LiteLLM passes them to a CustomLogger), without litellm installed."""

from datetime import datetime, timedelta
from decimal import Decimal

from truecost.integrations.litellm import attribution_of, record_call, usage_of

USAGE = {
    "prompt_tokens": 1000,
    "completion_tokens": 200,
    "total_tokens": 1200,
    "prompt_tokens_details": {"cached_tokens": 400, "cache_creation_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 50},
}
T = datetime(2026, 11, 20, 12, 0)


def kwargs(**over):
    slo = {
        "id": "call-1",
        "trace_id": "trace-1",
        "call_type": "acompletion",
        "custom_llm_provider": "openai",
        "response_cost": 0.00123,
        "request_tags": ["faq", "beta"],
        "end_user": "",
        "metadata": {
            "user_api_key_alias": "support-key",
            "user_api_key_team_alias": "support",
            "user_api_key_team_id": "team-123",
            "user_api_key_user_id": "u-7",
            "requester_metadata": {"feature": "refunds"},
        },
    }
    out = {
        "model": "tc-chat",
        "call_type": "acompletion",
        "litellm_call_id": "call-1",
        "litellm_trace_id": "trace-1",
        "litellm_params": {"custom_llm_provider": "openai", "metadata": {"cost_center": "cc-9"}},
        "standard_logging_object": slo,
    }
    out.update(over)
    return out


def test_usage_is_read_cache_inclusive():
    t = usage_of({"usage": USAGE}).tokens
    assert (t.input, t.cached_input, t.cache_write_5m, t.output, t.reasoning) == (500, 400, 100, 150, 50)
    assert usage_of({"usage": None}) is None and usage_of({}) is None


def test_attribution_from_the_proxy_key_team_user_tags_and_request_metadata():
    a = attribution_of(kwargs(), {"environment": "prod"})
    assert a["team"] == "support" and a["user"] == "u-7" and a["cost_center"] == "cc-9"
    assert a["feature"] == "refunds" and a["environment"] == "prod"
    assert a["tags"] == {"litellm_key_alias": "support-key", "litellm_tags": "beta,faq"}
    block = attribution_of(kwargs(litellm_params={"metadata": {"truecost": {"tenant": "acme", "tags": {"x": 1}}}}), {})
    assert block["tenant"] == "acme" and block["tags"]["x"] == "1"


def test_a_call_is_a_priced_step_with_litellm_cost_kept_beside(ledger):
    tracker, store = ledger
    (e,) = record_call(tracker, kwargs(), {"model": "tc-chat", "usage": USAGE}, T, T + timedelta(milliseconds=250))
    # 500 x 1 + 400 x 0.1 + 100 x 1.25 + 150 x 4 + 50 x 4 (per 1M)
    assert e.step == "generate" and e.cost == Decimal("0.001465") and e.request_id == "trace-1"
    assert e.source == "litellm" and e.details["litellm_cost"] == "0.00123"
    assert e.latency_ms == 250.0 and e.attribution.team == "support"


def test_embeddings_failures_missing_usage_and_cache_hits(ledger):
    tracker, store = ledger
    (emb,) = record_call(
        tracker,
        kwargs(call_type="embedding", model="tc-embed"),
        {"model": "tc-embed", "usage": {"prompt_tokens": 5000, "total_tokens": 5000}},
        T,
        T,
    )
    assert emb.step == "embed" and emb.cost == Decimal("0.0001")
    (fail,) = record_call(tracker, kwargs(exception=TimeoutError("x")), None, T, T, failed=True)
    assert fail.cost is None and "TimeoutError" in fail.details["unknown_reason"]
    (none,) = record_call(tracker, kwargs(), {"model": "tc-chat"}, T, T)
    assert none.cost is None and "reported no usage" in none.details["unknown_reason"]
    (local,) = record_call(
        tracker,
        kwargs(litellm_params={"custom_llm_provider": "ollama"}, model="llama3", standard_logging_object={}),
        {"model": "llama3", "usage": USAGE},
        T,
        T,
    )
    assert local.cost is None and "self-hosted" in local.details["unknown_reason"]
    hit = kwargs()
    hit["standard_logging_object"]["cache_hit"] = True
    (cached,) = record_call(tracker, hit, {"model": "tc-chat", "usage": USAGE}, T, T)
    assert cached.step == "cache_lookup" and cached.cost == Decimal(0) and cached.details["cache_hit"] is True
