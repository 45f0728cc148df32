"""Replay a stored chat completion as a stream of OpenAI-shaped chunks."""

from __future__ import annotations

import time
from typing import Any, Iterator, Mapping


def replay_chunks(
    answer: Mapping[str, Any],
    chunk_chars: int = 24,
    include_usage: bool = False,
    usage: Mapping[str, Any] | None = None,
) -> Iterator[dict]:
    """The stored answer as ``chat.completion.chunk`` dicts: role, content pieces, finish, (usage).

    ``usage``: the tokens really spent on this answer (a cascade's); a cache hit spent none."""
    base = {
        "id": answer.get("id", "cached"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": answer.get("model"),
    }
    for idx, choice in enumerate(answer.get("choices") or []):
        msg = choice.get("message") or {}
        yield {
            **base,
            "choices": [{"index": idx, "delta": {"role": msg.get("role", "assistant")}, "finish_reason": None}],
        }
        content = msg.get("content") or ""
        for start in range(0, len(content), chunk_chars):
            yield {
                **base,
                "choices": [
                    {"index": idx, "delta": {"content": content[start : start + chunk_chars]}, "finish_reason": None}
                ],
            }
        yield {**base, "choices": [{"index": idx, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}]}
    if include_usage:
        spent = dict(usage) if usage else {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        yield {**base, "choices": [], "usage": spent}
