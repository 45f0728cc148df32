"""The Anthropic Messages API as an upstream: OpenAI-shaped requests in, OpenAI-shaped answers out.

The pipeline speaks OpenAI chat completions; this client translates both ways and hands
the pipeline Anthropic's own usage beside the answer (``NativeUsage``), so pricing applies
Anthropic's counting rules (cache reads and 5-minute / 1-hour cache writes priced apart).
Anthropic has no embeddings API: ``supports_embeddings`` is False and ``embed`` raises UpstreamUnsupported.
"""

from __future__ import annotations

import json
from typing import Any, AsyncGenerator, Iterable

from truecost.errors import UpstreamError
from truecost.upstream.base import NativeUsage, StreamChunk, UpstreamResponse
from truecost.upstream.errors import UpstreamBadResponse, UpstreamStreamCut, UpstreamUnsupported, in_band_error
from truecost.upstream.http import TransportClient

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def to_anthropic(body: dict) -> dict:
    system = [m.get("content") for m in body["messages"] if m.get("role") in ("system", "developer")]
    msgs = [
        {"role": m["role"], "content": m.get("content") or ""}
        for m in body["messages"]
        if m.get("role") in ("user", "assistant")
    ]
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": msgs,
        "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or 1024,
    }
    if system:
        out["system"] = "\n\n".join(str(s) for s in system)
    for k in ("temperature", "top_p"):
        if k in body:
            out[k] = body[k]
    if body.get("stop"):
        out["stop_sequences"] = body["stop"] if isinstance(body["stop"], list) else [body["stop"]]
    return out


def _count(value: Any) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def openai_usage(u: dict) -> dict:
    """Anthropic usage in OpenAI's shape (for the client); the raw usage goes to pricing untouched."""
    cached = _count(u.get("cache_read_input_tokens"))
    prompt = _count(u.get("input_tokens")) + cached + _count(u.get("cache_creation_input_tokens"))
    output = _count(u.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _is_error(answer: dict) -> bool:
    return answer.get("type") == "error" or ("error" in answer and not answer.get("content"))


class AnthropicUpstream(TransportClient):
    supports_embeddings = False

    def __init__(
        self,
        base_url: str = "https://api.anthropic.com/v1",
        api_key: str | None = None,
        *,
        version: str = "2023-06-01",
        connect_timeout: float = 5.0,
        first_byte_timeout: float = 60.0,
        idle_timeout: float = 30.0,
        max_retries: int = 2,
        backoff: float = 0.25,
        max_connections: int = 256,
        timeout: float | None = None,
    ) -> None:
        super().__init__(
            base_url,
            {"anthropic-version": version, **({"x-api-key": api_key} if api_key else {})},
            api_key,
            connect_timeout=connect_timeout,
            first_byte_timeout=first_byte_timeout,
            idle_timeout=idle_timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_connections=max_connections,
            timeout=timeout,
        )

    async def complete(self, body: dict) -> UpstreamResponse:
        resp = await self._http.post_json("/messages", to_anthropic(body))
        if not isinstance(resp, dict):
            raise UpstreamBadResponse("upstream answered JSON that is not an object")
        if _is_error(resp):
            raise in_band_error(resp, self._http.secrets)
        content, raw_usage = resp.get("content"), resp.get("usage")
        blocks: list[Any] = content if isinstance(content, list) else []
        text = "".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        shaped = openai_usage(usage)
        return UpstreamResponse(
            {
                "id": resp.get("id"),
                "object": "chat.completion",
                "model": resp.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": _FINISH.get(str(resp.get("stop_reason")), "stop"),
                    }
                ],
                "usage": shaped,
            },
            shaped,
            NativeUsage("anthropic", usage),
        )

    def stream(self, body: dict) -> AsyncGenerator[StreamChunk, None]:
        payload = {**to_anthropic(body), "stream": True}
        model, secrets = body["model"], self._http.secrets
        return self._http.stream("/messages", payload, lambda: _EventParser(model, secrets))

    async def embed(self, body: dict) -> UpstreamResponse:
        raise UpstreamUnsupported("the Anthropic API has no embeddings endpoint")


class _EventParser:
    """Anthropic's server-sent events -> OpenAI chat completion chunks; ends at ``message_stop``."""

    def __init__(self, model: str, secrets: tuple[str, ...]) -> None:
        self.base = {"id": "anthropic-stream", "object": "chat.completion.chunk", "model": model}
        self.secrets = secrets
        self.chunks, self.done = 0, False
        self.usage: dict = {}

    @property
    def cut_usage(self) -> dict | None:
        return openai_usage(self.usage) if self.usage else None

    def _cut(self, why: str) -> UpstreamError:
        """A cut once chunks were handed out; before any, a bad response (the caller may try elsewhere)."""
        if not self.chunks:
            return UpstreamBadResponse(f"{why} before any chunk")
        return UpstreamStreamCut(f"{why} after {self.chunks} chunks", self.chunks, self.cut_usage)

    def feed(self, line: str) -> Iterable[StreamChunk]:
        if not line.startswith("data:"):
            return ()
        try:
            event = json.loads(line[5:].strip())
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise self._cut("malformed event")
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            self.usage.update(usage if isinstance(usage, dict) else {})
        elif kind == "content_block_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                self.chunks += 1
                return (
                    StreamChunk(
                        {
                            **self.base,
                            "choices": [
                                {"index": 0, "delta": {"content": str(delta.get("text", ""))}, "finish_reason": None}
                            ],
                        }
                    ),
                )
        elif kind == "message_delta":
            usage = event.get("usage")
            self.usage.update(usage if isinstance(usage, dict) else {})
            given = event.get("delta")
            stop: dict[str, Any] = given if isinstance(given, dict) else {}
            self.chunks += 1
            return (
                StreamChunk(
                    {
                        **self.base,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {},
                                "finish_reason": _FINISH.get(str(stop.get("stop_reason")), "stop"),
                            }
                        ],
                    }
                ),
            )
        elif kind == "error":
            err = in_band_error(event, self.secrets)
            if not self.chunks:
                raise err
            raise self._cut("upstream sent an error event" + (f" ({err.error_type})" if err.error_type else ""))
        elif kind == "message_stop":
            self.done = True
            self.chunks += 1
            shaped = openai_usage(self.usage)
            return (
                StreamChunk(
                    {**self.base, "choices": [], "usage": shaped}, shaped, NativeUsage("anthropic", self.usage)
                ),
            )
        return ()

    def end(self) -> None:
        if not self.done:
            raise self._cut("stream ended without message_stop")
