"""Pricing arithmetic: usage x dated price -> exact Decimal cost with its lines.

A component whose price is unknown makes the total ``None`` (with a reason), never 0. So
does an attribute the price does not cover (``service_tier=flex`` on a model without a flex
price, batch on a model without a batch price), and an implausible quantity: more than
``MAX_TOKENS_PER_CALL`` tokens in one call is a broken usage record, not a bill.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Iterable, Mapping

from truecost.pricing.model import STANDARD_VALUES, PriceVersion, Tier, Variant
from truecost.pricing.usage import EXTRA_CLASSES, CallUsage
from truecost.types import TOKEN_CLASSES, ZERO, CostLine, PricedCost, TokenUsage, to_decimal

# The largest context windows in the catalog hold ~10M tokens; 100x that in one call is not a
# bill but a broken usage record (a byte count, a running total, an overflow). Such a call is
# priced None with a reason, so it is counted and reported instead of swamping the ledger.
MAX_TOKENS_PER_CALL = 1_000_000_000
MAX_FEES_PER_CALL = 1_000_000

# Billing class -> the rate names that price it, first match wins. An OpenAI cache write
# lands in cache_write_5m (the provider's default write) and is priced at 'cache_write'.
_TOKEN_RATES: dict[str, tuple[str, ...]] = {
    "input": ("input",),
    "cached_input": ("cached_input",),
    "cache_write_5m": ("cache_write_5m", "cache_write"),
    "cache_write_1h": ("cache_write_1h",),
    "output": ("output",),
    "reasoning": ("reasoning", "output"),
    "input_audio": ("input_audio",),
    "cached_input_audio": ("cached_input_audio",),
    "output_audio": ("output_audio",),
    "input_image": ("input_image",),
    "cached_input_image": ("cached_input_image",),
    "output_image": ("output_image",),
    "web_search": ("web_search",),
    "file_search": ("file_search",),
    "code_execution": ("code_execution",),
}
_CLASSES = (*TOKEN_CLASSES, *EXTRA_CLASSES)
# A version whose source states that an unlisted cache price means "no discount" (genai-prices'
# data convention: a token class without its own price is billed at its parent's price) carries
# this attribute; cache reads and writes on it are then billed at the input price. Audio and
# image tokens never fold into text prices: an unlisted modality price stays unknown.
FOLD_ATTRIBUTE = "unlisted_cache_price"
_CACHE_CLASSES = ("cached_input", "cache_write_5m", "cache_write_1h")
_TOKEN_LIKE = frozenset(c for c in _CLASSES if c not in ("web_search", "file_search", "code_execution"))


def tidy(d: Decimal) -> Decimal:
    """Drop trailing zeros without changing the value (0.0010000 -> 0.001)."""
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d.normalize()


def _with_tiers(
    base: Mapping[str, Decimal], tiers: Iterable[Tier], prompt_tokens: int
) -> tuple[dict[str, Decimal], int | None]:
    """Long-context tiers switch the price of the WHOLE request, not just the excess."""
    rates = dict(base)
    crossed = None
    for tier in tiers:
        if prompt_tokens > tier.above_prompt_tokens:
            rates.update(tier.rates)
            crossed = tier.above_prompt_tokens
    return rates, crossed


def requested(attributes: Mapping[str, str] | None, batch: bool) -> dict[str, str]:
    out = {
        str(k): str(v).lower()
        for k, v in (attributes or {}).items()
        if v is not None and str(v).lower() not in STANDARD_VALUES
    }
    if batch:
        out["processing"] = "batch"
    return out


def effective_rates(
    version: PriceVersion, prompt_tokens: int, attributes: Mapping[str, str]
) -> tuple[dict[str, Decimal] | None, list[str], str | None]:
    """(rates, notes, unknown reason) for one call: tiers, then the variants its attributes select."""
    rates, crossed = _with_tiers(version.rates, version.tiers, prompt_tokens)
    notes = [f"long-context tier (> {crossed:,} prompt tokens)"] if crossed is not None else []
    if not attributes:
        return rates, notes, None
    chosen: list[Variant] = []
    for key, value in attributes.items():
        hits = [v for v in version.variants if v.when.get(key) == value and v.matches(attributes)]
        if not hits:
            priced = sorted(version.variant_keys().get(key, ()))
            known = f" (priced: {', '.join(priced)})" if priced else ""
            return None, notes, f"{version.resource.name} has no {key}={value} price{known}"
        chosen.extend(h for h in hits if h not in chosen)
    overridden: dict[str, Decimal] = {}
    for v in chosen:  # first variant to list a class wins (as in genai-prices)
        v_rates, _ = _with_tiers(v.rates, v.tiers, prompt_tokens)
        for k, r in v_rates.items():
            overridden.setdefault(k, r)
    out = dict(rates)
    out.update(overridden)
    for v in chosen:
        if v.multiplier is not None:
            for k in out:
                if k not in v.rates:
                    out[k] = out[k] * v.multiplier
    notes.append(", ".join(v.label for v in chosen))
    return out, notes, None


def _sanity(call: CallUsage) -> str | None:
    t = call.tokens
    worst = max(t.input, t.cached_input, t.cache_write_5m, t.cache_write_1h, t.output, t.reasoning)
    if worst <= MAX_TOKENS_PER_CALL and not call.extra:
        return None
    for cls, qty in call.as_dict().items():
        bound = MAX_TOKENS_PER_CALL if cls in _TOKEN_LIKE else MAX_FEES_PER_CALL
        if qty > bound:
            return (
                f"implausible usage: {qty:,} {cls} in one call exceeds the sanity bound of {bound:,}; "
                "check the usage source (not priced)"
            )
    return None


# a class's (unit price, unit base, note), or None when unpriced; '__request_fee__' -> whether a fee is due
ClassTable = dict[str, Any]
_TABLES: dict[tuple[int, int, tuple[tuple[str, str], ...]], tuple[PriceVersion, ClassTable, str | None]] = {}


def _tier_key(version: PriceVersion, prompt_tokens: int) -> int:
    n = 0
    for t in version.tiers:
        if prompt_tokens > t.above_prompt_tokens:
            n += 1
    for v in version.variants:
        for t in v.tiers:
            if prompt_tokens > t.above_prompt_tokens:
                n += 1000
    return n


def _class_table(version: PriceVersion, prompt_tokens: int, attrs: dict[str, str]) -> tuple[ClassTable, str | None]:
    """(per-class (unit price, unit base, note) or None, unknown reason): memoised, this is every call's path."""
    key = (id(version), _tier_key(version, prompt_tokens), tuple(sorted(attrs.items())))
    hit = _TABLES.get(key)
    if hit is not None and hit[0] is version:
        return hit[1], hit[2]
    rates, notes, reason = effective_rates(version, prompt_tokens, attrs)
    table: ClassTable = {}
    if rates is not None:
        note = "; ".join(notes) or None
        fold = version.attributes.get(FOLD_ATTRIBUTE) == "input"
        for cls in (*_CLASSES, "request"):
            name = next((n for n in _TOKEN_RATES.get(cls, (cls,)) if n in rates), None)
            line_note = note
            if name is None and fold and cls in _CACHE_CLASSES:
                name = "cache_write" if cls == "cache_write_1h" and "cache_write" in rates else "input"
                line_note = "; ".join(x for x in (note, f"no separate {cls} price listed: billed as {name}") if x)
            unit = version.units.get(name) if name else None
            table[cls] = None if unit is None or name is None else (rates[name] / unit.scale, unit.base, line_note)
        table["__request_fee__"] = "request" in rates
    if len(_TABLES) > 4096:
        _TABLES.clear()
    _TABLES[key] = (version, table, reason)
    return table, reason


