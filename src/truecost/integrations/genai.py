"""GenAI span attributes -> what was called and how many tokens of each billing class it used.

Three spellings are read, newest first:

* the OpenTelemetry GenAI semantic conventions: ``gen_ai.operation.name``, ``gen_ai.provider.name``
  (``gen_ai.system`` before it), ``gen_ai.request.model`` / ``gen_ai.response.model``,
  ``gen_ai.usage.input_tokens`` / ``output_tokens`` / ``cache_read.input_tokens`` /
  ``cache_creation.input_tokens`` / ``reasoning.output_tokens``;
* OpenLLMetry (Traceloop) names: ``gen_ai.usage.prompt_tokens`` / ``completion_tokens``,
  ``gen_ai.usage.cache_read_input_tokens``, ``gen_ai.usage.reasoning_tokens``, ``llm.usage.*``,
  ``llm.request.type``;
* OpenInference (Arize Phoenix) names: ``openinference.span.kind``, ``llm.model_name``,
  ``embedding.model_name``, ``llm.provider`` / ``llm.system``, ``llm.token_count.prompt`` /
  ``completion`` / ``total`` and their ``prompt_details`` / ``completion_details``.

Counting rule: the conventions say input tokens INCLUDE cache reads and writes, and output
tokens INCLUDE reasoning tokens, whatever the provider's own API does (an Anthropic
instrumentation adds ``cache_read_input_tokens`` into ``input_tokens``). A span whose cache
counts exceed its input count was evidently written the other way (raw Anthropic style) and is
read that way; the event says so in ``details["input_counting"]``.
"""

from __future__ import annotations

from typing import Any, Mapping

from truecost.pricing.usage import CallUsage
from truecost.types import TokenUsage

MODEL_KEYS = (
    "gen_ai.response.model",
    "gen_ai.request.model",
    "llm.model_name",
    "embedding.model_name",
    "llm.response.model",
    "llm.request.model",
)
PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
INPUT_KEYS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt",
    "llm.usage.prompt_tokens",
)
OUTPUT_KEYS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
    "llm.usage.completion_tokens",
)
TOTAL_KEYS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens", "llm.token_count.total")
CACHE_READ_KEYS = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.token_count.prompt_details.cache_read",
)
CACHE_WRITE_KEYS = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.token_count.prompt_details.cache_write",
)
REASONING_KEYS = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens",
    "llm.token_count.completion_details.reasoning",
)
AUDIO_IN_KEYS = ("llm.token_count.prompt_details.audio",)
AUDIO_OUT_KEYS = ("llm.token_count.completion_details.audio",)
SERVICE_TIER_KEYS = (
    "openai.response.service_tier",
    "gen_ai.openai.response.service_tier",
    "openai.request.service_tier",
    "gen_ai.openai.request.service_tier",
)

_TOKEN_KEYS = frozenset(INPUT_KEYS + OUTPUT_KEYS + TOTAL_KEYS)
_EMBED_OPS = frozenset({"embeddings", "embedding", "embed"})
_GEN_OPS = frozenset({"chat", "text_completion", "generate_content", "completion", "responses", "rerank"})
_OI_KINDS = {"LLM": "generate", "EMBEDDING": "embed"}

# gen_ai.provider.name (and older spellings) -> the prefix truecost's price names understand.
PROVIDER_PREFIX = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure.ai.openai": "azure",
    "az.ai.openai": "azure",
    "azure_openai": "azure",
    "azure": "azure",
    "azure.ai.inference": "azure_ai",
    "aws.bedrock": "bedrock",
    "bedrock": "bedrock",
    "gcp.gemini": "gemini",
    "gcp.gen_ai": "gemini",
    "gemini": "gemini",
    "google": "google",
    "gcp.vertex_ai": "vertex_ai",
    "vertex_ai": "vertex_ai",
    "vertexai": "vertex_ai",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "mistral": "mistral",
    "groq": "groq",
    "deepseek": "deepseek",
    "x_ai": "xai",
    "xai": "xai",
    "cohere": "cohere",
    "together_ai": "together_ai",
    "together": "together_ai",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
    # LangChain's ls_provider spellings
    "google_genai": "gemini",
    "google_vertexai": "vertex_ai",
    "bedrock_converse": "bedrock",
    "azure_openai_chat": "azure",
}
# Models served on one's own hardware: a token price does not apply (price them with a compute rule).
SELF_HOSTED = frozenset(
    {"ollama", "ollama_chat", "vllm", "hosted_vllm", "llama_cpp", "llama.cpp", "lmstudio", "lm_studio", "local", "tgi"}
)


class UsageError(ValueError):
    """A token attribute that is not a count: the call is recorded unpriced, with this reason."""


