"""Golden costs: every figure here is worked out by hand in the comment beside it."""

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from truecost.errors import InvalidQuantityError
from truecost.pricing import PriceCatalog, from_anthropic, from_google, from_openai, price_tokens

AT = datetime(2026, 11, 20, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def catalog():
    return PriceCatalog.bundled()


def cost(catalog, model, usage, at=AT, **kw):
    return price_tokens(catalog.price_for(model, at), usage, **kw)


def test_openai_prompt_tokens_include_cached_tokens(catalog):
    # gpt-6.2-sol: $2 in, $10 out, $0.10 cached per 1M.
    # prompt 10,000 of which 8,000 cached -> 2,000 uncached.
    # 2,000 x 2/1M = 0.004; 8,000 x 0.10/1M = 0.0008; 500 x 10/1M = 0.005 -> 0.0098
    usage = from_openai(
        {"prompt_tokens": 10_000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 8_000}}
    )
    assert (usage.input, usage.cached_input, usage.output) == (2_000, 8_000, 500)
    assert cost(catalog, "gpt-6.2-sol", usage).cost == Decimal("0.0098")


def test_openai_reasoning_tokens_sit_inside_completion_tokens(catalog):
    # gpt-6-luna: $0.10 in, $0.50 out. completion 3,000 of which 2,000 reasoning,
    # priced as output: 1,000 x 0.10/1M = 0.0001; 3,000 x 0.50/1M = 0.0015 -> 0.0016
    usage = from_openai(
        {"prompt_tokens": 1_000, "completion_tokens": 3_000, "completion_tokens_details": {"reasoning_tokens": 2_000}}
    )
    assert (usage.output, usage.reasoning) == (1_000, 2_000)
    assert cost(catalog, "gpt-6-luna", usage).cost == Decimal("0.0016")


def test_anthropic_input_tokens_exclude_cache_reads_and_writes(catalog):
    # claude-sonnet-5.5 on 2026-11-20: $2 in, $10 out, cache read $0.10, 5m write $2.50, 1h write $4.
    # input 1,000 -> 0.002; cache read 20,000 -> 0.002; 5m write 4,000 -> 0.01;
    # 1h write 1,000 -> 0.004; output 800 -> 0.008. Total 0.026
    usage = from_anthropic(
        {
            "input_tokens": 1_000,
            "cache_read_input_tokens": 20_000,
            "cache_creation_input_tokens": 5_000,
            "cache_creation": {"ephemeral_5m_input_tokens": 4_000, "ephemeral_1h_input_tokens": 1_000},
            "output_tokens": 800,
        }
    )
    assert usage.prompt_total == 26_000
    assert cost(catalog, "claude-sonnet-5.5", usage).cost == Decimal("0.026")


def test_anthropic_cache_read_price_changed_on_2026_10_07(catalog):
    # Same usage before the cut: cache read $0.20 -> 20,000 x 0.20/1M = 0.004 instead of 0.002.
    usage = from_anthropic({"input_tokens": 0, "cache_read_input_tokens": 20_000, "output_tokens": 0})
    before = cost(catalog, "claude-sonnet-5.5", usage, at=datetime(2026, 10, 6, 23, 59, tzinfo=timezone.utc))
    after = cost(catalog, "claude-sonnet-5.5", usage, at=datetime(2026, 10, 7, tzinfo=timezone.utc))
    assert (before.cost, after.cost) == (Decimal("0.004"), Decimal("0.002"))


def test_anthropic_creation_without_breakdown_is_a_5_minute_write(catalog):
    # claude-haiku-5.5: 5m write $0.125. 8,000 x 0.125/1M = 0.001
    usage = from_anthropic({"input_tokens": 0, "cache_creation_input_tokens": 8_000, "output_tokens": 0})
    assert usage.cache_write_5m == 8_000
    assert cost(catalog, "claude-haiku-5.5", usage).cost == Decimal("0.001")


def test_long_context_tier_switches_the_price_of_the_whole_request(catalog):
    # claude-haiku-5.5 over 100k prompt tokens: $0.50 in, $2.50 out for ALL tokens.
    # 120,000 x 0.50/1M = 0.06; 1,000 x 2.50/1M = 0.0025 -> 0.0625
    # Just under the threshold at $0.10 / $0.50: 100,000 x 0.10/1M = 0.01; + 0.0005 -> 0.0105
    over = cost(catalog, "claude-haiku-5.5", from_anthropic({"input_tokens": 120_000, "output_tokens": 1_000}))
    under = cost(catalog, "claude-haiku-5.5", from_anthropic({"input_tokens": 100_000, "output_tokens": 1_000}))
    assert over.cost == Decimal("0.0625")
    assert under.cost == Decimal("0.0105")


