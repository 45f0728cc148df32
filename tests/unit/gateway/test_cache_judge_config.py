"""`cache.judge`: validated at start-up, and `judge` in `cache.equivalence` only with it."""

from decimal import Decimal

import pytest

from truecost.errors import ConfigError
from truecost.gateway.config import JudgeConfig, parse_config


def _doc(cache):
    return {
        "upstreams": {"oa": {"base_url": "http://127.0.0.1:9/v1"}, "local": {"base_url": "http://127.0.0.1:8/v1"}},
        "models": {
            "chat": {"candidates": [{"upstream": "oa", "model": "gpt-5-nano"}]},
            "small": {"candidates": [{"upstream": "local", "model": "smollm2-135m-instruct"}]},
        },
        "cache": {"enabled": True, **cache},
    }


def test_a_judge_block_with_defaults_and_its_name_in_the_spec():
    c = parse_config(_doc({"equivalence": "judge+query", "judge": {"upstream": "oa", "model": "gpt-5-nano"}})).cache
    assert c.judge == JudgeConfig("oa", "gpt-5-nano", 60, Decimal("1.00"), 10.0, 4, 0.95, 0.05)
    set_all = {
        "upstream": "local",
        "model": "smollm2-135m-instruct",
        "requests_per_hour": 5,
        "dollars_per_day": None,
        "timeout": 2.5,
        "max_tokens": 16,
        "p_yes": 0.8,
        "p_no": 0.3,
    }
    c = parse_config(_doc({"equivalence": "normalised+judge", "judge": set_all})).cache
    assert c.judge == JudgeConfig("local", "smollm2-135m-instruct", 5, None, 2.5, 16, 0.8, 0.3)


@pytest.mark.parametrize(
    "cache, message",
    [
        ({"equivalence": "judge+query"}, "names judge, but there is no cache.judge block"),
        ({"judge": {"upstream": "oa", "model": "gpt-5-nano"}}, "does not name judge"),
        (
            {"equivalence": "judge", "judge": {"upstream": "nowhere", "model": "gpt-5-nano"}},
            "unknown upstream 'nowhere'",
        ),
        ({"equivalence": "judge", "judge": {"upstream": "oa", "model": "gpt-9"}}, "'gpt-9' is not a model served by"),
        (
            {"equivalence": "judge", "judge": {"upstream": "local", "model": "gpt-5-nano"}},
            "not a model served by upstream 'local'",
        ),
        (
            {"equivalence": "judge", "judge": {"upstream": "oa", "model": "gpt-5-nano", "budget": 3}},
            "unknown settings budget",
        ),
        ({"equivalence": "judge", "judge": {"model": "gpt-5-nano"}}, "missing 'upstream'"),
        ({"equivalence": "judge", "judge": {"upstream": "oa"}}, "missing 'model'"),
        ({"equivalence": "judge", "judge": "gpt-5-nano"}, "a mapping"),
        (
            {"equivalence": "judge", "judge": {"upstream": "oa", "model": "gpt-5-nano", "dollars_per_day": "lots"}},
            "dollars_per_day: a positive number",
        ),
        (
            {"equivalence": "judge", "judge": {"upstream": "oa", "model": "gpt-5-nano", "dollars_per_day": -1}},
            "dollars_per_day: a positive number",
        ),
        (
            {"equivalence": "judge", "judge": {"upstream": "oa", "model": "gpt-5-nano", "requests_per_hour": 0.5}},
            "requests_per_hour: a positive whole number",
        ),
        (
            {
                "equivalence": "judge",
                "judge": {"upstream": "oa", "model": "gpt-5-nano", "requests_per_hour": None, "dollars_per_day": None},
            },
            "the judge needs a budget",
        ),
        (
            {"equivalence": "judge", "judge": {"upstream": "oa", "model": "gpt-5-nano", "timeout": 0}},
            "timeout: a positive number",
        ),
        (
            {"equivalence": "judge", "judge": {"upstream": "oa", "model": "gpt-5-nano", "p_yes": 0.4}},
            "0 < p_no < 0.5 < p_yes < 1",
        ),
        ({"equivalence": "judge:0.5", "judge": {"upstream": "oa", "model": "gpt-5-nano"}}, "bad argument"),
    ],
)
def test_config_errors_name_what_is_wrong(cache, message):
    with pytest.raises(ConfigError, match="cache") as err:
        parse_config(_doc(cache))
    assert message in str(err.value)
