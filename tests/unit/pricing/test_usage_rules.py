"""Golden tests for the usage rules of issue #16: every figure is worked out by hand beside it,
from the provider's own published prices (as carried by the catalog's layers)."""

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from truecost.clock import FixedClock
from truecost.pricing import (
    MAX_TOKENS_PER_CALL,
    CallUsage,
    MissingUsageError,
    PriceCatalog,
    normalise,
    normalise_call,
    price_tokens,
)
from truecost.pricing.usage import anthropic_call, google_call, openai_call
from truecost.tracking import Tracker
from truecost.types import TokenUsage

AT = datetime(2026, 11, 20, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def catalog():
    return PriceCatalog.bundled()


def cost(catalog, model, usage, at=AT, **kw):
    return price_tokens(catalog.price_for(model, at), usage, **kw)


# -- OpenAI cache writes, audio, long context -------------------------------------------------
def test_openai_cache_writes_are_billed_at_the_write_price(catalog):
    # gpt-6-luna: $0.10 in, $0.01 cached, $0.125 cache write, $0.50 out (developers.openai.com).
    # prompt 10,000 = 4,000 plain + 2,000 cached + 4,000 written.
    # 4,000 x 0.10/1M = 0.0004; 2,000 x 0.01/1M = 0.00002; 4,000 x 0.125/1M = 0.0005;
    # 1,000 x 0.50/1M = 0.0005 -> 0.00142 (billing the writes as plain input would give 0.00122)
    call = openai_call(
        {
            "prompt_tokens": 10_000,
            "completion_tokens": 1_000,
            "prompt_tokens_details": {"cached_tokens": 2_000, "cache_write_tokens": 4_000},
        }
    )
    assert (call.tokens.input, call.tokens.cached_input, call.tokens.cache_write_5m) == (4_000, 2_000, 4_000)
    assert cost(catalog, "gpt-6-luna", call).cost == Decimal("0.00142")


def test_responses_api_cache_writes_too(catalog):
    # gpt-6.2-sol: write $2.50. input_tokens 5,000 of which 5,000 written: 5,000 x 2.50/1M = 0.0125
    call = openai_call(
        {
            "input_tokens": 5_000,
            "output_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 5_000},
        }
    )
    assert cost(catalog, "gpt-6.2-sol", call).cost == Decimal("0.0125")


def test_openai_audio_tokens_are_priced_as_audio(catalog):
    # gpt-audio: text $2.50 in / $10 out, audio $32 in / $64 out.
    # prompt 1,000 incl. 600 audio; completion 500 incl. 300 audio:
    # 400 x 2.5/1M = 0.001; 600 x 32/1M = 0.0192; 200 x 10/1M = 0.002; 300 x 64/1M = 0.0192 -> 0.0414
    call = openai_call(
        {
            "prompt_tokens": 1_000,
            "completion_tokens": 500,
            "prompt_tokens_details": {"audio_tokens": 600},
            "completion_tokens_details": {"audio_tokens": 300},
        }
    )
    assert cost(catalog, "gpt-audio", call).cost == Decimal("0.0414")


def test_audio_tokens_on_a_model_without_an_audio_price_are_unknown_not_text(catalog):
    call = openai_call(
        {"prompt_tokens": 1_000, "completion_tokens": 10, "prompt_tokens_details": {"audio_tokens": 600}}
    )
    priced = cost(catalog, "gpt-6.2-sol", call)
    assert priced.cost is None and "input_audio" in priced.unknown_reason


@pytest.mark.parametrize(
    "model,expected",
    [
        # > 272,000 prompt tokens: input and cache rates double, output 1.5x, for the whole request.
        # gpt-6.2-sol: 300,000 x 4/1M = 1.2; 1,000 x 15/1M = 0.015 -> 1.215 (at 272,000: 0.544 + 0.01)
        ("gpt-6.2-sol", Decimal("1.215")),
        # gpt-6.1-terra ($1 / $5 -> $2 / $7.50): 300,000 x 2/1M = 0.6; 1,000 x 7.5/1M = 0.0075 -> 0.6075
        ("gpt-6.1-terra", Decimal("0.6075")),
        # gpt-6-luna ($0.10 / $0.50 -> $0.20 / $0.75): 0.06 + 0.00075 -> 0.06075
        ("gpt-6-luna", Decimal("0.06075")),
    ],
)
def test_long_context_tiers_of_the_gpt_6_family(catalog, model, expected):
    over = cost(catalog, model, openai_call({"prompt_tokens": 300_000, "completion_tokens": 1_000}))
    assert over.cost == expected
    at = cost(catalog, model, openai_call({"prompt_tokens": 272_000, "completion_tokens": 1_000}))
    assert at.cost < expected / 2  # exactly at the threshold: the short-context rates


def test_batch_above_the_long_context_threshold(catalog):
    # gpt-6-luna batch > 272K: input $0.10, output $0.375 -> 1M x 0.10/1M + 1M x 0.375/1M = 0.475
    usage = openai_call({"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000})
    assert cost(catalog, "gpt-6-luna", usage, batch=True).cost == Decimal("0.475")


def test_cache_prices_are_read_not_derived(catalog):
    # gpt-6.1-terra cached input is $0.05 (5% of input, as listed), not 0.1x = $0.10;
    # claude-fable-5.1 cache reads are $0.25 (0.025x), not $1.00.
    # 200,000 cached (under the 272K tier): 200,000 x 0.05/1M = 0.01; 200,000 x 0.25/1M = 0.05
    cached = TokenUsage(cached_input=200_000)
    assert cost(catalog, "gpt-6.1-terra", cached).cost == Decimal("0.01")
    assert cost(catalog, "claude-fable-5-1", cached).cost == Decimal("0.05")


def test_a_price_starts_at_the_model_release(catalog):
    # gpt-6.1-terra was released 2026-10-26: no price before.
    assert catalog.price_for("gpt-6.1-terra", datetime(2026, 10, 1, tzinfo=timezone.utc)) is None
    assert catalog.price_for("gpt-6.1-terra", datetime(2026, 10, 26, tzinfo=timezone.utc)) is not None


# -- batch per provider -----------------------------------------------------------------------
def test_batch_keeps_google_cache_reads_at_the_standard_price(catalog):
    # gemini-3.1-pro-preview batch: input $1, output $6; cached input has no batch rate: $0.20.
    # prompt 10,000 incl. 4,000 cached: 6,000 x 1/1M = 0.006; 4,000 x 0.20/1M = 0.0008;
    # 1,000 x 6/1M = 0.006 -> 0.0128 (halving the cache reads too would give 0.0124)
    usage = google_call({"promptTokenCount": 10_000, "cachedContentTokenCount": 4_000, "candidatesTokenCount": 1_000})
    assert cost(catalog, "gemini-3.1-pro-preview", usage, batch=True).cost == Decimal("0.0128")


def test_batch_halves_anthropic_cache_reads(catalog):
    # claude-sonnet-5-5 batch: cache read $0.05 (half of $0.10): 1M x 0.05/1M = 0.05
    assert cost(catalog, "claude-sonnet-5-5", TokenUsage(cached_input=1_000_000), batch=True).cost == Decimal("0.05")


def test_batch_without_a_batch_price_is_unknown(catalog):
    priced = cost(
        catalog, "gpt-4-1106-preview", TokenUsage(input=10), at=datetime(2024, 1, 1, tzinfo=timezone.utc), batch=True
    )
    assert priced.cost is None and "batch" in priced.unknown_reason


# -- fees: web search, tool prompts -----------------------------------------------------------
def test_anthropic_web_search_requests_are_priced(catalog):
    # claude-sonnet-5-5: $10 per 1,000 searches. 3 searches = 0.03; 1,000 in x 2/1M = 0.002;
    # 100 out x 10/1M = 0.001 -> 0.033
    call = anthropic_call({"input_tokens": 1_000, "output_tokens": 100, "server_tool_use": {"web_search_requests": 3}})
    assert call.extra == {"web_search": 3}
    assert cost(catalog, "claude-sonnet-5-5", call).cost == Decimal("0.033")


def test_gemini_tool_use_prompt_tokens_are_billed_as_input(catalog):
    # gemini-3.5-flash-lite: $0.30 in, $2.50 out. prompt 1,000 + tool-use prompt 2,000 = 3,000 in:
    # 3,000 x 0.30/1M = 0.0009; 100 x 2.50/1M = 0.00025 -> 0.00115
    call = google_call({"promptTokenCount": 1_000, "toolUsePromptTokenCount": 2_000, "candidatesTokenCount": 100})
    assert call.tokens.input == 3_000
    assert cost(catalog, "gemini-3.5-flash-lite", call).cost == Decimal("0.00115")


# -- service tiers, fast mode, regional uplift --------------------------------------------------
def test_service_tiers_are_priced_attributes(catalog):
    # gpt-5.4-mini: standard $0.75 in; flex $0.375; priority $1.50 (developers.openai.com pricing).
    million_in = TokenUsage(input=1_000_000)
    assert cost(catalog, "gpt-5.4-mini", million_in).cost == Decimal("0.75")
    assert cost(catalog, "gpt-5.4-mini", million_in, attributes={"service_tier": "flex"}).cost == Decimal("0.375")
    assert cost(catalog, "gpt-5.4-mini", million_in, attributes={"service_tier": "priority"}).cost == Decimal("1.5")
    assert cost(catalog, "gpt-5.4-mini", million_in, attributes={"service_tier": "default"}).cost == Decimal("0.75")


def test_service_tier_read_from_the_response(catalog):
    # OpenAI reports service_tier at the top of the response: gpt-5-nano flex $0.025 in -> 0.025
    call = normalise_call(
        {"prompt_tokens": 1_000_000, "completion_tokens": 0}, "openai", response={"service_tier": "flex", "usage": {}}
    )
    assert call.attributes == {"service_tier": "flex"}
    assert cost(catalog, "gpt-5-nano", call).cost == Decimal("0.025")


def test_a_tier_the_model_does_not_price_is_unknown(catalog):
    priced = cost(
        catalog,
        "claude-haiku-4-5",
        anthropic_call({"input_tokens": 10, "output_tokens": 1, "service_tier": "priority"}),
    )
    assert priced.cost is None and "service_tier=priority" in priced.unknown_reason


def test_anthropic_fast_mode(catalog):
    # claude-fable-5-2 fast mode: $16 in / $80 out -> 1M in = 16
    call = anthropic_call({"input_tokens": 1_000_000, "output_tokens": 0, "speed": "fast"})
    assert cost(catalog, "claude-fable-5-2", call).cost == Decimal("16")


def test_regional_processing_uplift(catalog):
    # gpt-6.2-sol regional processing +10%: 100,000 in x 2.20/1M = 0.22
    assert cost(catalog, "gpt-6.2-sol", TokenUsage(input=100_000), attributes={"region": "regional"}).cost == Decimal(
        "0.22"
    )


# -- missing usage, absurd quantities ------------------------------------------------------------
@pytest.mark.parametrize("usage", [None, {}])
@pytest.mark.parametrize("flavour", ["openai", "anthropic", "google"])
def test_missing_usage_is_not_zero_usage(usage, flavour):
    with pytest.raises(MissingUsageError):
        normalise(usage, flavour)


def test_tracker_records_missing_usage_as_unknown(catalog):
    events = []
    tracker = Tracker(catalog, events.append, clock=FixedClock(AT))
    (event,) = tracker.record("generate", model="gpt-6-luna", usage=None)
    assert event.cost is None
    assert "no usage" in event.details["unknown_reason"]


def test_absurd_quantities_are_not_priced(catalog):
    priced = cost(catalog, "gpt-6-luna", TokenUsage(input=10**15))
    assert priced.cost is None and "implausible" in priced.unknown_reason
    assert cost(catalog, "gpt-6-luna", TokenUsage(input=MAX_TOKENS_PER_CALL)).cost is not None
    priced = cost(catalog, "claude-sonnet-5-5", CallUsage(TokenUsage(input=1), {"web_search": 10**9}))
    assert priced.cost is None and "implausible" in priced.unknown_reason


# -- rules.yaml: provider-wide variants, rate supplements, options not offered, regional uplifts ----------
def test_gemini_priority_is_priced(catalog):
    # gemini-2.5-flash: $0.30 in; Priority 1.8x -> 1M in = 0.54
    assert cost(
        catalog, "gemini-2.5-flash", TokenUsage(input=1_000_000), attributes={"service_tier": "priority"}
    ).cost == Decimal("0.54")


def test_claude_on_vertex_batch_is_half_of_every_class(catalog):
    # google/claude-opus-5-5: $4 in, $0.20 cache read; batch halves both: 1M in = 2; 1M cached = 0.10
    assert cost(catalog, "google/claude-opus-5-5", TokenUsage(input=1_000_000), batch=True).cost == Decimal("2")
    assert cost(catalog, "google/claude-opus-5-5", TokenUsage(cached_input=1_000_000), batch=True).cost == Decimal(
        "0.1"
    )


def test_legacy_completion_models_have_batch_prices(catalog):
    # babbage-002 $0.40 / $0.40, Batch $0.20 / $0.20: 1M in + 1M out = 0.40
    assert cost(catalog, "babbage-002", TokenUsage(input=1_000_000, output=1_000_000), batch=True).cost == Decimal(
        "0.4"
    )


def test_audio_input_price_supplied_where_the_source_lacks_it(catalog):
    # gemini-2.0-flash-lite: $0.075 per 1M for text and audio alike: 1M prompt incl. 400k audio = 0.075
    call = google_call(
        {
            "promptTokenCount": 1_000_000,
            "candidatesTokenCount": 0,
            "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 400_000}],
        }
    )
    priced = cost(catalog, "gemini-2.0-flash-lite", call)
    assert priced.cost == Decimal("0.075")
    assert (
        catalog.price_for("gemini-2.0-flash-lite", AT)
        .attributes["rate_sources"]["input_audio"]
        .startswith("ai.google.dev")
    )


def test_an_option_the_provider_does_not_offer_is_unknown_with_its_reason(catalog):
    priced = cost(catalog, "gpt-4o-search-preview", TokenUsage(input=10), batch=True)
    assert priced.cost is None and "not offered with processing=batch" in priced.unknown_reason


@pytest.mark.parametrize(
    "model,attrs,expected",
    [
        ("google/claude-opus-5-5", {"region": "regional"}, "4.4"),  # Vertex regional endpoint +10% on $4
        ("claude-opus-5-5", {"inference_geo": "us"}, "4.4"),  # Anthropic US-only inference 1.1x
        ("gpt-6-luna", {"region": "regional"}, "0.22"),  # OpenAI regional processing +10% on $0.20
    ],
)
def test_regional_uplifts(catalog, model, attrs, expected):
    assert cost(catalog, model, TokenUsage(input=1_000_000), attributes=attrs).cost == Decimal(expected)


def test_inference_geo_read_from_anthropic_usage(catalog):
    call = anthropic_call({"input_tokens": 1_000_000, "output_tokens": 0, "inference_geo": "us"})
    assert call.attributes == {"inference_geo": "us"}
    assert cost(catalog, "claude-opus-5-5", call).cost == Decimal("4.4")
    # a model that predates the parameter has no US-only price: unknown, not the global price
    assert (
        cost(
            catalog, "claude-haiku-4-5", anthropic_call({"input_tokens": 10, "output_tokens": 0, "inference_geo": "us"})
        ).cost
        is None
    )


@pytest.mark.parametrize(
    "rule",
    [
        {"provider": "google", "models": ["x"], "source": "s"},  # says nothing
        {"provider": "google", "models": ["x"], "when": {"a": "b"}, "source": "s"},  # no multiplier
        {"provider": "google", "models": ["x"], "rates": {"input": "1"}, "unavailable": {"a": "b"}, "source": "s"},
        {"provider": "google", "models": ["x"], "rates": {"input": "1"}},  # no source
    ],
)
def test_an_incomplete_price_rule_is_refused(rule):
    from truecost.pricing.catalog import _rule

    with pytest.raises(ValueError, match="rules.yaml"):
        _rule(rule)
