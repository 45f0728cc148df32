"""What a cache key is made of: the scope (a hard partition), the text to embed, the exact fingerprint.

Scope: tenant, model, every system/developer message, the conversation before the last
user turn, tools and tool choice, and the sampling parameters that change the answer.
Two requests in different scopes never see each other's entries, whatever their
similarity. Only the last user message's text is embedded.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping

# Parameters that change what a correct answer is. Anything else (user, metadata,
# stream, stream_options) does not partition the cache.
SCOPE_PARAMS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "seed",
                "response_format", "presence_penalty", "frequency_penalty", "logit_bias", "reasoning_effort",
                "tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs")
MAX_QUERY_CHARS = 20_000


class NotCacheable(ValueError):
    """The request cannot be looked up semantically (the exact tier may still apply)."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _norm_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _text_of(content: Any) -> str | None:
    """The text of a message's content; None when it has non-text parts (images, audio, files)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                return None
            parts.append(str(part.get("text", "")))
        return "\n".join(parts)
    return None


@dataclass(frozen=True, slots=True)
class CacheKey:
    scope: str  # hex digest of the partition
    fingerprint: str  # hex digest of the whole canonical request (exact tier)
    text: str | None  # what the semantic tier embeds; None when only the exact tier applies
    reason: str | None = None  # why text is None


def cache_key(body: Mapping[str, Any], tenant: str | None) -> CacheKey:
    """Build the key of an OpenAI-shaped chat request."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise NotCacheable("request has no messages")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise NotCacheable("request has no model")
    last_user = max((i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"),
                    default=None)
    params = {k: body[k] for k in SCOPE_PARAMS if k in body and body[k] is not None}
    history = [m for i, m in enumerate(messages) if i != last_user]
    scope_doc = {"tenant": tenant, "model": model, "history": history, "params": params}
    scope = hashlib.sha256(_canonical(scope_doc).encode()).hexdigest()[:32]
    text = reason = None
    if last_user is None:
        reason = "no user message"
    else:
        raw = _text_of(messages[last_user].get("content"))
        if raw is None:
            reason = "the last user message has non-text parts"
        elif not raw.strip():
            reason = "the last user message is empty"
        elif len(raw) > MAX_QUERY_CHARS:
            reason = f"the last user message is longer than {MAX_QUERY_CHARS:,} characters"
        else:
            text = _norm_text(raw)
    exact_doc = {"scope": scope, "last": messages[last_user] if last_user is not None else None}
    if text is not None:
        exact_doc["last"] = text
    fingerprint = hashlib.sha256(_canonical(exact_doc).encode()).hexdigest()
    return CacheKey(scope=scope, fingerprint=fingerprint, text=text, reason=reason)


def cacheable_response(response: Mapping[str, Any], status: int = 200) -> str | None:
    """None when the response may be stored, else the reason it may not."""
    if not 200 <= status < 300:
        return f"status {status}"
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices"
    for c in choices:
        if c.get("finish_reason") != "stop":
            return f"finish_reason {c.get('finish_reason')!r}"
        msg = c.get("message") or {}
        if msg.get("tool_calls") or msg.get("function_call"):
            return "tool calls"
        if msg.get("refusal"):
            return "refusal"
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            return "empty content"
    return None
