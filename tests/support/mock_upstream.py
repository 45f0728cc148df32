"""A small, fast OpenAI-compatible upstream for tests and benchmarks (loopback only).

The requested model name picks the behaviour: ``fail-500``, ``fail-429``, ``slow`` (sleeps
``slow_seconds``), ``cut`` (streams two chunks then drops the connection), ``drip`` (0.2 s per chunk), ``no-usage``,
``float-usage`` (token counts as floats), ``cached-over`` (cached_tokens > prompt_tokens);
anything else answers normally after ``latency`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from truecost.demo.live import ServerThread, free_port  # noqa: F401  (one uvicorn-in-a-thread helper)

USAGE = {
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "total_tokens": 150,
    "prompt_tokens_details": {"cached_tokens": 20},
}
TEXT = "The refund reaches your account in five to seven working days."


def make_app(latency: float = 0.0, slow_seconds: float = 5.0) -> Starlette:
    calls = {"n": 0}

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        calls["n"] += 1
        model = body.get("model", "")
        if latency:
            await asyncio.sleep(latency)
        if model == "fail-500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if model == "fail-401":  # the gateway's own upstream key is wrong
            return JSONResponse(
                {
                    "error": {
                        "message": "Incorrect API key provided: sk-upstr***",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status_code=401,
            )
        if model == "fail-429":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0"})
        if model == "slow":
            await asyncio.sleep(slow_seconds)
        base = {"id": f"cmpl-{calls['n']}", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            out = {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
            }
            if body.get("logprobs"):  # confident unless the question says it is hard
                hard = "hard" in json.dumps(body.get("messages"))
                out["choices"][0]["logprobs"] = {
                    "content": [
                        {"token": w, "logprob": -2.5 if hard else -0.05, "bytes": None, "top_logprobs": []}
                        for w in TEXT.split(" ")
                    ]
                }
            if model == "float-usage":
                out["usage"] = {"prompt_tokens": 120.5, "completion_tokens": 30.0, "total_tokens": 150.5}
            elif model == "cached-over":
                out["usage"] = {**USAGE, "prompt_tokens_details": {"cached_tokens": 500}}
            elif model != "no-usage":
                out["usage"] = USAGE
            return JSONResponse(out)

        async def gen():
            try:
                async for part in _gen():
                    yield part
            except BaseException:  # the gateway hung up on us mid-stream
                calls["cancelled"] = calls.get("cancelled", 0) + 1
                raise

        async def _gen():
            words = TEXT.split(" ")
            for i, w in enumerate(words):
                if model == "cut" and i == 2:
                    raise RuntimeError("connection dropped")  # uvicorn closes the connection mid-body
                if model == "drip":
                    await asyncio.sleep(0.2)
                chunk = {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n".encode()
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [], 'usage': USAGE})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        body = json.loads(await request.body())
        items = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return JSONResponse(
            {
                "object": "list",
                "model": body["model"],
                "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))],
                "usage": {"prompt_tokens": 8 * len(items), "total_tokens": 8 * len(items)},
            }
        )

    async def messages(request: Request) -> Response:
        """Anthropic's Messages API, with cache reads and writes in the usage."""
        body = json.loads(await request.body())
        calls["n"] += 1
        assert request.headers.get("anthropic-version")
        usage = {
            "input_tokens": 1000,
            "output_tokens": 800,
            "cache_read_input_tokens": 20000,
            "cache_creation_input_tokens": 5000,
            "cache_creation": {"ephemeral_5m_input_tokens": 4000, "ephemeral_1h_input_tokens": 1000},
        }
        msg = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": TEXT}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return JSONResponse(msg)

        async def gen():
            start = {**msg, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
            events = [
                ("message_start", {"type": "message_start", "message": start}),
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                ),
            ]
            events += [
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w + " "}},
                )
                for w in TEXT.split()
            ]
            events += [
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 800}},
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
            for name, data in events:
                yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        return StreamingResponse(gen(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )
    app.state.calls = calls
    return app
