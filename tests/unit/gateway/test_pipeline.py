"""The pipeline over in-memory upstreams (no HTTP): typed answers in, the client's bytes out, usage priced
under the provider's own rules, declared abilities honoured, collaborators used as they were passed in."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from truecost.gateway.budgets import LocalBudgetGuard
from truecost.gateway.config import parse_config
from truecost.gateway.errors import GatewayError
from truecost.gateway.pipeline import Pipeline
from truecost.ledger import MemoryLedgerStore
from truecost.pricing.catalog import PriceCatalog
from truecost.tracking.tracker import Tracker
from truecost.upstream.base import NativeUsage, StreamChunk, UpstreamResponse
from truecost.upstream.memory import MemoryUpstream

MSG = [{"role": "user", "content": "How long does a refund take?"}]
# Anthropic's own counts: input 1,000 + cache read 20,000 + 5m write 4,000 + 1h write 1,000 + output 800
NATIVE = {
    "input_tokens": 1000,
    "output_tokens": 800,
    "cache_read_input_tokens": 20000,
    "cache_creation_input_tokens": 5000,
    "cache_creation": {"ephemeral_5m_input_tokens": 4000, "ephemeral_1h_input_tokens": 1000},
}
SHAPED = {
    "prompt_tokens": 26000,
    "completion_tokens": 800,
    "total_tokens": 26800,
    "prompt_tokens_details": {"cached_tokens": 20000},
}


class NativeUpstream(MemoryUpstream):
    """Answers like the Anthropic client: an OpenAI-shaped body, the provider's usage beside it."""

    async def complete(self, body):
        answer = await super().complete(body)
        answer.body["usage"] = dict(SHAPED)
        return UpstreamResponse(answer.body, answer.body["usage"], NativeUsage("anthropic", NATIVE))

    async def stream(self, body):
        async for chunk in super().stream(body):
            if chunk.usage:
                yield StreamChunk({**chunk.data, "usage": dict(SHAPED)}, dict(SHAPED), NativeUsage("anthropic", NATIVE))
            else:
                yield chunk


def make(upstreams, models, guard=None, **doc):
    config = parse_config(
        {"upstreams": {name: {"base_url": "http://unused.invalid/v1"} for name in upstreams}, "models": models, **doc}
    )
    store = MemoryLedgerStore()
    tracker = Tracker(PriceCatalog.bundled(), lambda e: store.append([e]), source="gateway")
    return Pipeline(config, tracker, upstreams, budgets=guard), store


def alias(*candidates):
    return {"candidates": [{"upstream": up, "model": model} for up, model in candidates]}


def events(store, step):
    return [e for e in store.query() if e.step == step]


def test_the_providers_own_usage_is_priced_and_never_sent_to_the_client():
    up = NativeUpstream()
    pipeline, store = make({"claude": up}, {"sonnet": alias(("claude", "claude-sonnet-5.5"))})
    result = asyncio.run(pipeline.chat({"model": "sonnet", "messages": MSG}, None, {}))
    assert result.body["usage"] == SHAPED and not [k for k in result.body if k.startswith("_")]
    (e,) = events(store, "generate")
    assert e.cost == Decimal("0.026") == Decimal(result.headers["x-truecost-cost-usd"])  # Anthropic's rules
    assert e.details["tokens"]["cached_input"] == 20000


def test_a_stream_sends_each_chunk_as_it_came_and_prices_the_native_usage():
    pipeline, store = make({"claude": NativeUpstream()}, {"sonnet": alias(("claude", "claude-sonnet-5.5"))})

    async def go():
        result = await pipeline.chat(
            {"model": "sonnet", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}, None, {}
        )
        out = b"".join([part async for part in result.stream])
        await result.close()
        return out

    raw = asyncio.run(go())
    events_ = [line[6:] for line in raw.decode().split("\n\n") if line]
    assert events_[-1] == "[DONE]" and b"_truecost" not in raw
    chunks = [json.loads(e) for e in events_[:-1]]
    assert chunks[-1]["usage"] == SHAPED and chunks[-1]["choices"] == []
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]).startswith("The")
    (e,) = events(store, "generate")
    assert e.cost == Decimal("0.026")


def test_an_upstream_without_embeddings_is_never_called_for_them():
    chat_only, embedder = MemoryUpstream(supports_embeddings=False), MemoryUpstream()
    pipeline, store = make(
        {"chat": chat_only, "emb": embedder},
        {
            "embed": alias(("chat", "text-embedding-3-small"), ("emb", "text-embedding-3-small")),
            "chat-only": alias(("chat", "text-embedding-3-small")),
        },
    )
    result = asyncio.run(pipeline.embeddings({"model": "embed", "input": ["a b", "c"]}, None, {}))
    assert len(result.body["data"]) == 2 and result.headers["x-truecost-model"] == "text-embedding-3-small"
    assert chat_only.calls == [] and len(embedder.calls) == 1
    (e,) = events(store, "embed")  # one step: the upstream that was called
    assert e.cost is not None and e.cost > 0
    with pytest.raises(GatewayError) as refused:
        asyncio.run(pipeline.embeddings({"model": "chat-only", "input": "a"}, None, {}))
    assert refused.value.status == 502 and "no embeddings endpoint" in refused.value.message
    assert chat_only.calls == [] and len(events(store, "embed")) == 1


def test_the_budget_guard_passed_in_is_the_one_that_admits():
    budgets = [{"cost_center": "cx", "limit_usd": "5"}]
    guard = LocalBudgetGuard(
        parse_config(
            {
                "upstreams": {"m": {"base_url": "http://x"}},
                "models": {"a": alias(("m", "gpt-6-luna"))},
                "budgets": budgets,
            }
        ).budgets
    )
    pipeline, _store = make({"m": MemoryUpstream()}, {"a": alias(("m", "gpt-6-luna"))}, guard, budgets=budgets)
    assert pipeline.budgets is guard
    result = asyncio.run(pipeline.chat({"model": "a", "messages": MSG}, None, {"x-truecost-cost-center": "cx"}))
    assert guard.spent("cost_center", "cx", "month") == Decimal(result.headers["x-truecost-cost-usd"]) > 0
