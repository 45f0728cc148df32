"""The reference side of bench/price_agreement.py: LiteLLM and genai-prices price the same usage.

Runs in the separate reference venv (bench/setup_price_refs.sh), never imports truecost.
Reads {"at": ISO date, "rows": [{"id", "model", "provider", "shape": {...}}]} on stdin and
writes {"versions": {...}, "rows": {id: {"litellm": cost|null, "litellm_note", "genai": ..., "genai_note"}}}.

A shape is in OpenAI's counting: ``prompt`` includes ``cached``, ``cache_write`` and
``audio_in``; ``completion`` includes ``reasoning`` and ``audio_out``; plus ``batch`` and
``service_tier``. Each reference gets it in its own vocabulary.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from datetime import datetime, timezone

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: the bundled cost map
warnings.filterwarnings("ignore")

# LiteLLM's model-cost-map keys and providers for a genai-prices provider id
_LITELLM = {
    "google": (("gemini/", "vertex_ai/", ""), ("gemini", "vertex_ai")),
    "anthropic": (("", "anthropic/"), ("anthropic",)),
    "openai": (("", "openai/"), ("openai", "text-completion-openai")),
}


def _litellm_model(model: str, provider: str):
    import litellm

    prefixes, providers = _LITELLM.get(provider, (("",), (provider,)))
    for key in (p + model for p in prefixes):
        info = litellm.model_cost.get(key)
        if (
            info
            and info.get("input_cost_per_token") is not None
            and str(info.get("litellm_provider", "")).startswith(providers)
        ):
            return key, info
    return None, None


def litellm_cost(model: str, provider: str, s: dict):
    import litellm
    from litellm.types.utils import CompletionTokensDetailsWrapper, PromptTokensDetailsWrapper, Usage

    key, info = _litellm_model(model, provider)
    if key is None:
        return None, "LiteLLM does not know the model"
    if s.get("batch") and info.get("input_cost_per_token_batches") is None:
        return None, "LiteLLM lists no batch price"
    tier = s.get("service_tier")
    if tier and info.get(f"input_cost_per_token_{tier}") is None:
        return None, f"LiteLLM lists no {tier} price"
    if s.get("audio_in") and info.get("input_cost_per_audio_token") is None:
        return None, "LiteLLM lists no audio price"
    details = PromptTokensDetailsWrapper(cached_tokens=s.get("cached", 0), audio_tokens=s.get("audio_in", 0) or None)
    cdetails = CompletionTokensDetailsWrapper(
        reasoning_tokens=s.get("reasoning", 0), audio_tokens=s.get("audio_out", 0) or None
    )
    kw = {}
    if provider == "anthropic":
        kw = {"cache_creation_input_tokens": s.get("cache_write", 0), "cache_read_input_tokens": s.get("cached", 0)}
    elif s.get("cache_write"):
        details.cache_write_tokens = s["cache_write"]
    usage = Usage(
        prompt_tokens=s["prompt"],
        completion_tokens=s["completion"],
        total_tokens=s["prompt"] + s["completion"],
        prompt_tokens_details=details,
        completion_tokens_details=cdetails,
        **kw,
    )
    if s.get("batch"):
        from litellm.cost_calculator import batch_cost_calculator

        p, c = batch_cost_calculator(usage, key)
    else:
        p, c = litellm.cost_per_token(model=key, usage_object=usage, service_tier=tier)
    return p + c, key


def genai_cost(model: str, provider: str, s: dict, at: datetime):
    from genai_prices import Usage, data_snapshot

    snap = data_snapshot.get_snapshot()
    try:
        prov, info = snap.find_provider_model(model, None, provider, None)
    except LookupError:
        return None, "genai-prices does not know the model"
    context = {}
    if s.get("batch"):
        context["processing"] = "batch"
    if s.get("service_tier"):
        context["service_tier"] = s["service_tier"]
    for k, v in context.items():  # genai-prices falls back to the standard price silently: say so
        ok = any(
            var.when.get(k) == v and (var.constraint is None or var.constraint.active(at))
            for var in info.price_variants or []
        )
        if not ok:
            return None, f"genai-prices lists no {k}={v} price"
    if s.get("audio_in"):
        base = info.get_prices(at)
        if getattr(base, "input_audio_mtok", None) is None:
            return None, "genai-prices lists no audio price"
    usage = Usage(
        input_tokens=s["prompt"],
        cache_read_tokens=s.get("cached", 0) or None,
        cache_write_tokens=s.get("cache_write", 0) or None,
        output_tokens=s["completion"],
        input_audio_tokens=s.get("audio_in", 0) or None,
        output_audio_tokens=s.get("audio_out", 0) or None,
    )
    calc = info.calc_price(usage, prov, genai_request_timestamp=at, price_context=context or None)
    return calc.total_price, f"{prov.id}/{info.id}"


def main() -> None:
    req = json.load(sys.stdin)
    at = datetime.fromisoformat(req["at"]).replace(tzinfo=timezone.utc)
    out = {}
    for row in req["rows"]:
        res = {}
        for name, fn in (
            ("litellm", lambda r: litellm_cost(r["model"], r["provider"], r["shape"])),
            ("genai", lambda r: genai_cost(r["model"], r["provider"], r["shape"], at)),
        ):
            try:
                cost, note = fn(row)
            except Exception as exc:  # a reference that cannot price a row says why
                cost, note = None, f"{type(exc).__name__}: {str(exc)[:120]}"
            if cost is not None and cost == 0 and (row["shape"]["prompt"] or row["shape"]["completion"]):
                cost, note = None, f"{name} prices these tokens at 0 (it has no token price for this model)"
            res[name] = None if cost is None else str(cost)
            res[f"{name}_note"] = note
        out[row["id"]] = res
    from importlib.metadata import version

    doc = {"versions": {p: version(p) for p in ("litellm", "genai-prices")}, "rows": out}
    with open(sys.argv[1], "w", encoding="utf-8") as f:  # a file: the libraries may print to stdout
        json.dump(doc, f)


if __name__ == "__main__":
    main()
