"""`truecost prices check`: which models and usage fields in a real log can the catalog not price?

The CLI reads a truecost ledger or a LiteLLM spend log into ``UsageRecord``s; this module
re-prices each one against the catalog and groups what fails by model and reason, with the
spend the log recorded for those rows (what the gap is worth) and the tokens involved.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable

from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.cost import price_tokens
from truecost.errors import InvalidQuantityError
from truecost.pricing.usage import CallUsage, normalise_call
from truecost.types import PricedCost


@dataclass
class UsageRecord:
    model: str | None
    usage: Any  # a provider usage mapping, a TokenUsage or a CallUsage
    flavour: str = "openai"
    spend: Decimal | None = None  # what the log says this row cost, if it says
    at: datetime | None = None
    batch: bool = False


@dataclass
class Gap:
    model: str
    reason: str
    rows: int = 0
    spend: Decimal = Decimal(0)
    tokens: int = 0
    fields: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "reason": self.reason,
            "rows": self.rows,
            "spend": str(self.spend),
            "tokens": self.tokens,
            "usage_fields": sorted(self.fields),
        }


def _fields(priced: PricedCost | None, call: CallUsage | None) -> set[str]:
    if priced is not None and priced.lines:
        return {ln.component for ln in priced.lines if ln.cost is None}
    return set(call.as_dict()) if call is not None else set()


def check(catalog: PriceCatalog, records: Iterable[UsageRecord]) -> dict[str, Any]:
    """Summary: rows read, rows priced, and the gaps (model, reason, rows, spend, tokens, fields)."""
    gaps: dict[tuple[str, str], Gap] = {}
    total = priced_rows = 0
    spend_total = Decimal(0)
    for r in records:
        total += 1
        spend_total += r.spend or 0
        call: CallUsage | None = None
        priced: PricedCost | None = None
        try:
            call = normalise_call(r.usage, r.flavour)
        except InvalidQuantityError as exc:
            reason = f"usage: {exc}"
        else:
            version, why = catalog.price_or_none(r.model or "?", r.at) if r.model else (None, "no model named")
            priced = price_tokens(version, call, batch=r.batch, unknown_reason=why)
            if priced.cost is not None:
                priced_rows += 1
                continue
            reason = priced.unknown_reason or "unknown"
        key = (r.model or "?", reason)
        gap = gaps.setdefault(key, Gap(r.model or "?", reason))
        gap.rows += 1
        gap.spend += r.spend or 0
        gap.tokens += sum(call.as_dict().values()) if call is not None else 0
        gap.fields |= _fields(priced, call)
    by_spend = sorted(gaps.values(), key=lambda g: (-g.spend, -g.rows, g.model))
    models: defaultdict[str, int] = defaultdict(int)
    for g in by_spend:
        models[g.model] += g.rows
    return {
        "rows": total,
        "priced": priced_rows,
        "unpriced": total - priced_rows,
        "spend_in_log": str(spend_total),
        "spend_unpriced": str(sum((g.spend for g in by_spend), Decimal(0))),
        "models_unpriced": dict(models),
        "gaps": [g.as_dict() for g in by_spend],
    }
