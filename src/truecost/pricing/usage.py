"""Provider usage objects -> disjoint billing classes.

Providers count tokens differently, and mixing the rules up is the most common pricing
bug in this field:

* OpenAI (and every OpenAI-compatible server): ``prompt_tokens`` INCLUDES
  ``prompt_tokens_details.cached_tokens``, ``.cache_write_tokens`` (prompt-cache writes, billed
  at the write price on models that list one) and ``.audio_tokens``; ``completion_tokens``
  INCLUDES ``completion_tokens_details.reasoning_tokens`` and ``.audio_tokens``. The Responses
  API spells the same ``input_tokens`` / ``input_tokens_details`` / ``output_tokens``.
* Anthropic: ``input_tokens`` EXCLUDES ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` (split into 5-minute and 1-hour writes when the
  ``cache_creation`` object is present; the total is a 5-minute write otherwise);
  ``server_tool_use.web_search_requests`` are priced per search; ``service_tier`` and
  ``inference_geo`` are priced attributes of the call.
* Google Gemini: ``promptTokenCount`` INCLUDES ``cachedContentTokenCount``;
  ``toolUsePromptTokenCount`` (tool results fed back to the model) is billed as input on top
  of it; ``thoughtsTokenCount`` is separate from ``candidatesTokenCount``; audio input is
  priced apart when ``promptTokensDetails`` reports it.

Missing usage is not zero usage: ``normalise(None)`` and ``normalise({})`` raise
``MissingUsageError``, and the tracker records such a call with ``cost = None`` and a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from truecost.errors import InvalidQuantityError
from truecost.types import TokenUsage

# Billing classes beyond TokenUsage's six: audio and image tokens, per-call fees.
EXTRA_CLASSES = (
    "input_audio",
    "cached_input_audio",
    "output_audio",
    "input_image",
    "cached_input_image",
    "output_image",
    "web_search",
    "file_search",
    "code_execution",
)


class MissingUsageError(InvalidQuantityError):
    """The provider reported no usage: the cost is unknown, not zero."""


@dataclass(frozen=True, slots=True)
class CallUsage:
    """One call's usage: the token classes, the extra classes, and the attributes that select a price.

    ``attributes`` are read from the call (``processing=batch``, ``service_tier=flex``,
    ``speed=fast``, ``inference_geo=us``, ``region=regional``); standard values are left out.
    """

    tokens: TokenUsage
    extra: Mapping[str, int] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {**self.tokens.as_dict(), **{k: v for k, v in self.extra.items() if v}}


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
    return obj


def _count(obj: Any, *path: str) -> int:
    value = _get(obj, *path)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidQuantityError(f"usage field {'.'.join(path)} must be a non-negative integer, got {value!r}")
    return value


def _first(obj: Any, *paths: tuple[str, ...]) -> int:
    for p in paths:
        if _get(obj, *p) is not None:
            return _count(obj, *p)
    return 0


def _need(part: int, whole: int, what: str, of: str) -> None:
    if part > whole:
        raise InvalidQuantityError(f"{what} ({part}) exceeds {of} ({whole})")


def _attr(obj: Any, key: str) -> str | None:
    value = _get(obj, key)
    return str(value).lower() if isinstance(value, str) and value else None


def _service_attributes(usage: Any, response: Any = None) -> dict[str, str]:
    """service_tier / speed / inference_geo, from the usage object or the whole response."""
    out: dict[str, str] = {}
    for src in (response, usage):
        tier = _attr(src, "service_tier")
        if tier == "batch":
            out["processing"] = "batch"
        elif tier:
            out["service_tier"] = tier
        for key in ("speed", "inference_geo"):
            value = _attr(src, key)
            if value:
                out[key] = value
    return out


def _check_present(usage: Any, flavour: str) -> None:
    if usage is None or (isinstance(usage, Mapping) and not usage):
        raise MissingUsageError(f"no usage reported ({flavour} flavour): the cost is unknown, not zero")


def openai_call(usage: Any, response: Any = None) -> CallUsage:
    """Chat Completions or Responses API usage (dict or SDK object)."""
    _check_present(usage, "openai")
    prompt = _first(usage, ("prompt_tokens",), ("input_tokens",))
    completion = _first(usage, ("completion_tokens",), ("output_tokens",))
    pd, od = ("prompt_tokens_details",), ("completion_tokens_details",)
    ipd, ood = ("input_tokens_details",), ("output_tokens_details",)
    cached = _first(usage, (*pd, "cached_tokens"), (*ipd, "cached_tokens"))
    written = _first(usage, (*pd, "cache_write_tokens"), (*ipd, "cache_write_tokens"))
    audio_in = _first(usage, (*pd, "audio_tokens"), (*ipd, "audio_tokens"))
    image_in = _first(usage, (*pd, "image_tokens"), (*ipd, "image_tokens"))
    reasoning = _first(usage, (*od, "reasoning_tokens"), (*ood, "reasoning_tokens"))
    audio_out = _first(usage, (*od, "audio_tokens"), (*ood, "audio_tokens"))
    _need(cached, prompt, "cached_tokens", "prompt_tokens")
    _need(
        cached + written + audio_in + image_in, prompt, "cached + cache_write + audio + image tokens", "prompt_tokens"
    )
    _need(reasoning, completion, "reasoning_tokens", "completion_tokens")
    _need(reasoning + audio_out, completion, "reasoning + audio tokens", "completion_tokens")
    tokens = TokenUsage(
        input=prompt - cached - written - audio_in - image_in,
        cached_input=cached,
        cache_write_5m=written,
        output=completion - reasoning - audio_out,
        reasoning=reasoning,
    )
    extra = {k: v for k, v in (("input_audio", audio_in), ("input_image", image_in), ("output_audio", audio_out)) if v}
    searches = _count(usage, "web_search_requests")
    if searches:
        extra["web_search"] = searches
    return CallUsage(tokens, extra, _service_attributes(usage, response))


def anthropic_call(usage: Any, response: Any = None) -> CallUsage:
    """Messages API usage (dict or SDK object)."""
    _check_present(usage, "anthropic")
    creation_total = _count(usage, "cache_creation_input_tokens")
    w5 = _count(usage, "cache_creation", "ephemeral_5m_input_tokens")
    w1 = _count(usage, "cache_creation", "ephemeral_1h_input_tokens")
    if _get(usage, "cache_creation") is None:
        w5 = creation_total
    elif creation_total and w5 + w1 != creation_total:
        raise InvalidQuantityError(
            f"cache_creation breakdown ({w5} + {w1}) does not add up to cache_creation_input_tokens ({creation_total})"
        )
    tokens = TokenUsage(
        input=_count(usage, "input_tokens"),
        cached_input=_count(usage, "cache_read_input_tokens"),
        cache_write_5m=w5,
        cache_write_1h=w1,
        output=_count(usage, "output_tokens"),
    )
    extra = {}
    for ours, theirs in (("web_search", "web_search_requests"), ("code_execution", "code_execution_requests")):
        n = _count(usage, "server_tool_use", theirs)
        if n:
            extra[ours] = n
    return CallUsage(tokens, extra, _service_attributes(usage, response))


def _modality(usage: Any, *keys: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in keys:
        for item in _get(usage, key) or []:
            modality = str(_get(item, "modality") or "").lower()
            n = _count(item, "tokenCount") or _count(item, "token_count")
            if modality:
                out[modality] = out.get(modality, 0) + n
        if out:
            break
    return out


def google_call(usage: Any, response: Any = None) -> CallUsage:
    """Gemini ``usageMetadata`` (camelCase or snake_case)."""
    _check_present(usage, "google")

    def c(camel: str, snake: str) -> int:
        return _first(usage, (camel,), (snake,))

    prompt = c("promptTokenCount", "prompt_token_count")
    cached = c("cachedContentTokenCount", "cached_content_token_count")
    tool_prompt = c("toolUsePromptTokenCount", "tool_use_prompt_token_count")
    _need(cached, prompt, "cachedContentTokenCount", "promptTokenCount")
    audio_in = _modality(usage, "promptTokensDetails", "prompt_tokens_details").get("audio", 0)
    audio_cached = _modality(usage, "cacheTokensDetails", "cache_tokens_details").get("audio", 0)
    _need(audio_cached, cached, "cached audio tokens", "cachedContentTokenCount")
    _need(audio_in - audio_cached, prompt - cached, "uncached audio tokens", "uncached prompt tokens")
    tokens = TokenUsage(
        input=prompt - cached - (audio_in - audio_cached) + tool_prompt,
        cached_input=cached - audio_cached,
        output=c("candidatesTokenCount", "candidates_token_count"),
        reasoning=c("thoughtsTokenCount", "thoughts_token_count"),
    )
    extra = {k: v for k, v in (("input_audio", audio_in - audio_cached), ("cached_input_audio", audio_cached)) if v}
    return CallUsage(tokens, extra, _service_attributes(usage, response))


def from_openai(usage: Any) -> TokenUsage:
    return openai_call(usage).tokens


def from_anthropic(usage: Any) -> TokenUsage:
    return anthropic_call(usage).tokens


def from_google(usage: Any) -> TokenUsage:
    return google_call(usage).tokens


FLAVOURS = {"openai": openai_call, "anthropic": anthropic_call, "google": google_call}


def normalise_call(usage: Any, flavour: str, response: Any = None) -> CallUsage:
    """Any usage (a provider object, a TokenUsage, a CallUsage) -> CallUsage.

    Raises MissingUsageError for ``None`` or an empty mapping: missing usage is not zero usage.
    """
    if isinstance(usage, CallUsage):
        return usage
    if isinstance(usage, TokenUsage):
        return CallUsage(usage)
    try:
        convert = FLAVOURS[flavour]
    except KeyError:
        raise ValueError(f"unknown usage flavour {flavour!r}; one of {', '.join(FLAVOURS)}") from None
    return convert(usage, response)


def normalise(usage: Any, flavour: str) -> TokenUsage:
    """The token classes of a usage object (see ``normalise_call`` for audio, fees and attributes)."""
    return normalise_call(usage, flavour).tokens
