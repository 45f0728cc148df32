"""Kernel value types: money, attribution, normalised token usage."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from truecost.errors import InvalidAttributionError, InvalidQuantityError

CURRENCY = "USD"
ZERO = Decimal(0)


def to_decimal(value: Any, what: str = "quantity") -> Decimal:
    """Convert a number to Decimal exactly, refusing negatives, NaN, inf and non-numbers.

    Floats go through ``repr`` so that 0.1 becomes Decimal('0.1'), not its binary expansion.
    """
    if isinstance(value, bool):
        raise InvalidQuantityError(f"{what} must be a number, got a bool")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidQuantityError(f"{what} must be finite, got {value!r}")
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidQuantityError(f"{what} must be numeric, got {value!r}") from None
    else:
        raise InvalidQuantityError(f"{what} must be a number, got {type(value).__name__}")
    if not result.is_finite():
        raise InvalidQuantityError(f"{what} must be finite, got {value!r}")
    if result < 0:
        raise InvalidQuantityError(f"{what} must not be negative, got {value!r}")
    return result


def _check_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidAttributionError(f"attribution {name} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise InvalidAttributionError(f"attribution {name} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAttributionError(f"attribution {name} is not valid UTF-8 (lone surrogate)") from None
    if len(value) > 512:
        raise InvalidAttributionError(f"attribution {name} is longer than 512 characters")
    return value


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a cost belongs to. Every field is optional; tags are free-form text pairs."""

    cost_center: str | None = None
    team: str | None = None
    feature: str | None = None
    tenant: str | None = None
    environment: str | None = None
    user: str | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for f in ATTRIBUTION_FIELDS:
            object.__setattr__(self, f, _check_text(f, getattr(self, f)))
        tags = self.tags.items() if isinstance(self.tags, Mapping) else self.tags
        clean = tuple(sorted((_check_text("tag key", k) or "", _check_text(f"tag {k}", v) or "") for k, v in tags))
        object.__setattr__(self, "tags", clean)

    def merged(self, **overrides: Any) -> "Attribution":
        """A copy with the given non-None fields replaced and tags added."""
        values = {f: getattr(self, f) for f in ATTRIBUTION_FIELDS}
        tags = dict(self.tags)
        tags.update(dict(overrides.pop("tags", None) or {}))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Attribution(**values, tags=tuple(tags.items()))

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f: getattr(self, f) for f in ATTRIBUTION_FIELDS}
        d["tags"] = dict(self.tags)
        return d


ATTRIBUTION_FIELDS = ("cost_center", "team", "feature", "tenant", "environment", "user")
EMPTY_ATTRIBUTION = Attribution()


TOKEN_CLASSES = ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output", "reasoning")


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens by billing class, after the provider's counting rules have been undone.

    The classes are disjoint: ``input`` is uncached, non-cache-write prompt tokens;
    ``output`` excludes ``reasoning``. Build one with the ``from_*`` functions in
    ``truecost.pricing.usage`` rather than by hand from a provider response.
    """

    input: int = 0
    cached_input: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    reasoning: int = 0

    def __post_init__(self) -> None:
        for name in TOKEN_CLASSES:
            v = getattr(self, name)
            if v.__class__ is not int or v < 0:
                if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                    continue  # an int subclass (numpy ints are not; bools are refused)
                raise InvalidQuantityError(f"token count {name} must be a non-negative integer, got {v!r}")

    @property
    def prompt_total(self) -> int:
        """Every token of the prompt, whatever its cache status (decides long-context tiers)."""
        return self.input + self.cached_input + self.cache_write_5m + self.cache_write_1h

    @property
    def completion_total(self) -> int:
        return self.output + self.reasoning

    def as_dict(self) -> dict[str, int]:
        return {
            "input": self.input,
            "cached_input": self.cached_input,
            "cache_write_5m": self.cache_write_5m,
            "cache_write_1h": self.cache_write_1h,
            "output": self.output,
            "reasoning": self.reasoning,
        }

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        return TokenUsage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True, slots=True)
class Resource:
    """Something with a price: a model, a network path, a storage tier, an instance type."""

    kind: str
    provider: str
    name: str
    region: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.provider}/{self.name}"


@dataclass(slots=True)
class CostLine:
    """One priced component of a step (e.g. the cached-input tokens of a generation)."""

    component: str
    quantity: Decimal
    unit: str
    unit_price: Decimal | None
    cost: Decimal | None
    note: str | None = None


@dataclass(slots=True)
class PricedCost:
    """The result of pricing one usage: total (None when any part is unknown) and lines."""

    cost: Decimal | None
    lines: list[CostLine] = field(default_factory=list)
    unknown_reason: str | None = None
    currency: str = CURRENCY
