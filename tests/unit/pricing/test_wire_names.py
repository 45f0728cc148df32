"""Wire names: the model string as each API and gateway spells it resolves to the right price."""

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from truecost.clock import FixedClock
from truecost.errors import UnknownModelError
from truecost.pricing import PriceCatalog, price_tokens
from truecost.pricing.names import candidates, strip_date
from truecost.tracking import Tracker
from truecost.types import TokenUsage

AT = datetime(2026, 11, 20, tzinfo=timezone.utc)
MILLION_EACH = TokenUsage(input=1_000_000, output=1_000_000)


@pytest.fixture(scope="module")
def catalog():
    return PriceCatalog.bundled()


@pytest.mark.parametrize(
    "wire,provider,input_price",
    [
        ("claude-haiku-4-5", "anthropic", "1"),
        ("claude-haiku-4-5-20251001", "anthropic", "1"),
        ("claude-haiku-4.5", "anthropic", "1"),
        ("claude-sonnet-5-5", "anthropic", "2"),
        ("claude-opus-5-5", "anthropic", "4"),
        ("claude-fable-5-1", "anthropic", "10"),
        ("anthropic/claude-sonnet-5-5", "anthropic", "2"),
        ("azure/gpt-4o", "openai", "2.5"),  # Azure resells OpenAI's models at OpenAI's price
        ("gemini/gemini-3.8-flash", "google", "0.75"),
        ("models/gemini-3.8-flash", "google", "0.75"),
        ("vertex_ai/gemini-3.1-pro-preview", "google", "2"),
        ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "aws", "1.1"),  # Bedrock in-region: +10%
        ("bedrock/global.anthropic.claude-haiku-4-5-20251001-v1:0", "aws", "1"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "together", "0.9"),
        ("together_ai/mistralai/Mixtral-8x7B-Instruct-v0.1", "together", "0.9"),
        ("openrouter/anthropic/claude-sonnet-4.5", "openrouter", "3"),
        ("openai/gpt-4o", "openai", "2.5"),
        ("gpt-4o-mini-2024-07-18", "openai", "0.15"),
    ],
)
def test_wire_names_resolve(catalog, wire, provider, input_price):
    v = catalog.price_for(wire, AT)
    assert v is not None, wire
    assert v.resource.provider == provider
    assert v.rates["input"] == Decimal(input_price)


def test_tracker_prices_anthropic_wire_ids(catalog):
    # claude-haiku-4-5-20251001: $1 in, $5 out -> 1,000 x 1/1M + 100 x 5/1M = 0.0015
    events = []
    tracker = Tracker(catalog, events.append, clock=FixedClock(AT))
    (e,) = tracker.record(
        "generate",
        model="claude-haiku-4-5-20251001",
        usage={"input_tokens": 1_000, "output_tokens": 100},
        flavour="anthropic",
    )
    assert e.cost == Decimal("0.0015") and e.provider == "anthropic"


def test_a_dated_snapshot_gets_its_own_price(catalog):
    # gpt-4o-2024-05-13 is $5 / $15 (its own entry), not today's gpt-4o at $2.50 / $10.
    assert price_tokens(catalog.price_for("gpt-4o-2024-05-13", AT), MILLION_EACH).cost == Decimal("20")
    assert price_tokens(catalog.price_for("gpt-4o", AT), MILLION_EACH).cost == Decimal("12.5")


def test_only_real_dates_are_stripped(catalog):
    assert strip_date("gpt-4o-2024-05-13") == "gpt-4o"
    assert strip_date("claude-haiku-4-5-20251001") == "claude-haiku-4-5"
    assert strip_date("gpt-3.5-turbo-0613") is None  # four digits are not a date
    assert strip_date("model-2024-13-45") is None  # not a real date
    assert catalog.resolve("gpt-6.2-sol-2026-11-17").resource.name == "gpt-6.2-sol"
    with pytest.raises(UnknownModelError):
        catalog.resolve("gpt-6.2-sol-1234")


def test_an_ambiguous_name_lists_its_candidates(catalog):
    # Several hosts sell GLM-5.2 at their own prices: no silent pick; provider/name settles it.
    with pytest.raises(UnknownModelError, match="ambiguous") as info:
        catalog.resolve("zai-org/glm-5.2")
    assert "chat:together/zai-org/GLM-5.2" in str(info.value) and "chat:novita/zai-org/glm-5.2" in str(info.value)
    assert catalog.resolve("together_ai/zai-org/GLM-5.2").resource.provider == "together"


def test_candidates_try_the_dated_name_before_the_family():
    names = [n for _, n in candidates("bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0")]
    assert names.index("claude-haiku-4-5-20251001") < names.index("claude-haiku-4-5")