def first(attrs: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        v = attrs.get(k)
        if v is not None and v != "":
            return v
    return None


def _as_count(key: str, v: Any) -> int:
    if v.__class__ is int:
        n = v
    elif isinstance(v, bool):
        raise UsageError(f"{key} is a bool, not a token count")
    elif isinstance(v, int):
        n = int(v)
    elif isinstance(v, float) and v.is_integer():
        n = int(v)
    elif isinstance(v, str) and v.strip().isdigit():
        n = int(v.strip())
    else:
        raise UsageError(f"{key} = {v!r} is not a whole token count")
    if n < 0:
        raise UsageError(f"{key} = {n} is negative")
    return n


_GROUPS = (
    INPUT_KEYS,
    OUTPUT_KEYS,
    TOTAL_KEYS,
    CACHE_READ_KEYS,
    CACHE_WRITE_KEYS,
    REASONING_KEYS,
    AUDIO_IN_KEYS,
    AUDIO_OUT_KEYS,
)
# attribute key -> (group, rank within the group: the lower the rank, the newer the spelling)
_KEY_INDEX = {k: (g, rank) for g, keys in enumerate(_GROUPS) for rank, k in enumerate(keys)}


def _counts(attrs: Mapping[str, Any]) -> list:
    """One pass over the attributes: each token group's count (None when absent)."""
    found: list = [None] * len(_GROUPS)
    ranks = [99] * len(_GROUPS)
    index = _KEY_INDEX
    for k, v in attrs.items():
        hit = index.get(k)
        if hit is not None and v is not None and hit[1] < ranks[hit[0]]:
            found[hit[0]] = _as_count(k, v)
            ranks[hit[0]] = hit[1]
    return found


def genai_kind(attrs: Mapping[str, Any]) -> str | None:
    """'generate' or 'embed' for a GenAI span, None for any other span."""
    op = attrs.get("gen_ai.operation.name") or attrs.get("llm.request.type")
    if isinstance(op, str):
        op = op.lower()
        if op in _EMBED_OPS:
            return "embed"
        if op in _GEN_OPS:
            return "generate"
    oi = attrs.get("openinference.span.kind")
    if isinstance(oi, str) and oi.upper() in _OI_KINDS:
        return _OI_KINDS[oi.upper()]
    if "embedding.model_name" in attrs:
        return "embed"
    if first(attrs, MODEL_KEYS) is not None or not _TOKEN_KEYS.isdisjoint(attrs):
        return "generate" if not isinstance(op, str) or op not in _EMBED_OPS else "embed"
    return None


def model_of(attrs: Mapping[str, Any]) -> str | None:
    m = first(attrs, MODEL_KEYS)
    return str(m) if m is not None else None


def provider_of(attrs: Mapping[str, Any]) -> str | None:
    p = first(attrs, PROVIDER_KEYS)
    return str(p).lower() if p is not None else None


def price_name(provider: str | None, model: str) -> tuple[str | None, str | None]:
    """(the name to look the price up under, or None with a reason when no token price applies)."""
    if provider in SELF_HOSTED:
        return None, (
            f"self-hosted provider {provider!r}: a token price does not apply; price these spans with a compute rule"
        )
    prefix = PROVIDER_PREFIX.get(provider or "")
    if prefix and not model.lower().startswith(prefix + "/"):
        return f"{prefix}/{model}", None
    return model, None


def usage_of(attrs: Mapping[str, Any], kind: str) -> tuple[CallUsage | None, str | None, str | None]:
    """(usage, why it is missing, input counting note). Raises UsageError for a count that is not one."""
    prompt, completion, total, cached, written, reasoning, audio_in, audio_out = _counts(attrs)
    if prompt is None and total is not None:
        if completion is not None and completion <= total:
            prompt = total - completion
        elif kind == "embed":
            prompt, completion = total, 0
    if prompt is None and completion is None:
        return None, "the span carries no token counts", None
    prompt, completion = prompt or 0, completion or 0
    cached, written, audio_in = cached or 0, written or 0, audio_in or 0
    reasoning, audio_out = reasoning or 0, audio_out or 0
    call, note = inclusive_usage(
        prompt, completion, cached=cached, written=written, reasoning=reasoning, audio_in=audio_in, audio_out=audio_out
    )
    tier = first(attrs, SERVICE_TIER_KEYS)
    if isinstance(tier, str) and tier:
        call = CallUsage(call.tokens, call.extra, {"service_tier": tier.lower()})
    return call, None, note


def inclusive_usage(
    prompt: int,
    completion: int,
    *,
    cached: int = 0,
    written: int = 0,
    reasoning: int = 0,
    audio_in: int = 0,
    audio_out: int = 0,
) -> tuple[CallUsage, str | None]:
    """Counts where input includes cache reads/writes and output includes reasoning (the GenAI
    conventions, LangChain's usage_metadata, LlamaIndex) -> disjoint billing classes."""
    note = None
    if cached + written + audio_in > prompt:  # written the provider's way: input excludes the cache
        uncached, note = prompt, "cache tokens not included in input tokens"
    else:
        uncached = prompt - cached - written - audio_in
    output = completion - reasoning - audio_out if reasoning + audio_out <= completion else completion
    tokens = TokenUsage(input=uncached, cached_input=cached, cache_write_5m=written, output=output, reasoning=reasoning)
    extra = {k: v for k, v in (("input_audio", audio_in), ("output_audio", audio_out)) if v}
    return CallUsage(tokens, extra), note