def _not_offered(version: PriceVersion, attrs: Mapping[str, str]) -> str | None:
    """The reason, when the call asks for an option the provider does not offer for this model."""
    unavailable: Mapping[str, str] = (version.attributes.get("unavailable") or {}) if attrs else {}
    for key, value in attrs.items() if unavailable else ():
        source = unavailable.get(f"{key}={value}")
        if source is not None:
            return f"{version.resource.name} is not offered with {key}={value} ({source})"
    return None


def price_tokens(
    version: PriceVersion | None,
    usage: TokenUsage | CallUsage,
    *,
    batch: bool = False,
    attributes: Mapping[str, str] | None = None,
    unknown_reason: str | None = None,
) -> PricedCost:
    """Price a generation or embedding call (token classes, audio/image tokens, per-call fees)."""
    call = usage if isinstance(usage, CallUsage) else CallUsage(usage)
    if version is None:
        return PricedCost(cost=None, unknown_reason=unknown_reason or "no price in force")
    insane = _sanity(call)
    if insane:
        return PricedCost(cost=None, unknown_reason=insane)
    attrs = (
        requested({**call.attributes, **(attributes or {})}, batch) if (call.attributes or attributes or batch) else {}
    )
    offered = _not_offered(version, attrs)
    if offered is not None:
        return PricedCost(cost=None, unknown_reason=offered)
    if attrs.get("processing") == "batch" and not any(v.when.get("processing") == "batch" for v in version.variants):
        return PricedCost(cost=None, unknown_reason=f"{version.resource.name} has no batch price")
    table, reason = _class_table(version, call.tokens.prompt_total, attrs)
    if reason is not None:
        return PricedCost(cost=None, unknown_reason=reason)
    tokens = call.tokens
    items = [(cls, getattr(tokens, cls)) for cls in TOKEN_CLASSES]
    if call.extra:
        items += [(cls, call.extra.get(cls, 0)) for cls in EXTRA_CLASSES]
    if table.get("__request_fee__"):  # a per-request fee is paid once per call
        items.append(("request", 1))
    total = ZERO
    lines: list[CostLine] = []
    missing: list[str] = []
    for cls, qty in items:
        if not qty:
            continue
        priced = table.get(cls)
        if priced is None:
            missing.append(cls)
            lines.append(
                CostLine(
                    cls,
                    Decimal(qty),
                    "tokens" if cls in _TOKEN_LIKE else "requests",
                    None,
                    None,
                    "no price for this class",
                )
            )
            continue
        unit_price, base, note = priced
        cost = unit_price * qty
        lines.append(CostLine(cls, Decimal(qty), base, unit_price, cost, note))
        total += cost
    if missing:
        return PricedCost(
            cost=None,
            lines=lines,
            unknown_reason=f"{version.resource.name} has no price for {', '.join(missing)}"
            + (" tokens" if all(m in _TOKEN_LIKE for m in missing) else ""),
        )
    return PricedCost(cost=total, lines=lines)