def test_long_context_threshold_counts_cached_prompt_tokens(catalog):
    # gpt-6.2-astra: > 272,000 prompt tokens -> $16 in, $60 out, $0.80 cached.
    # 300,000 prompt incl. 200,000 cached: 100,000 x 16/1M = 1.6; 200,000 x 0.80/1M = 0.16;
    # 1,000 x 60/1M = 0.06 -> 1.82
    usage = from_openai(
        {"prompt_tokens": 300_000, "completion_tokens": 1_000, "prompt_tokens_details": {"cached_tokens": 200_000}}
    )
    assert cost(catalog, "gpt-6.2-astra", usage).cost == Decimal("1.82")


def test_google_thoughts_are_billed_as_output(catalog):
    # gemini-3.5-flash-lite: $0.30 in, $2.50 out, cached $0.03.
    # prompt 5,000 incl. 1,000 cached: 4,000 x 0.30/1M = 0.0012; 1,000 x 0.03/1M = 0.00003;
    # candidates 200 + thoughts 800 = 1,000 x 2.50/1M = 0.0025 -> 0.00373
    usage = from_google(
        {
            "promptTokenCount": 5_000,
            "cachedContentTokenCount": 1_000,
            "candidatesTokenCount": 200,
            "thoughtsTokenCount": 800,
        }
    )
    assert cost(catalog, "gemini-3.5-flash-lite", usage).cost == Decimal("0.00373")


def test_dated_price_switch_for_gemini_flash(catalog):
    # gemini-3.8-flash: $0.75 in until 2026-12-31, $1.50 from 2027-01-01. 1M input tokens.
    usage = from_google({"promptTokenCount": 1_000_000})
    assert cost(catalog, "gemini-3.8-flash", usage).cost == Decimal("0.75")
    assert cost(catalog, "gemini-3.8-flash", usage, at=datetime(2027, 1, 1, tzinfo=timezone.utc)).cost == Decimal("1.5")


def test_batch_multiplier_halves_the_price(catalog):
    # gpt-6-luna batch (half of $0.10 / $0.50): 200,000 in x 0.05/1M = 0.01; 200,000 out x 0.25/1M = 0.05
    # -> 0.06. (This test used 1M prompt tokens before gpt-6-luna had its > 272K tier; such a
    # prompt is long-context: 1M x 0.10/1M + 1M x 0.375/1M = 0.475, pinned in test_usage_rules.)
    usage = from_openai({"prompt_tokens": 200_000, "completion_tokens": 200_000})
    assert cost(catalog, "gpt-6-luna", usage, batch=True).cost == Decimal("0.06")


def test_historical_routing_model_matches_routerbench_cost(catalog):
    # RouterBench charged gpt-4-1106-preview $10 / $30 per 1M: 120 in, 210 out ->
    # 0.0012 + 0.0063 = 0.0075
    usage = from_openai({"prompt_tokens": 120, "completion_tokens": 210})
    assert cost(catalog, "gpt-4-1106-preview", usage, at=datetime(2024, 1, 1, tzinfo=timezone.utc)).cost == Decimal(
        "0.0075"
    )


def test_missing_cached_price_gives_none_not_zero(tmp_path):
    # a model whose price file lists no cached-input price and does not say "no discount": unknown, never input or 0
    f = tmp_path / "p.yaml"
    f.write_text(
        "provider: acme\nkind: chat\nunit: 1M tokens\nentries:\n  - name: acme-1\n    versions:\n"
        "      - {effective_from: 2024-01-01, source: test, rates: {input: '1', output: '2'}}\n"
    )
    catalog = PriceCatalog.load(f)
    usage = from_openai({"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}})
    priced = cost(catalog, "acme-1", usage)
    assert priced.cost is None
    assert "cached_input" in priced.unknown_reason


def test_cached_tokens_on_a_model_that_predates_caching_are_billed_as_input(catalog):
    # gpt-4-1106-preview has no caching discount: OpenAI bills all 100 prompt tokens at $10/1M
    # (50 of them reported as cached) and 10 output at $30/1M: 0.001 + 0.0003 = 0.0013
    usage = from_openai({"prompt_tokens": 100, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}})
    priced = cost(catalog, "gpt-4-1106-preview", usage)
    assert priced.cost == Decimal("0.0013")
    (cached,) = [ln for ln in priced.lines if ln.component == "cached_input"]
    assert "billed as input" in cached.note


def test_price_before_a_model_existed_is_none(catalog):
    assert catalog.price_for("gpt-6-luna", datetime(2020, 1, 1, tzinfo=timezone.utc)) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_tokens": -1},
        {"prompt_tokens": 1.5},
        {"prompt_tokens": "10"},
        {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 6}},
    ],
)
def test_bad_openai_usage_is_refused(bad):
    with pytest.raises(InvalidQuantityError):
        from_openai(bad)


def test_inconsistent_anthropic_cache_breakdown_is_refused():
    with pytest.raises(InvalidQuantityError):
        from_anthropic(
            {
                "input_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 3},
            }
        )
