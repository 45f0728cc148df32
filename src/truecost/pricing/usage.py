"""Provider usage objects -> disjoint TokenUsage classes.

Providers count tokens differently, and mixing the rules up is the most common pricing
bug in this field:

* OpenAI (and every OpenAI-compatible server): ``prompt_tokens`` INCLUDES
  ``prompt_tokens_details.cached_tokens``; ``completion_tokens`` INCLUDES
  ``completion_tokens_details.reasoning_tokens``.
* Anthropic: ``input_tokens`` EXCLUDES ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` (split into 5-minute and 1-hour writes when the
  ``cache_creation`` object is present; the total is a 5-minute write otherwise).
* Google Gemini: ``promptTokenCount`` INCLUDES ``cachedContentTokenCount``;
  ``thoughtsTokenCount`` is separate from ``candidatesTokenCount``.
"""

from __future__ import annotations

from typing import Any

from truecost.errors import InvalidQuantityError
from truecost.types import TokenUsage


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def _count(obj: Any, *path: str) -> int:
    value = _get(obj, *path)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidQuantityError(f"usage field {'.'.join(path)} must be a non-negative integer, got {value!r}")
    return value


def from_openai(usage: Any) -> TokenUsage:
    """Chat Completions or Responses API usage (dict or SDK object)."""
    prompt = _count(usage, "prompt_tokens") or _count(usage, "input_tokens")
    completion = _count(usage, "completion_tokens") or _count(usage, "output_tokens")
    cached = _count(usage, "prompt_tokens_details", "cached_tokens") or _count(usage, "input_tokens_details", "cached_tokens")
    reasoning = (_count(usage, "completion_tokens_details", "reasoning_tokens")
                 or _count(usage, "output_tokens_details", "reasoning_tokens"))
    if cached > prompt:
        raise InvalidQuantityError(f"cached_tokens ({cached}) exceeds prompt_tokens ({prompt})")
    if reasoning > completion:
        raise InvalidQuantityError(f"reasoning_tokens ({reasoning}) exceeds completion_tokens ({completion})")
    return TokenUsage(input=prompt - cached, cached_input=cached, output=completion - reasoning, reasoning=reasoning)


def from_anthropic(usage: Any) -> TokenUsage:
    """Messages API usage (dict or SDK object)."""
    creation_total = _count(usage, "cache_creation_input_tokens")
    w5 = _count(usage, "cache_creation", "ephemeral_5m_input_tokens")
    w1 = _count(usage, "cache_creation", "ephemeral_1h_input_tokens")
    if _get(usage, "cache_creation") is None:
        w5 = creation_total
    elif creation_total and w5 + w1 != creation_total:
        raise InvalidQuantityError(
            f"cache_creation breakdown ({w5} + {w1}) does not add up to cache_creation_input_tokens ({creation_total})")
    return TokenUsage(
        input=_count(usage, "input_tokens"),
        cached_input=_count(usage, "cache_read_input_tokens"),
        cache_write_5m=w5,
        cache_write_1h=w1,
        output=_count(usage, "output_tokens"),
    )


def from_google(usage: Any) -> TokenUsage:
    """Gemini ``usageMetadata`` (camelCase or snake_case)."""
    def c(camel: str, snake: str) -> int:
        return _count(usage, camel) or _count(usage, snake)

    prompt = c("promptTokenCount", "prompt_token_count")
    cached = c("cachedContentTokenCount", "cached_content_token_count")
    if cached > prompt:
        raise InvalidQuantityError(f"cachedContentTokenCount ({cached}) exceeds promptTokenCount ({prompt})")
    return TokenUsage(input=prompt - cached, cached_input=cached,
                      output=c("candidatesTokenCount", "candidates_token_count"),
                      reasoning=c("thoughtsTokenCount", "thoughts_token_count"))


FLAVOURS = {"openai": from_openai, "anthropic": from_anthropic, "google": from_google}


def normalise(usage: Any, flavour: str) -> TokenUsage:
    if isinstance(usage, TokenUsage):
        return usage
    try:
        return FLAVOURS[flavour](usage)
    except KeyError:
        raise ValueError(f"unknown usage flavour {flavour!r}; one of {', '.join(FLAVOURS)}") from None
