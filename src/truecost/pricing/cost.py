"""Pricing arithmetic: usage x dated price -> exact Decimal cost with its lines.

A component whose price is unknown makes the total ``None`` (with a reason), never 0.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Mapping

from truecost.pricing.catalog import PriceVersion
from truecost.types import TOKEN_CLASSES, ZERO, CostLine, PricedCost, TokenUsage, to_decimal

# Billing class -> the rate names that price it, first match wins.
_TOKEN_RATES: dict[str, tuple[str, ...]] = {
    "input": ("input",),
    "cached_input": ("cached_input",),
    "cache_write_5m": ("cache_write_5m", "cache_write"),
    "cache_write_1h": ("cache_write_1h",),
    "output": ("output",),
    "reasoning": ("reasoning", "output"),
}


def tidy(d: Decimal) -> Decimal:
    """Drop trailing zeros without changing the value (0.0010000 -> 0.001)."""
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d.normalize()


def _tier_rates(version: PriceVersion, prompt_tokens: int) -> tuple[Mapping[str, Decimal], str | None]:
    """Long-context tiers switch the price of the WHOLE request, not just the excess."""
    rates: dict[str, Decimal] = dict(version.rates)
    label = None
    for tier in version.tiers:
        if prompt_tokens > tier.above_prompt_tokens:
            rates.update(tier.rates)
            label = f"long-context tier (> {tier.above_prompt_tokens:,} prompt tokens)"
    return rates, label


_PER_TOKEN: dict[tuple, dict[str, tuple[str, Decimal] | None]] = {}


def _per_token_rates(version: PriceVersion, prompt_tokens: int, batch: bool) -> tuple[dict, str | None]:
    """Per-token price of each billing class (memoised: this is on every request's path)."""
    rates, tier_note = _tier_rates(version, prompt_tokens)
    key = (id(version), tier_note, batch)
    table = _PER_TOKEN.get(key)
    if table is None or table.get("__version__") is not version:
        multiplier = version.batch_multiplier if batch else Decimal(1)
        table = {"__version__": version}
        for cls, names in _TOKEN_RATES.items():
            name = next((n for n in names if n in rates), None)
            unit = version.units.get(name) or version.units.get("input") if name else None
            table[cls] = None if name is None else (name, rates[name] * multiplier / unit.scale)
        if len(_PER_TOKEN) > 4096:
            _PER_TOKEN.clear()
        _PER_TOKEN[key] = table
    return table, tier_note


def price_tokens(version: PriceVersion | None, usage: TokenUsage, *, batch: bool = False,
                 unknown_reason: str | None = None) -> PricedCost:
    """Price a generation or embedding call."""
    if version is None:
        return PricedCost(cost=None, unknown_reason=unknown_reason or "no price in force")
    if batch and version.batch_multiplier is None:
        return PricedCost(cost=None, unknown_reason=f"{version.resource.name} has no batch price")
    table, tier_note = _per_token_rates(version, usage.prompt_total, batch)
    total = ZERO
    lines: list[CostLine] = []
    missing: list[str] = []
    for cls in TOKEN_CLASSES:
        qty = getattr(usage, cls)
        if qty == 0:
            continue
        priced = table[cls]
        if priced is None:
            missing.append(cls)
            lines.append(CostLine(cls, Decimal(qty), "tokens", None, None, "no price for this token class"))
            continue
        cost = priced[1] * qty
        lines.append(CostLine(cls, Decimal(qty), "tokens", priced[1], cost, tier_note))
        total += cost
    if missing:
        return PricedCost(cost=None, lines=lines,
                          unknown_reason=f"{version.resource.name} has no price for {', '.join(missing)} tokens")
    return PricedCost(cost=total, lines=lines)


def price_quantity(version: PriceVersion | None, component: str, quantity: object, *,
                   unknown_reason: str | None = None, free: Decimal = ZERO) -> PricedCost:
    """Price ``quantity`` (in the component's base unit, e.g. GB or read units).

    ``free`` is the part of the quantity covered by a free allowance.
    """
    qty = to_decimal(quantity)
    if version is None:
        return PricedCost(cost=None, unknown_reason=unknown_reason or "no price in force")
    rate = version.rate(component)
    unit = version.units.get(component)
    if rate is None or unit is None:
        return PricedCost(cost=None, unknown_reason=f"{version.resource.name} has no {component!r} price",
                          lines=[CostLine(component, qty, "?", None, None)])
    unit_price = rate / unit.scale
    billable = max(qty - free, ZERO)
    cost = tidy(unit_price * billable)
    note = f"{free} {unit.base} free allowance applied" if free > 0 else None
    return PricedCost(cost=cost, lines=[CostLine(component, qty, unit.base, unit_price, cost, note)])


def strong_call_premium(weak: PriceVersion | None, strong: PriceVersion | None, prompt_tokens: int,
                        weak_output_tokens: int, strong_output_tokens: int, *,
                        cascade: bool = False) -> Decimal | None:
    """What sending one request to the strong model is expected to add, known before any call.

    The prompt at both prices plus expected output lengths; a cascade has already paid the
    weak call, so its premium is the whole strong call. None when either price is unknown.
    """
    strong_cost = price_tokens(strong, TokenUsage(input=prompt_tokens, output=strong_output_tokens)).cost
    if strong_cost is None or cascade:
        return strong_cost
    weak_cost = price_tokens(weak, TokenUsage(input=prompt_tokens, output=weak_output_tokens)).cost
    return None if weak_cost is None else strong_cost - weak_cost
