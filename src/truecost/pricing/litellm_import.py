"""Import LiteLLM's ``model_prices_and_context_window.json`` format from a user's file.

Nothing is fetched: the user hands us a file. Per-token float prices become exact
per-1M-token Decimals (through ``repr``, so 3e-07 becomes 0.30, not 0.2999...).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

from truecost.errors import PriceFileError
from truecost.pricing.catalog import PriceEntry, PriceVersion, Tier, Unit
from truecost.types import Resource

_MILLION = Decimal(1_000_000)
_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write_5m",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "output_cost_per_reasoning_token": "reasoning",
}
_MODES = {"chat": "chat", "completion": "chat", "responses": "chat", "embedding": "embedding"}


def _per_million(value: object, path: str, model: str, key: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PriceFileError(path, model, f"{key} must be a number, got {value!r}")
    amount = Decimal(repr(value) if isinstance(value, float) else str(value))
    if not amount.is_finite() or amount < 0:
        raise PriceFileError(path, model, f"{key} must be a finite non-negative number, got {value!r}")
    return (amount * _MILLION).normalize()


def import_litellm_prices(path: str | Path, effective_from: date | None = None) -> tuple[list[PriceEntry], list[str]]:
    """Return (entries, skipped) where skipped names models without token prices."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PriceFileError(str(p), None, f"cannot read LiteLLM price JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PriceFileError(str(p), None, "expected a JSON object of model name -> prices")
    day = effective_from or date.today()
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    unit = Unit.parse("1M tokens")
    entries, skipped = [], []
    for model, info in doc.items():
        if model == "sample_spec" or not isinstance(info, dict):
            continue
        kind = _MODES.get(str(info.get("mode", "chat")))
        rates = {ours: _per_million(info[theirs], str(p), model, theirs) for theirs, ours in _FIELDS.items()
                 if info.get(theirs) is not None}
        if kind is None or "input" not in rates:
            skipped.append(model)
            continue
        tiers = []
        above_in = info.get("input_cost_per_token_above_200k_tokens")
        if above_in is not None:
            t = {"input": _per_million(above_in, str(p), model, "input_cost_per_token_above_200k_tokens")}
            above_out = info.get("output_cost_per_token_above_200k_tokens")
            if above_out is not None:
                t["output"] = _per_million(above_out, str(p), model, "output_cost_per_token_above_200k_tokens")
            tiers.append(Tier(200_000, t))
        provider = str(info.get("litellm_provider") or "litellm")
        name = model.split("/", 1)[1] if "/" in model and model.split("/", 1)[0] == provider else model
        resource = Resource(kind=kind, provider=provider, name=name)
        version = PriceVersion(resource=resource, effective_from=start, effective_to=None,
                               source=f"LiteLLM price file {p.name}, imported", rates=rates,
                               units={k: unit for k in rates}, tiers=tuple(tiers), origin="litellm")
        entries.append(PriceEntry(resource, (model,) if name != model else (), [version]))
    return entries, skipped
