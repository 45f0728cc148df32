"""Anthropic Messages API on the gateway: translate to the OpenAI-compatible pipeline and back.

Request: ``system`` (string or text blocks) becomes a system message; text content blocks
become text; ``max_tokens``, ``temperature``, ``top_p``, ``stop_sequences`` map across.
Response: one text block, ``stop_reason`` from ``finish_reason``, usage as
``input_tokens``/``output_tokens``. Streams become message_start / content_block_* /
message_delta / message_stop events; an upstream failure mid-stream becomes an ``error`` event.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from truecost.gateway.errors import GatewayError

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for b in content:
            if not isinstance(b, dict) or b.get("type") != "text":
                raise GatewayError(400, f"{where}: only text content blocks are supported by this gateway")
            parts.append(str(b.get("text", "")))
        return "\n".join(parts)
    raise GatewayError(400, f"{where}: content must be a string or an array of content blocks")


def to_openai(body: Any) -> dict:
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object")
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        raise GatewayError(400, "max_tokens: field required (a positive integer)")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise GatewayError(400, "messages: a non-empty array is required")
    out = []
    if body.get("system") is not None:
        out.append({"role": "system", "content": _text(body["system"], "system")})
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise GatewayError(400, f"messages[{i}]: role must be user or assistant")
        out.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}]")})
    oa = {"model": body.get("model"), "messages": out, "max_tokens": body["max_tokens"]}
    for k in ("temperature", "top_p"):
        if k in body:
            oa[k] = body[k]
    if body.get("stop_sequences"):
        oa["stop"] = body["stop_sequences"]
    if body.get("stream"):
        oa["stream"] = True
        oa["stream_options"] = {"include_usage": True}
    return oa


def from_openai(resp: dict, model: str) -> dict:
    choice = (resp.get("choices") or [{}])[0]
    usage = resp.get("usage") or {}
    return {
        "id": f"msg_{resp.get('id', 'truecost')}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": (choice.get("message") or {}).get("content") or ""}],
        "stop_reason": _STOP.get(choice.get("finish_reason"), "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)},
    }


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def stream_from_openai(chunks: AsyncIterator[bytes], model: str, request_id: str) -> AsyncIterator[bytes]:
    """Re-frame the pipeline's OpenAI SSE bytes as Anthropic stream events."""
    yield _event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": f"msg_{request_id}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        },
    )
    yield _event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    stop = "end_turn"
    usage: dict[str, Any] = {}
    async for raw in chunks:
        for line in raw.decode().splitlines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
                yield _event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop, "stop_sequence": None},
                        "usage": {"output_tokens": usage.get("completion_tokens", 0)},
                    },
                )
                yield _event("message_stop", {"type": "message_stop"})
                return
            chunk = json.loads(data)
            if "error" in chunk:
                yield _event(
                    "error", {"type": "error", "error": {"type": "api_error", "message": chunk["error"]["message"]}}
                )
                return
            usage = chunk.get("usage") or usage
            for c in chunk.get("choices") or []:
                if c.get("finish_reason"):
                    stop = _STOP.get(c["finish_reason"], "end_turn")
                text = (c.get("delta") or {}).get("content")
                if text:
                    yield _event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                    )
    yield _event("error", {"type": "error", "error": {"type": "api_error", "message": "stream ended early"}})
