"""A minimal raw-ASGI OpenAI-compatible mock for load benchmarks: sleeps a fixed latency, answers JSON."""

from __future__ import annotations

import asyncio
import json
import sys

USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


def make_app(latency: float):
    body = json.dumps(
        {
            "id": "cmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Five to seven days."},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if latency:
            await asyncio.sleep(latency)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        make_app(float(sys.argv[2]) / 1000),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="error",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
