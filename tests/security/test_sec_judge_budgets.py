"""The cache judge and budgets, through the real gateway app: what a judge call may add to a budget, and when.

Found by a review of the judge (each was a failing test first): the judge's admission reserve was charged
as the request's own estimate to an unknown generate cost (a timed-out call), and held even for requests
that can never ask the judge (streams); an unpriced judge under a hard budget that refuses unpriced models
ran with no charge at all; slow judge calls could hold every worker the cache's lookups share.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest

from tests.e2e.test_gateway_feedback import _intent_upstream
from tests.e2e.test_gateway_judge import _judge_upstream
from tests.support.mock_upstream import ServerThread, make_app
from truecost.errors import ConfigError
from truecost.gateway.app import build
from truecost.gateway.config import hash_key, parse_config
from truecost.ledger import LedgerFilter

KEY = "sk-judge-budgets"


def _config(tmp_path, chat_url, judge_url, judge_model, support_wire, budget_limit, **judge):
    return parse_config(
        {
            "ledger": str(tmp_path / "gw.db"),
            "upstreams": {
                "chat": {"base_url": chat_url + "/v1", "timeout": 0.5, "max_retries": 0},
                "judges": {"base_url": judge_url + "/v1", "timeout": 5, "max_retries": 0},
            },
            "models": {
                "support": {
                    "candidates": [{"upstream": "chat", "model": "gpt-6-luna", "upstream_model": support_wire}]
                },
                "judge": {"candidates": [{"upstream": "judges", "model": judge_model}]},
            },
            "keys": [{"name": "a", "key_sha256": hash_key(KEY), "tenant": "acme", "cost_center": "cc-r"}],
            "budgets": [{"cost_center": "cc-r", "period": "day", "limit_usd": str(budget_limit), "hard": True}],
            "cache": {
                "enabled": True,
                "embedder": "static-tuned",
                "policy": "online",
                "target_error": 0.05,
                "equivalence": "normalised+judge",
                "judge": {"upstream": "judges", "model": judge_model, "requests_per_hour": 1000, "timeout": 1, **judge},
            },
        }
    )


@pytest.mark.parametrize("stream", [False, True])
def test_a_generate_timeout_is_charged_the_request_estimate_not_the_judge_reserve(tmp_path, stream):
    with ServerThread(make_app(slow_seconds=3)) as chat, ServerThread(_judge_upstream()) as judge:
        app = build(_config(tmp_path, chat.url, judge.url, "o1-pro", "slow", 50))
        with ServerThread(app) as gw:
            reserve = app.state.pipeline.judge_reserve
            assert reserve > Decimal("0.5")
            body = {
                "model": "support",
                "messages": [{"role": "user", "content": "how long does a refund take"}],
                "stream": stream,
            }
            r = httpx.post(
                gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=30
            )
            r.read()
            app.state.writer.flush()
            gen = app.state.store.query(LedgerFilter(steps=("generate",)))
            assert gen and gen[0].cost is None
            charged = Decimal(gen[0].details["budget_charge_usd"])
            assert app.state.store.query(LedgerFilter(steps=("cache_judge",))) == []
            assert Decimal(0) < charged < Decimal("0.05") < reserve, (charged, reserve)
            # what the budget holds afterwards is that charge, not the reserve
            assert app.state.pipeline.budgets.spent("cost_center", "cc-r", "day") == charged


def test_a_stream_is_admitted_without_the_judge_reserve(tmp_path):
    """A stream is never stored, so it never asks the judge: a budget below the reserve still admits it."""
    with ServerThread(_intent_upstream()) as chat, ServerThread(_judge_upstream()) as judge:
        app = build(_config(tmp_path, chat.url, judge.url, "o1-pro", "gpt-6-luna", "0.5"))
        with ServerThread(app) as gw:
            assert app.state.pipeline.judge_reserve > Decimal("0.5")
            body = {"model": "support", "messages": [{"role": "user", "content": "refund?"}]}
            auth = {"authorization": f"Bearer {KEY}"}
            plain = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=auth, timeout=30)
            assert plain.status_code == 429  # a cacheable request holds the reserve: it does not fit
            streamed = httpx.post(
                gw.url + "/v1/chat/completions", json={**body, "stream": True}, headers=auth, timeout=30
            )
            assert streamed.status_code == 200, streamed.text
            bypass = httpx.post(
                gw.url + "/v1/chat/completions", json=body, headers={**auth, "x-truecost-cache": "bypass"}, timeout=30
            )
            assert bypass.status_code == 200, bypass.text


def test_an_unpriced_judge_under_a_hard_budget_that_refuses_unpriced_models_is_refused_at_start(tmp_path):
    with ServerThread(_intent_upstream()) as chat, ServerThread(_judge_upstream()) as judge:
        config = _config(
            tmp_path, chat.url, judge.url, "judge-local-unpriced", "gpt-6-luna", "0.05", dollars_per_day=None
        )
        with pytest.raises(ConfigError, match="judge-local-unpriced.*refuses unpriced"):
            build(config)


def test_slow_judge_calls_beyond_two_at_once_are_skipped_not_queued(tmp_path):
    """Each call holds a worker of the executor the cache's lookups share: a third concurrent call is 'busy'."""
    from truecost.gateway.cache_judge import MAX_IN_FLIGHT, JudgeUnavailable, judging_for

    with ServerThread(_intent_upstream()) as chat, ServerThread(_judge_upstream()) as judge:
        app = build(_config(tmp_path, chat.url, judge.url, "gpt-5-nano", "gpt-6-luna", 50))
        gj = next(s for s in app.state.pipeline.cache.verifiers.sources if "judge" in s.name).inner.inner.complete
        assert MAX_IN_FLIGHT == 2
        held = [gj._slots.acquire(blocking=False) for _ in range(MAX_IN_FLIGHT)]  # two calls in flight
        assert all(held)
        try:

            class _Ex:  # bound to a live request that has not settled
                class admission:
                    settled = False

            async def ask():
                with judging_for(_Ex()):
                    await asyncio.to_thread(gj, [{"role": "user", "content": "x"}])

            with pytest.raises(JudgeUnavailable, match="busy"):
                asyncio.run(ask())
        finally:
            for _ in held:
                gj._slots.release()
