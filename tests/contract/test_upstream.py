"""The Upstream contract, run on every implementation: the OpenAI-compatible and Anthropic clients against
the loopback mock upstream (a real HTTP server), and the in-memory upstream.

Typed answers: a whole answer is an UpstreamResponse, a stream yields StreamChunks; the body a client
receives carries no private keys, and the provider's own usage travels beside it (NativeUsage)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.requires import need

need("aiohttp", "gateway")

from tests.support.mock_upstream import TEXT, ServerThread, make_app  # noqa: E402
from truecost.pricing.usage import FLAVOURS, normalise_call  # noqa: E402
from truecost.upstream.anthropic import AnthropicUpstream  # noqa: E402
from truecost.upstream.base import NativeUsage, StreamChunk, Upstream, UpstreamResponse  # noqa: E402
from truecost.upstream.errors import UpstreamUnsupported  # noqa: E402
from truecost.upstream.memory import MemoryUpstream  # noqa: E402
from truecost.upstream.openai_compat import OpenAICompatibleUpstream  # noqa: E402

MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How long does a refund take?"}]
IMPLEMENTATIONS = ["openai", "anthropic", "memory"]


@pytest.fixture(scope="module")
def mock_url():
    with ServerThread(make_app()) as server:
        yield server.url + "/v1"


@pytest.fixture(params=IMPLEMENTATIONS)
def make(request, mock_url):
    """A factory of fresh upstreams of one implementation (each test runs its calls in one event loop)."""
    kinds = {
        "openai": lambda: OpenAICompatibleUpstream(mock_url, "sk-contract", max_retries=0),
        "anthropic": lambda: AnthropicUpstream(mock_url, "sk-contract", max_retries=0),
        "memory": lambda: MemoryUpstream(TEXT),
    }
    return kinds[request.param]


def run(make, fn):
    """``fn(upstream)`` in a fresh event loop, the upstream closed afterwards."""

    async def go():
        up = make()
        try:
            return await fn(up)
        finally:
            await up.aclose()

    return asyncio.run(go())


async def collect(up, body) -> list:
    return [chunk async for chunk in up.stream(body)]


def public(data: dict) -> None:
    """What a client receives: JSON, and no key of ours in it."""
    json.dumps(data)
    assert not [k for k in data if k.startswith("_")], data


def test_declares_its_abilities(make):
    up = make()
    assert isinstance(up, Upstream)
    assert type(up.supports_embeddings) is bool


def test_a_whole_answer_is_typed_with_usage_beside_the_body(make):
    answer = run(make, lambda up: up.complete({"model": "m-1", "messages": MSG, "max_tokens": 50}))
    assert isinstance(answer, UpstreamResponse)
    public(answer.body)
    assert answer.body["object"] == "chat.completion"
    assert answer.body["choices"][0]["message"] == {"role": "assistant", "content": TEXT}
    assert answer.body["choices"][0]["finish_reason"] == "stop"
    usage = answer.usage
    assert usage == answer.body["usage"]  # the client's usage and the one priced are the same object's numbers
    assert all(isinstance(usage[k], int) and usage[k] > 0 for k in ("prompt_tokens", "completion_tokens"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if answer.native_usage is not None:  # the provider's own counts price to the same totals
        assert isinstance(answer.native_usage, NativeUsage) and answer.native_usage.flavour in FLAVOURS
        tokens = normalise_call(answer.native_usage.usage, answer.native_usage.flavour).tokens
        assert tokens.prompt_total == usage["prompt_tokens"]
        assert tokens.output + tokens.reasoning == usage["completion_tokens"]


def test_a_stream_is_typed_chunks_and_only_the_last_carries_usage(make):
    chunks = run(make, lambda up: collect(up, {"model": "m-1", "messages": MSG}))
    assert chunks and all(isinstance(c, StreamChunk) for c in chunks)
    for c in chunks:
        public(c.data)
        assert c.data["object"] == "chat.completion.chunk"
    text = "".join(c.data["choices"][0]["delta"].get("content", "") for c in chunks if c.data["choices"])
    assert text.strip() == TEXT
    assert chunks[-1].usage and chunks[-1].usage == chunks[-1].data["usage"]
    assert not [c for c in chunks[:-1] if c.usage or c.native_usage]
    finishes = [c.data["choices"][0]["finish_reason"] for c in chunks if c.data["choices"]]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}


def test_the_stream_and_the_whole_answer_count_the_same_tokens(make):
    async def both(up):
        return await up.complete({"model": "m-1", "messages": MSG}), await collect(
            up, {"model": "m-1", "messages": MSG}
        )

    answer, chunks = run(make, both)
    assert chunks[-1].usage["prompt_tokens"] == answer.usage["prompt_tokens"]
    assert (chunks[-1].native_usage is None) == (answer.native_usage is None)


def test_a_stream_closed_early_stops_cleanly(make):
    async def first_then_close(up):
        stream = up.stream({"model": "m-1", "messages": MSG})
        first = await stream.__anext__()
        await stream.aclose()
        return first

    first = run(make, first_then_close)
    assert isinstance(first, StreamChunk) and first.data["choices"]


def test_embeddings_where_declared_and_unsupported_elsewhere(make):
    async def embed(up):
        if not up.supports_embeddings:
            with pytest.raises(UpstreamUnsupported):
                await up.embed({"model": "e-1", "input": ["a", "b"]})
            return None
        return await up.embed({"model": "e-1", "input": ["a", "b c"]})

    answer = run(make, embed)
    if answer is None:
        return
    assert isinstance(answer, UpstreamResponse) and answer.native_usage is None
    public(answer.body)
    assert [d["index"] for d in answer.body["data"]] == [0, 1]
    assert all(d["embedding"] and all(isinstance(x, float) for x in d["embedding"]) for d in answer.body["data"])
    assert answer.usage == answer.body["usage"] and answer.usage["prompt_tokens"] > 0


def test_closing_twice_is_harmless(make):
    async def close_twice(up):
        await up.complete({"model": "m-1", "messages": MSG})
        await up.aclose()

    run(make, close_twice)  # run() closes it a second time
