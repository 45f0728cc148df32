"""The official SDKs, talking to a real httpx transport that answers like the providers."""

from tests.support.requires import need
import asyncio
import json
from decimal import Decimal

import httpx
import pytest

from truecost.ledger import MemoryLedgerStore
from truecost.pricing import PriceCatalog
from truecost.tracking import Tracker
from truecost.tracking.wrappers import wrap_anthropic, wrap_openai

openai = need("openai", "openai")
anthropic = need("anthropic", "anthropic")


def _sse(events):
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def openai_handler(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    seen.append(body)
    if request.url.path.endswith("/embeddings"):
        return httpx.Response(
            200,
            json={
                "object": "list",
                "model": body["model"],
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "usage": {"prompt_tokens": 8, "total_tokens": 8},
            },
        )
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1000},
        "completion_tokens_details": {"reasoning_tokens": 100},
    }
    if body.get("stream"):
        chunks = [
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
            }
            for w in ("Hel", "lo")
        ]
        if body.get("cut"):

            def cut():
                yield _sse(chunks[:1]).replace("data: [DONE]\n\n", "").encode()
                raise httpx.ReadError("connection reset by peer")

            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=cut())
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [],
                    "usage": usage,
                }
            )
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_sse(chunks).encode())
    return httpx.Response(
        200,
        json={
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": usage,
        },
    )


seen: list = []

# gpt-6.2-sol: 200 uncached x 2/1M = 0.0004; 1000 cached x 0.10/1M = 0.0001; 300 out x 10/1M = 0.003 -> 0.0035
EXPECTED = Decimal("0.0035")


@pytest.fixture
def env():
    store = MemoryLedgerStore()
    tracker = Tracker(PriceCatalog.bundled(), lambda e: store.append([e]))
    return tracker, store


def client(cls=None):
    cls = cls or openai.OpenAI
    transport = httpx.MockTransport(openai_handler)
    http = (httpx.AsyncClient if cls is openai.AsyncOpenAI else httpx.Client)(transport=transport)
    return cls(api_key="test", base_url="http://mock.local/v1", http_client=http, max_retries=0)


def test_openai_completion_is_priced_inside_the_current_request(env):
    tracker, store = env
    c = wrap_openai(client(), tracker)
    with tracker.request(feature="chat") as req:
        resp = c.chat.completions.create(model="gpt-6.2-sol", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "Hello"
    (e,) = store.query()
    assert e.request_id == req.id and e.step == "generate" and e.cost == EXPECTED
    assert e.details["tokens"] == {
        "input": 200,
        "cached_input": 1000,
        "cache_write_5m": 0,
        "cache_write_1h": 0,
        "output": 200,
        "reasoning": 100,
    }


def test_openai_stream_asks_for_usage_and_hides_the_extra_chunk(env):
    tracker, store = env
    c = wrap_openai(client(), tracker)
    seen.clear()
    chunks = list(
        c.chat.completions.create(model="gpt-6.2-sol", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert [ch.choices[0].delta.content for ch in chunks] == ["Hel", "lo"]
    (e,) = store.query()
    assert e.cost == EXPECTED and e.details["streamed_chunks"] == 3


def test_openai_stream_with_caller_usage_request_keeps_the_usage_chunk(env):
    tracker, store = env
    c = wrap_openai(client(), tracker)
    chunks = list(
        c.chat.completions.create(model="gpt-6.2-sol", messages=[], stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].usage.prompt_tokens == 1200
    assert store.query()[0].cost == EXPECTED


def test_openai_stream_cut_midway_is_an_error_with_unknown_cost(env):
    tracker, store = env
    c = wrap_openai(client(), tracker)
    with pytest.raises(Exception):  # noqa: B017  (whatever the SDK raises for a cut stream; the ledger is the point)
        list(c.chat.completions.create(model="gpt-6.2-sol", messages=[], stream=True, extra_body={"cut": True}))
    (e,) = store.query()
    assert e.outcome == "error" and e.cost is None and "before usage arrived" in e.details["unknown_reason"]


def test_async_openai_and_embeddings(env):
    tracker, store = env
    c = wrap_openai(client(openai.AsyncOpenAI), tracker)

    async def main():
        await c.chat.completions.create(model="gpt-6.2-sol", messages=[])
        stream = await c.chat.completions.create(model="gpt-6.2-sol", messages=[], stream=True)
        async for _ in stream:
            pass
        await c.embeddings.create(model="text-embedding-3-small", input="hello")

    asyncio.run(main())
    costs = [(e.step, e.cost) for e in store.query()]
    # embeddings: 8 x 0.02/1M = 0.00000016
    assert costs == [("generate", EXPECTED), ("generate", EXPECTED), ("embed", Decimal("0.00000016"))]


def anthropic_handler(request):
    body = json.loads(request.content)
    usage = {
        "input_tokens": 1000,
        "output_tokens": 0,
        "cache_read_input_tokens": 20000,
        "cache_creation_input_tokens": 5000,
        "cache_creation": {"ephemeral_5m_input_tokens": 4000, "ephemeral_1h_input_tokens": 1000},
    }
    msg = {
        "id": "m1",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    if body.get("stream"):
        events = [
            ("message_start", {"type": "message_start", "message": msg}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 800},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        text = "".join(f"event: {k}\ndata: {json.dumps(v)}\n\n" for k, v in events)
        return _resp(request)(200, headers={"content-type": "text/event-stream"}, content=text.encode())
    msg = {
        **msg,
        "content": [{"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn",
        "usage": {**usage, "output_tokens": 800},
    }
    return _resp(request)(200, json=msg)


def _resp(request):
    """The Response class of whichever httpx the SDK uses (httpx or its httpx2 fork)."""
    import sys

    return sys.modules[type(request).__module__.split(".")[0]].Response


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_cache_tokens_are_priced_separately(env, stream):
    tracker, store = env
    httpx_for_sdk = need("httpx2", "anthropic") if "httpx2" in anthropic._base_client.__dict__ else httpx
    transport = httpx_for_sdk.MockTransport(anthropic_handler)
    raw = anthropic.Anthropic(
        api_key="test",
        base_url="http://mock.local",
        http_client=httpx_for_sdk.Client(transport=transport),
        max_retries=0,
    )
    c = wrap_anthropic(raw, tracker)
    resp = c.messages.create(
        model="claude-sonnet-5.5", max_tokens=10, messages=[{"role": "user", "content": "x"}], stream=stream
    )
    if stream:
        for _ in resp:
            pass
    (e,) = store.query()
    # same usage as the golden test: 0.026
    assert e.cost == Decimal("0.026")


def test_wrapped_clients_record_sdk_or_the_source_they_are_given(env):
    tracker, store = env
    wrap_openai(client(), tracker).chat.completions.create(model="gpt-6.2-sol", messages=[])
    wrap_openai(client(), tracker, source="my-agent").embeddings.create(model="text-embedding-3-small", input="hi")
    with tracker.request(source="langchain"):  # inside an integration's request: the request's source
        wrap_openai(client(), tracker).chat.completions.create(model="gpt-6.2-sol", messages=[])
    assert [(e.step, e.source) for e in store.query()] == [
        ("generate", "sdk"),
        ("embed", "my-agent"),
        ("generate", "langchain"),
    ]
    with pytest.raises(ValueError, match="bad event source"):
        wrap_anthropic(object(), tracker, source="Bad Source")
