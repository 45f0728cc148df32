"""The shapes of a price: units, long-context tiers, variants (batch, service tiers, regions) and dated versions.

A price *entry* is one resource (a model, a network path, a storage tier, an instance type) with
one or more *versions*, each in force from ``effective_from`` until ``effective_to``. A version
carries the standard rates, the long-context tiers that switch the price of a whole request, and
the *variants* a call may select through its attributes (``processing=batch``,
``service_tier=flex``, ``speed=fast``, ``inference_geo=us``...). Every version names its
``source`` and the ``origin`` layer it came from (genai-prices, truecost, user, litellm).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Mapping

from truecost.types import Resource

KINDS = ("chat", "embedding", "vector_db", "egress", "storage", "log_ingest", "compute", "cache_service")
# Layers, lowest first. A higher layer's version wins wherever it is in force; a lower layer's
# versions fill the time the higher one does not cover (its history is never dropped).
LAYERS = ("genai-prices", "truecost", "litellm", "user")
# A price whose source records no start date (genai-prices' first price of most models) starts here.
UNDATED = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Attribute values that select the standard price (no variant needed).
STANDARD_VALUES = frozenset({"", "default", "standard", "auto", "on_demand", "sync", "none", "global"})

_UNIT_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*([KkMmBb]?)\s+)?(.+?)\s*$")
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


@dataclass(frozen=True, slots=True)
class Unit:
    """A billing unit such as '1M tokens' (scale 1,000,000 of 'tokens') or 'GB'."""

    label: str
    scale: int
    base: str

    @classmethod
    def parse(cls, text: str) -> "Unit":
        m = _UNIT_RE.match(str(text))
        if not m:
            raise ValueError(f"cannot read unit {text!r}")
        number, suffix, base = m.groups()
        scale = Decimal(number or 1) * _SCALE[(suffix or "").lower()]
        if scale != int(scale) or scale <= 0:
            raise ValueError(f"unit scale must be a positive whole number in {text!r}")
        return cls(label=str(text).strip(), scale=int(scale), base=base)


@dataclass(frozen=True, slots=True)
class Tier:
    """Above this many prompt tokens, these rates price the WHOLE request (not just the excess)."""

    above_prompt_tokens: int
    rates: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class Variant:
    """Prices selected by a call's attributes, e.g. ``{'processing': 'batch'}``.

    ``rates`` (and ``tiers``) replace the standard rate of each listed component; a component
    not listed keeps its standard rate, or is scaled by ``multiplier`` when one is given (a
    provider that says "50% of every rate" or "+10% for regional processing").
    """

    when: Mapping[str, str]
    rates: Mapping[str, Decimal] = field(default_factory=dict)
    tiers: tuple[Tier, ...] = ()
    multiplier: Decimal | None = None
    source: str | None = None

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(attributes.get(k) == v for k, v in self.when.items())

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.when.items())


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """One dated price of one resource. Rates are USD per ``units[component]``."""

    resource: Resource
    effective_from: datetime
    effective_to: datetime | None
    source: str
    rates: Mapping[str, Decimal]
    units: Mapping[str, Unit]
    tiers: tuple[Tier, ...] = ()
    free_per_month: Decimal | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    origin: str = "truecost"
    variants: tuple[Variant, ...] = ()

    def rate(self, component: str) -> Decimal | None:
        return self.rates.get(component)

    def unit(self, component: str) -> Unit:
        return self.units[component]

    def in_force(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.effective_to is None or at < self.effective_to)

    @property
    def undated(self) -> bool:
        return self.effective_from == UNDATED

    @property
    def batch_multiplier(self) -> Decimal | None:
        """The flat batch multiplier, when the batch price is one (None when per-class or absent)."""
        for v in self.variants:
            if dict(v.when) == {"processing": "batch"}:
                return v.multiplier if not v.rates and not v.tiers else None
        return None

    def variant_keys(self) -> dict[str, set[str]]:
        """Attribute -> the values this version prices (for 'no price for service_tier=x' messages)."""
        out: dict[str, set[str]] = {}
        for v in self.variants:
            for k, val in v.when.items():
                out.setdefault(k, set()).add(val)
        return out


@dataclass(slots=True)
class PriceEntry:
    resource: Resource
    aliases: tuple[str, ...]
    versions: list[PriceVersion]
    # A wire-name test from the source data (genai-prices' match clauses): True if a model
    # string as sent over an API names this entry.
    matcher: Callable[[str], bool] | None = None

    @property
    def layers(self) -> list[str]:
        return sorted({v.origin for v in self.versions}, key=lambda x: LAYERS.index(x) if x in LAYERS else 99)


def layer_rank(origin: str) -> int:
    return LAYERS.index(origin) if origin in LAYERS else len(LAYERS)


def merge_versions(lower: list[PriceVersion], upper: list[PriceVersion]) -> list[PriceVersion]:
    """``upper`` wins wherever one of its versions is in force; ``lower`` fills the rest.

    An undated lower version (no start date in its source) never extends a dated upper
    history backwards: it only fills time after the upper versions begin.
    """
    from dataclasses import replace

    spans = [(v.effective_from, v.effective_to) for v in upper]
    first_upper = min((s for s, _ in spans), default=None)
    out = list(upper)
    for v in lower:
        pieces = [(v.effective_from, v.effective_to)]
        if v.undated and first_upper is not None:
            pieces = [(max(v.effective_from, first_upper), v.effective_to)]
        for s, e in spans:
            nxt = []
            for a, b in pieces:
                if (b is not None and b <= s) or (e is not None and a >= e):
                    nxt.append((a, b))
                    continue
                if a < s:
                    nxt.append((a, s))
                if e is not None and (b is None or b > e):
                    nxt.append((e, b))
            pieces = nxt
        out.extend(replace(v, effective_from=a, effective_to=b) for a, b in pieces if b is None or a < b)
    out.sort(key=lambda x: x.effective_from)
    return out


def as_utc(at: datetime | None) -> datetime:
    at = at or datetime.now(timezone.utc)
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)
