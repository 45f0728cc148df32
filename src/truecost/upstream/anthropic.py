"""The Anthropic Messages API as an upstream: OpenAI-shaped requests in, OpenAI-shaped answers out.

The pipeline speaks OpenAI chat completions; this client translates both ways and hands
the pipeline Anthropic's own usage (``_truecost_usage``), so pricing applies Anthropic's
counting rules (cache reads and 5-minute / 1-hour cache writes priced apart).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from truecost.upstream.errors import UpstreamConnectionError, UpstreamHTTPError, UpstreamStreamCut, UpstreamTimeout
from truecost.upstream.openai_compat import OpenAICompatibleUpstream, _aiohttp

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
           "refusal": "content_filter"}


def to_anthropic(body: dict) -> dict:
    system = [m.get("content") for m in body["messages"] if m.get("role") in ("system", "developer")]
    msgs = [{"role": m["role"], "content": m.get("content") or ""} for m in body["messages"]
            if m.get("role") in ("user", "assistant")]
    out: dict[str, Any] = {"model": body["model"], "messages": msgs,
                           "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or 1024}
    if system:
        out["system"] = "\n\n".join(str(s) for s in system)
    for k in ("temperature", "top_p"):
        if k in body:
            out[k] = body[k]
    if body.get("stop"):
        out["stop_sequences"] = body["stop"] if isinstance(body["stop"], list) else [body["stop"]]
    return out


def openai_usage(u: dict) -> dict:
    cached = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + cached + (u.get("cache_creation_input_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": u.get("output_tokens") or 0,
            "total_tokens": prompt + (u.get("output_tokens") or 0), "prompt_tokens_details": {"cached_tokens": cached}}


class AnthropicUpstream(OpenAICompatibleUpstream):
    flavour = "anthropic"

    def __init__(self, base_url: str = "https://api.anthropic.com/v1", api_key: str | None = None,
                 version: str = "2023-06-01", **kw: Any) -> None:
        super().__init__(base_url, None, **kw)
        self.headers = {"anthropic-version": version, **({"x-api-key": api_key} if api_key else {})}

    async def complete(self, body: dict) -> dict:
        resp = await self._post("/messages", to_anthropic(body))
        text = "".join(b.get("text", "") for b in resp.get("content") or [] if b.get("type") == "text")
        usage = resp.get("usage") or {}
        return {"id": resp.get("id"), "object": "chat.completion", "model": resp.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": _FINISH.get(resp.get("stop_reason"), "stop")}],
                "usage": openai_usage(usage), "_truecost_usage": {"flavour": "anthropic", "usage": usage}}

    async def stream(self, body: dict) -> AsyncIterator[dict]:
        aiohttp = _aiohttp()
        payload = {**to_anthropic(body), "stream": True}
        usage: dict = {}
        chunks = 0
        base = {"id": "anthropic-stream", "object": "chat.completion.chunk", "model": body["model"]}
        try:
            async with self._sess().post(self.base_url + "/messages", json=payload) as resp:
                if resp.status >= 400:
                    raise UpstreamHTTPError(resp.status, await resp.text())
                async for raw in resp.content:
                    line = raw.decode("utf-8", errors="replace").strip()
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:].strip())
                    kind = event.get("type")
                    if kind == "message_start":
                        usage.update(event["message"].get("usage") or {})
                    elif kind == "content_block_delta" and event["delta"].get("type") == "text_delta":
                        chunks += 1
                        yield {**base, "choices": [{"index": 0, "delta": {"content": event["delta"]["text"]},
                                                    "finish_reason": None}]}
                    elif kind == "message_delta":
                        usage.update(event.get("usage") or {})
                        yield {**base, "choices": [{"index": 0, "delta": {},
                                                    "finish_reason": _FINISH.get(event["delta"].get("stop_reason"), "stop")}]}
                    elif kind == "error":
                        raise UpstreamStreamCut(f"upstream error event: {event.get('error')}", chunks, openai_usage(usage))
                    elif kind == "message_stop":
                        yield {**base, "choices": [], "usage": openai_usage(usage),
                               "_truecost_usage": {"flavour": "anthropic", "usage": usage}}
                        return
                raise UpstreamStreamCut(f"stream ended without message_stop after {chunks} chunks", chunks,
                                        openai_usage(usage) if usage else None)
        except asyncio.TimeoutError as exc:
            raise (UpstreamTimeout(f"upstream timed out: {exc!r}") if not chunks else
                   UpstreamStreamCut("stream timed out", chunks, None)) from None
        except aiohttp.ClientError as exc:
            raise (UpstreamConnectionError(f"upstream connection failed: {exc!r}") if not chunks else
                   UpstreamStreamCut(f"stream cut: {exc!r}", chunks, None)) from None
