"""Import LiteLLM's ``model_prices_and_context_window.json`` format from a user's file.

Nothing is fetched: the user hands us a file. Per-token float prices become exact
per-1M-token Decimals (through ``repr``, so 3e-07 becomes 0.30, not 0.2999...). Everything the
JSON carries for token pricing is kept: every ``_above_<N>k_tokens`` tier (with its cache
prices), batch prices (``_batches``), service tiers (``_priority``, ``_flex``), cache writes
(5-minute, 1-hour), audio and image tokens, web-search fees. Keys it cannot map are listed per
model, never dropped silently. The entries form the ``litellm`` layer: layered over the
bundled catalog they add a version from the import date and keep the bundled history.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from truecost.errors import PriceFileError
from truecost.pricing.model import PriceEntry, PriceVersion, Tier, Unit, Variant
from truecost.types import Resource

_MILLION = Decimal(1_000_000)
# LiteLLM base field -> truecost rate name (all per token; priced per 1M tokens here)
_BASES = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "input_cost_per_token_cache_hit": "cached_input",
    "cache_creation_input_token_cost": "cache_write",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "cache_creation_input_token_cost_above_12hr": "cache_write_12h",
    "output_cost_per_reasoning_token": "reasoning",
    "input_cost_per_audio_token": "input_audio",
    "output_cost_per_audio_token": "output_audio",
    "cache_read_input_audio_token_cost": "cached_input_audio",
    "cache_creation_input_audio_token_cost": "cache_write_audio",
    "input_cost_per_image_token": "input_image",
    "output_cost_per_image_token": "output_image",
    "cache_read_input_image_token_cost": "cached_input_image",
}
_BASE_ORDER = sorted(_BASES, key=len, reverse=True)
_REST = re.compile(r"^(?:_above_(\d+)k_tokens)?(?:_(batches|priority|flex))?$")
_VARIANTS = {
    "batches": {"processing": "batch"},
    "priority": {"service_tier": "priority"},
    "flex": {"service_tier": "flex"},
}
_MODES = {"chat": "chat", "completion": "chat", "responses": "chat", "embedding": "embedding"}
# LiteLLM provider -> the provider id the other layers use (so the layers merge by resource)
PROVIDERS = {
    "gemini": "google",
    "together_ai": "together",
    "bedrock": "aws",
    "bedrock_converse": "aws",
    "azure_ai": "azure",
    "xai": "x-ai",
    "fireworks_ai": "fireworks",
    "text-completion-openai": "openai",
    "vertex_ai-language-models": "vertex_ai",
    "vertex_ai-anthropic_models": "vertex_ai",
    "vertex_ai-embedding-models": "vertex_ai",
}
_IGNORED = re.compile(
    r"^(max_|supports_|litellm_provider|mode$|source$|deprecation_|successor_|rpm$|tpm$|"
    r"supported_|tool_use_system_prompt|metadata|provider_specific_entry|prompt_cache_min|"
    r"output_vector_size|thinking_always_on|search_free_requests|comment)"
)


@dataclass
class LiteLLMImport:
    entries: list[PriceEntry]
    skipped: list[str]  # models without a token price
    unmapped: dict[str, list[str]] = field(default_factory=dict)  # model -> price keys not carried over


def _per_million(value: object, path: str, model: str, key: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PriceFileError(path, model, f"{key} must be a number, got {value!r}")
    amount = Decimal(repr(value) if isinstance(value, float) else str(value))
    if not amount.is_finite() or amount < 0:
        raise PriceFileError(path, model, f"{key} must be a finite non-negative number, got {value!r}")
    return (amount * _MILLION).normalize()


def _split(key: str) -> tuple[str, int | None, str | None] | None:
    for base in _BASE_ORDER:
        if key.startswith(base):
            m = _REST.match(key[len(base) :])
            if m:
                return _BASES[base], (int(m.group(1)) * 1000 if m.group(1) else None), m.group(2)
    return None


def _version(
    model: str, info: dict[str, Any], path: str, start: datetime, source: str
) -> tuple[PriceVersion | None, list[str]]:
    token_unit, request_unit = Unit.parse("1M tokens"), Unit.parse("1K requests")
    base: dict[str, Decimal] = {}
    tiers: dict[int, dict[str, Decimal]] = {}
    var_rates: dict[str, dict[str, Decimal]] = {}
    var_tiers: dict[str, dict[int, dict[str, Decimal]]] = {}
    unmapped = []
    for key, value in info.items():
        if value is None or _IGNORED.match(key):
            continue
        parsed = _split(key)
        if parsed is None:
            if (
                key == "search_context_cost_per_query"
                and isinstance(value, dict)
                and value.get("search_context_size_medium") is not None
            ):
                base["web_search"] = _per_million(value["search_context_size_medium"], path, model, key) / 1000
            elif "cost" in key:
                unmapped.append(key)
            continue
        name, above, var = parsed
        price = _per_million(value, path, model, key)
        if var is None:
            (tiers.setdefault(above, {}) if above else base)[name] = price
        else:
            (var_tiers.setdefault(var, {}).setdefault(above, {}) if above else var_rates.setdefault(var, {}))[name] = (
                price
            )
    if "input" not in base:
        return None, unmapped
    variants = tuple(
        Variant(
            when=_VARIANTS[var],
            rates=var_rates.get(var, {}),
            tiers=tuple(Tier(k, v) for k, v in sorted(var_tiers.get(var, {}).items())),
        )
        for var in _VARIANTS
        if var in var_rates or var in var_tiers
    )
    comps = (
        set(base)
        | {c for t in tiers.values() for c in t}
        | {c for v in var_rates.values() for c in v}
        | {c for vt in var_tiers.values() for t in vt.values() for c in t}
    )
    units = {c: request_unit if c == "web_search" else token_unit for c in comps}
    resource = Resource(kind="chat", provider="?", name=model)  # filled in by the caller
    return PriceVersion(
        resource=resource,
        effective_from=start,
        effective_to=None,
        source=source,
        rates=base,
        units=units,
        tiers=tuple(Tier(k, v) for k, v in sorted(tiers.items())),
        origin="litellm",
        variants=variants,
    ), unmapped


def import_litellm(path: str | Path, effective_from: date | None = None) -> LiteLLMImport:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PriceFileError(str(p), None, f"cannot read LiteLLM price JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PriceFileError(str(p), None, "expected a JSON object of model name -> prices")
    day = effective_from or date.today()
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    entries: dict[str, PriceEntry] = {}
    skipped, unmapped = [], {}
    for model, info in doc.items():
        if model == "sample_spec" or not isinstance(info, dict):
            continue
        kind = _MODES.get(str(info.get("mode", "chat")))
        version, lost = _version(model, info, str(p), start, f"LiteLLM price file {p.name}, imported {day}")
        if lost:
            unmapped[model] = sorted(lost)
        if kind is None or version is None:
            skipped.append(model)
            continue
        their = str(info.get("litellm_provider") or "litellm")
        provider = PROVIDERS.get(their, their)
        head, _, tail = model.partition("/")
        name = tail if tail and head in (their, provider) else model
        resource = Resource(kind=kind, provider=provider, name=name)
        version = PriceVersion(
            **{**{f: getattr(version, f) for f in version.__dataclass_fields__}, "resource": resource}
        )
        if resource.key in entries:  # 'gpt-4o' and 'openai/gpt-4o': one model, one entry
            entries[resource.key].aliases += (model,) if model != name else ()
            continue
        entries[resource.key] = PriceEntry(resource, (model,) if name != model else (), [version])
    return LiteLLMImport(list(entries.values()), skipped, unmapped)


def import_litellm_prices(path: str | Path, effective_from: date | None = None) -> tuple[list[PriceEntry], list[str]]:
    """Return (entries, skipped) where skipped names models without token prices."""
    result = import_litellm(path, effective_from)
    return result.entries, result.skipped