def price_quantity(
    version: PriceVersion | None,
    component: str,
    quantity: object,
    *,
    unknown_reason: str | None = None,
    free: Decimal = ZERO,
) -> PricedCost:
    """Price ``quantity`` (in the component's base unit, e.g. GB or read units).

    ``free`` is the part of the quantity covered by a free allowance.
    """
    qty = to_decimal(quantity)
    if version is None:
        return PricedCost(cost=None, unknown_reason=unknown_reason or "no price in force")
    rate = version.rate(component)
    unit = version.units.get(component)
    if rate is None or unit is None:
        return PricedCost(
            cost=None,
            unknown_reason=f"{version.resource.name} has no {component!r} price",
            lines=[CostLine(component, qty, "?", None, None)],
        )
    unit_price = rate / unit.scale
    billable = max(qty - free, ZERO)
    cost = tidy(unit_price * billable)
    note = f"{free} {unit.base} free allowance applied" if free > 0 else None
    return PricedCost(cost=cost, lines=[CostLine(component, qty, unit.base, unit_price, cost, note)])


def strong_call_premium(
    weak: PriceVersion | None,
    strong: PriceVersion | None,
    prompt_tokens: int,
    weak_output_tokens: int,
    strong_output_tokens: int,
    *,
    cascade: bool = False,
) -> Decimal | None:
    """What sending one request to the strong model is expected to add, known before any call.

    The prompt at both prices plus expected output lengths; a cascade has already paid the
    weak call, so its premium is the whole strong call. None when either price is unknown.
    """
    strong_cost = price_tokens(strong, TokenUsage(input=prompt_tokens, output=strong_output_tokens)).cost
    if strong_cost is None or cascade:
        return strong_cost
    weak_cost = price_tokens(weak, TokenUsage(input=prompt_tokens, output=weak_output_tokens)).cost
    return None if weak_cost is None else strong_cost - weak_cost
