"""Client feedback's edge: the report's fields, its owner, and the cache.feedback settings."""

from types import SimpleNamespace

import pytest

from truecost.errors import ConfigError
from truecost.gateway.config import FeedbackConfig, parse_config
from truecost.gateway.errors import GatewayError
from truecost.gateway.feedback import owner_of, parse_feedback


def test_a_report_is_a_request_id_and_one_verdict():
    assert parse_feedback({"request_id": "abc-1", "correct": False}) == ("abc-1", False)
    assert parse_feedback({"request_id": "abc-1", "correct": True}) == ("abc-1", True)
    assert parse_feedback({"request_id": "abc-1", "verdict": "wrong"}) == ("abc-1", False)
    assert parse_feedback({"request_id": "a.b:c_d-e", "verdict": "right"}) == ("a.b:c_d-e", True)


@pytest.mark.parametrize(
    "body,param",
    [
        ([], None),
        ({"correct": False}, "request_id"),
        ({"request_id": "", "correct": False}, "request_id"),
        ({"request_id": "x\n", "correct": False}, "request_id"),
        ({"request_id": "x", "correct": 1}, "correct"),
        ({"request_id": "x", "verdict": {"a": 1}}, "verdict"),
        ({"request_id": "x", "verdict": "WRONG"}, "verdict"),
        ({"request_id": "x", "correct": True, "verdict": "right"}, "verdict"),
        ({"request_id": "x", "correct": True, "note": "secret-value"}, "note"),
    ],
)
def test_anything_else_is_a_400_naming_the_field(body, param):
    with pytest.raises(GatewayError) as info:
        parse_feedback(body)
    assert info.value.status == 400 and info.value.param == param
    assert "secret-value" not in info.value.message


def test_the_owner_is_the_key():
    assert owner_of(SimpleNamespace(name="support")) == "key:support"
    assert owner_of(None) == "anonymous"


def _doc(cache):
    return {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"candidates": [{"upstream": "u", "model": "gpt-6-luna"}]}},
        "cache": cache,
    }


def test_feedback_settings_default_to_learning_from_wrong_only_with_a_two_minute_window():
    assert parse_config(_doc({"enabled": True})).cache.feedback == FeedbackConfig(True, False, 120.0, "user")
    c = parse_config(_doc({"feedback": {"accept_right": True, "regenerate_window_seconds": 0}})).cache.feedback
    assert c.accept_right is True and c.regenerate_window_seconds == 0.0 and c.enabled is True


@pytest.mark.parametrize(
    "feedback,problem",
    [
        ("yes", "a mapping"),
        ({"accept_rigth": True}, "unknown settings accept_rigth"),
        ({"accept_right": "yes"}, "accept_right: true or false"),
        ({"enabled": 1}, "enabled: true or false"),
        ({"regenerate_window_seconds": -1}, "regenerate_window_seconds"),
        ({"regenerate_window_seconds": float("nan")}, "regenerate_window_seconds"),
        ({"regenerate_window_seconds": True}, "regenerate_window_seconds"),
        ({"regenerate_by": "tenant"}, "regenerate_by: user or key"),
        ({"regenerate_by": ["key"]}, "regenerate_by"),
    ],
)
def test_bad_feedback_settings_are_refused_by_name(feedback, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_config(_doc({"feedback": feedback}))


def test_the_window_reaches_the_cache_and_is_off_with_feedback_off(monkeypatch):
    from truecost.gateway import app

    monkeypatch.setattr(app, "make_embedder", lambda name: _Tiny())
    on = app.build_cache(parse_config(_doc({"enabled": True, "feedback": {"regenerate_window_seconds": 30}})))
    assert on.regenerate_window == 30 and on.regenerate_by == "user"
    by_key = app.build_cache(parse_config(_doc({"enabled": True, "feedback": {"regenerate_by": "key"}})))
    assert by_key.regenerate_window == 120 and by_key.regenerate_by == "key"
    off = app.build_cache(parse_config(_doc({"enabled": True, "feedback": {"enabled": False}})))
    assert off.regenerate_window is None
    zero = app.build_cache(parse_config(_doc({"enabled": True, "feedback": {"regenerate_window_seconds": 0}})))
    assert zero.regenerate_window is None


class _Tiny:
    model_id, dims = "test/tiny", 4

    def embed_batch(self, texts):
        import numpy as np

        return np.ones((len(texts), 4), dtype=np.float32) / 2
