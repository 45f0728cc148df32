"""An Upstream in memory: canned answers with counted usage, no network. For tests and offline examples."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, AsyncGenerator, Callable

from truecost.upstream.base import StreamChunk, UpstreamResponse
from truecost.upstream.errors import UpstreamUnsupported

DEFAULT_ANSWER = "The refund reaches your account in five to seven working days."


def _words(value: Any) -> int:
    return len(str(value).split())


class MemoryUpstream:
    """Answers every chat with ``answer(body)`` (a fixed text by default). Usage counts words: one prompt token
    per word of the messages, one completion token per word of the answer. Records every request in ``calls``."""

    def __init__(
        self, answer: Callable[[dict], str] | str = DEFAULT_ANSWER, *, supports_embeddings: bool = True, dims: int = 8
    ) -> None:
        self._answer = answer if callable(answer) else (lambda _body, text=answer: text)
        self.supports_embeddings, self.dims = supports_embeddings, dims
        self.calls: list[dict] = []
        self.closed = False
        self._ids = itertools.count(1)

    def _usage(self, body: dict, text: str) -> dict:
        prompt = sum(_words(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
        output = _words(text)
        return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}

    def _base(self, body: dict, kind: str) -> dict:
        return {"id": f"mem-{next(self._ids)}", "object": kind, "created": 0, "model": body.get("model")}

    async def complete(self, body: dict) -> UpstreamResponse:
        self.calls.append(body)
        text = self._answer(body)
        answer = {
            **self._base(body, "chat.completion"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": self._usage(body, text),
        }
        return UpstreamResponse.of(answer)

    async def stream(self, body: dict) -> AsyncGenerator[StreamChunk, None]:
        self.calls.append(body)
        text = self._answer(body)
        base = self._base(body, "chat.completion.chunk")
        for word in text.split(" "):
            yield StreamChunk(
                {**base, "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
            )
        yield StreamChunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        yield StreamChunk.of({**base, "choices": [], "usage": self._usage(body, text)})

    async def embed(self, body: dict) -> UpstreamResponse:
        if not self.supports_embeddings:
            raise UpstreamUnsupported("this upstream has no embeddings endpoint")
        self.calls.append(body)
        given = body.get("input")
        items: list[Any] = given if isinstance(given, list) else [given]
        data = [
            {"object": "embedding", "index": i, "embedding": self._vector(str(item))} for i, item in enumerate(items)
        ]
        tokens = sum(_words(item) for item in items)
        return UpstreamResponse.of(
            {
                "object": "list",
                "model": body.get("model"),
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        return [b / 255 for b in digest[: self.dims]]

    async def aclose(self) -> None:
        self.closed = True
