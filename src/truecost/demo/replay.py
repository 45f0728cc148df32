"""The replay upstream: an OpenAI-compatible endpoint that runs no model.

For machines where compiling llama.cpp is not wanted (``truecost demo --no-local-model``).
It answers from the article in the system message with a fixed template, counts tokens
with a real tokenizer, and names itself ``replay:SmolLM2-135M-Instruct`` in every answer,
so no output can be mistaken for a model's.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Sequence

REPLAY_MODEL = "replay:SmolLM2-135M-Instruct"


def replay_answer(system: str, question: str) -> str:
    article = system.split("Article:", 1)[-1].strip()
    title, _, body = article.partition(".")
    return (f"[replay] About \"{question.strip()[:80]}\": see \"{title.strip()}\". {body.strip()[:160]} "
            "Reply here if you need an agent.")


def create_replay_app(count_tokens: Callable[[Sequence[str]], list[int]]):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request):
        try:
            body = await request.json()
            messages = body["messages"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return JSONResponse({"error": {"message": "expected an OpenAI chat body", "type": "invalid_request_error"}},
                                status_code=400)
        system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
        question = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        answer = replay_answer(system, question)
        p_tokens, c_tokens = count_tokens([" ".join(str(m.get("content") or "") for m in messages), answer])
        return JSONResponse({"id": f"replay-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                             "model": REPLAY_MODEL,
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": answer}}],
                             "usage": {"prompt_tokens": p_tokens, "completion_tokens": c_tokens,
                                       "total_tokens": p_tokens + c_tokens}})

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": REPLAY_MODEL, "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])
