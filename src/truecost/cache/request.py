"""What a cache key is made of: the scope (a hard partition), the text to embed, the exact fingerprint.

The scope is deny by default. It is the hash of one canonical JSON document holding:

* the partition string the caller passes (the gateway passes the key's tenant, else
  ``key:<key name>``, else ``anonymous``), taken as an opaque string and compared exactly;
* ``model``;
* the conversation except the last user turn's text: every system/developer message and
  everything before *and after* the last user message (with the last user message's position,
  so an assistant prefill after it is not mistaken for history before it);
* the last user message's fields other than its text (``name``, extra keys on its parts);
* every other top-level field of the request, name and value, EXCEPT the few listed in
  ``ANSWER_NEUTRAL`` below. That covers the parameters known to change the answer
  (``KNOWN_SCOPE_PARAMS``: sampling, token limits, tools and functions, response formats,
  guided decoding, ...) and, just as well, any field this module has never heard of: an answer
  produced with an unknown parameter is never served to a request without it, or with another
  value of it, neither exactly nor semantically.

Two requests in different scopes never see each other's entries, whatever their similarity.
Only the last user message's text is embedded (the semantic tier).

Some requests are not cached at all (``NotCacheable``): no messages or no model; a field
in ``UNCACHEABLE_PARAMS``; a non-text content part (image, audio, file) that points at remote
content by URL — the cache cannot see the bytes behind a URL, and they may change. Inline
non-text content (``data:`` URLs, base64 audio, file ids) is keyed exactly: such a request can
hit the exact tier with the identical request, never the semantic tier.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping, cast

from truecost.cache.refusal import RefusalDetector, default_detector

# Top-level fields documented to leave the answer unchanged. Only these stay out of the scope;
# adding a name here is a claim that two requests differing only in it deserve the same answer.
ANSWER_NEUTRAL: dict[str, str] = {
    "model": "handled on its own: always part of the scope",
    "messages": "handled on its own: history in the scope, the last user turn's text embedded",
    "stream": "delivery only: a hit is replayed as a stream when one was asked for",
    "stream_options": "delivery only: include_usage adds a usage chunk, the text is the same",
    "user": "an end-user id for the provider's abuse monitoring; never shown to the model",
    "safety_identifier": "OpenAI's successor of `user`; never shown to the model",
    "metadata": "labels stored with the completion (OpenAI stored completions, Anthropic user_id); never "
    "shown to the model",
    "store": "whether the provider keeps the completion for its evals; does not change the completion",
    "service_tier": "the provider's latency/price tier for the same model",
    "prompt_cache_key": "a routing hint for the provider's prompt cache; same prompt, same model",
    "prompt_cache_retention": "how long the provider keeps its prompt cache",
}

# Fields known to change the answer. They are in the scope like any unknown field; the list
# documents them and lets an explicit ``null`` count as absent (the OpenAI-compatible meaning
# of null for these). An unknown field's null is kept: nobody knows what it means there.
KNOWN_SCOPE_PARAMS = frozenset(
    {
        # sampling
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "length_penalty",
        "logit_bias",
        "n",
        "best_of",
        "use_beam_search",
        # length and stopping
        "max_tokens",
        "max_completion_tokens",
        "min_tokens",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "include_stop_str_in_output",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        # output shape
        "response_format",
        "logprobs",
        "top_logprobs",
        "echo",
        "modalities",
        "audio",
        "prediction",
        "verbosity",
        "reasoning_effort",
        "reasoning",
        "thinking",
        # tools and functions
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        # guided / structured decoding (vLLM, SGLang, TGI)
        "guided_choice",
        "guided_regex",
        "guided_json",
        "guided_grammar",
        "guided_whitespace_pattern",
        "guided_decoding_backend",
        "structured_outputs",
        "grammar",
        "json_schema",
        "regex",
        "ebnf",
        # prompt construction (vLLM)
        "chat_template",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "documents",
        "system",
    }
)

# Fields whose presence makes a request uncacheable: their answer depends on the world at the time.
UNCACHEABLE_PARAMS: dict[str, str] = {"web_search_options": "the answer comes from a live web search"}

MAX_QUERY_CHARS = 20_000
SCOPE_VERSION = 2  # bumped when what the scope holds changes: older entries are then never served

_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class NotCacheable(ValueError):
    """The request cannot be cached (neither tier applies)."""


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
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            parts.append(part["text"])
        return "\n".join(parts)
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _remote_reference(value: Any, depth: int = 0) -> bool:
    """True when a non-text part refers to content by a URL (http://, https://, s3://, ...)."""
    if depth > 8:
        return True  # deeper than any content part has reason to be: refuse rather than guess
    if isinstance(value, str):
        return bool(_REMOTE.match(value))
    if isinstance(value, Mapping):
        return any(_remote_reference(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_remote_reference(v, depth + 1) for v in value)
    return False


def _check_parts(messages: list) -> None:
    for m in messages:
        content = m.get("content") if isinstance(m, Mapping) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                continue
            if _remote_reference(part):
                raise NotCacheable("a message refers to remote content by URL")


def _last_turn_extras(msg: Mapping[str, Any]) -> dict:
    """Everything in the last user message except its text: it belongs to the scope."""
    extras = {k: v for k, v in msg.items() if k != "content"}
    content = msg.get("content")
    if isinstance(content, list):
        shape = [{k: v for k, v in p.items() if k != "text"} if isinstance(p, Mapping) else p for p in content]
        if any(p != {"type": "text"} for p in shape):
            extras["content_parts"] = shape
    elif content is not None and not isinstance(content, str):
        extras["content"] = content
    return extras


@dataclass(frozen=True, slots=True)
class CacheKey:
    scope: str  # hex digest of the partition
    fingerprint: str  # hex digest of the whole canonical request (exact tier)
    text: str | None  # what the semantic tier embeds; None when only the exact tier applies
    reason: str | None = None  # why text is None


def scope_params(body: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level fields that partition the cache: all but the answer-neutral ones."""
    return {k: v for k, v in body.items() if k not in ANSWER_NEUTRAL and not (v is None and k in KNOWN_SCOPE_PARAMS)}


def cache_key(body: Mapping[str, Any], scope: str | None) -> CacheKey:
    """Build the key of an OpenAI-shaped chat request.

    ``scope`` is the caller's hard partition, an opaque string (tenant, ``key:<name>``,
    ``anonymous``); ``None`` is a partition of its own, distinct from every string.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise NotCacheable("request has no messages")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise NotCacheable("request has no model")
    for name, why in UNCACHEABLE_PARAMS.items():
        if body.get(name) is not None:
            raise NotCacheable(f"{name}: {why}")
    _check_parts(messages)
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"), default=None
    )
    history = [m for i, m in enumerate(messages) if i != last_user]
    scope_doc = {
        "v": SCOPE_VERSION,
        "partition": scope,
        "model": model,
        "history": history,
        "last_at": last_user,
        "last_extras": _last_turn_extras(messages[last_user]) if last_user is not None else None,
        "params": scope_params(body),
    }
    try:
        scope_hash = hashlib.sha256(_canonical(scope_doc).encode()).hexdigest()[:32]
    except UnicodeEncodeError:  # a lone surrogate: not text any store or embedder can take
        raise NotCacheable("request holds invalid unicode") from None
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
        elif not _encodable(raw):
            raise NotCacheable("request holds invalid unicode")
        else:
            text = _norm_text(raw)
    exact_doc = {"scope": scope_hash, "last": messages[last_user] if last_user is not None else None}
    if text is not None:
        exact_doc["last"] = text
    fingerprint = hashlib.sha256(_canonical(exact_doc).encode()).hexdigest()
    return CacheKey(scope=scope_hash, fingerprint=fingerprint, text=text, reason=reason)


_DEFAULT = object()


def cacheable_response(
    response: Mapping[str, Any], status: int = 200, refusals: RefusalDetector | None | object = _DEFAULT
) -> str | None:
    """None when the response may be stored, else the reason it may not.

    Stored only: a 2xx whose every choice finished with ``stop``, without tool or function
    calls, without a ``refusal`` field, with non-empty text that ``refusals`` (the default
    detector unless given; ``None`` disables it) does not take for a refusal written as text.
    """
    if not 200 <= status < 300:
        return f"status {status}"
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices"
    # refusals is the _DEFAULT sentinel, a detector, or None (no detection)
    detector = default_detector() if refusals is _DEFAULT else cast("RefusalDetector | None", refusals)
    for c in choices:
        if not isinstance(c, Mapping):
            return "malformed choice"
        if c.get("finish_reason") != "stop":
            return f"finish_reason {c.get('finish_reason')!r}"
        msg = c.get("message") or {}
        if not isinstance(msg, Mapping):
            return "malformed message"
        if msg.get("tool_calls") or msg.get("function_call"):
            return "tool calls"
        if msg.get("refusal"):
            return "refusal"
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            return "empty content"
        if detector is not None and (found := detector.match(content)) is not None:
            return f"refusal written as text ({found!r})"
    return None
