"""The replay upstream: an OpenAI-compatible endpoint that runs no model.

For machines where compiling llama.cpp is not wanted (``truecost demo --no-local-model``).
It answers with SmolLM2-135M-Instruct's recorded answer to the same article and question
(``recorded_smollm2.jsonl``, recorded by a real `truecost demo` run) and, for anything not
recorded, with a template built from the article. Token counts come from a real tokenizer.
Every answer names the model ``replay:SmolLM2-135M-Instruct``, and templates start with
``[replay]``, so no output can be mistaken for a live model's.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import resources
from typing import Callable, Sequence

REPLAY_MODEL = "replay:SmolLM2-135M-Instruct"


def recording_key(article: str, question: str) -> str:
    return hashlib.sha256(f"{article.strip()}\x00{question.strip()}".encode()).hexdigest()[:24]


def load_recording() -> dict[str, str]:
    path = resources.files("truecost.demo") / "recorded_smollm2.jsonl"
    if not path.is_file():
        return {}
    return {r["key"]: r["answer"] for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r}


def template_answer(article: str, question: str) -> str:
    title, _, body = article.partition(".")
    return (
        f'[replay] About "{question.strip()[:80]}": see "{title.strip()}". {body.strip()[:160]} '
        "Reply here if you need an agent."
    )


class ReplayCounter:
    def __init__(self) -> None:
        self.recorded = 0
        self.template = 0


def create_replay_app(count_tokens: Callable[[Sequence[str]], list[int]], counter: ReplayCounter | None = None):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    recording = load_recording()
    counter = counter if counter is not None else ReplayCounter()

    async def chat(request):
        try:
            body = await request.json()
            messages = body["messages"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return JSONResponse(
                {"error": {"message": "expected an OpenAI chat body", "type": "invalid_request_error"}}, status_code=400
            )
        system = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
        question = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        article = system.split("Article:", 1)[-1].strip()
        answer = recording.get(recording_key(article, question))
        if answer is None:
            answer = template_answer(article, question)
            counter.template += 1
        else:
            counter.recorded += 1
        p_tokens, c_tokens = count_tokens([" ".join(str(m.get("content") or "") for m in messages), answer])
        return JSONResponse(
            {
                "id": f"replay-{time.time_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": REPLAY_MODEL,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                "usage": {
                    "prompt_tokens": p_tokens,
                    "completion_tokens": c_tokens,
                    "total_tokens": p_tokens + c_tokens,
                },
            }
        )

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": REPLAY_MODEL, "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])
