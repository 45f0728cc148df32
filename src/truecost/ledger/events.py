"""CostEvent: one priced step of one request."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from truecost.types import CURRENCY, EMPTY_ATTRIBUTION, Attribution

STEP_KINDS = (
    "sanitize",
    "embed",
    "vector_search",
    "context_assembly",
    "generate",
    "validate",
    "log_storage",
    "egress",
    "cache_lookup",
    "cache_write",
    "cache_judge",  # an LLM judge the semantic cache asked after a miss (gateway: truecost.gateway.cache_judge)
    "reserved_capacity",
    "other",
)
OUTCOMES = ("ok", "error", "cache_hit", "routed", "escalated")  # escalated: a weak answer a cascade declined
# Steps that are "generation" when the bill is split into generation vs everything else.
GENERATION_STEPS = frozenset({"generate"})
# Where an event was recorded. "unknown": a ledger row written before events carried a source
# (and without a ``details["source"]`` to back-fill it from), or an event built without one.
# Other names are allowed (a caller's own job, say) if they look like these: see check_source.
SOURCES = ("gateway", "sdk", "otlp", "litellm", "langchain", "llamaindex", "unknown")
_KNOWN_SOURCES = frozenset(SOURCES)
_SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# The same rule in SQL (the migrations back-fill only names a CostEvent accepts).
SOURCE_NAME_SQL = "^[a-z0-9][a-z0-9_.-]{0,63}$"


def check_source(source: object) -> str:
    """``source`` if it is a known source or a short lowercase name (letters, digits, ``_.-``), else ValueError."""
    if isinstance(source, str) and (source in _KNOWN_SOURCES or _SOURCE_NAME.fullmatch(source)):
        return source
    raise ValueError(
        f"bad event source {source!r}: one of {', '.join(SOURCES)}, or a lowercase name of up to "
        "64 letters, digits, '_', '.', '-'"
    )


@dataclass(slots=True)
class CostEvent:
    """One priced step. ``cost`` is None when a price was unknown (``details['unknown_reason']``)."""

    id: str
    request_id: str | None
    ts: datetime
    step: str
    provider: str | None = None
    service: str | None = None  # model, instance type, storage tier, network path...
    region: str | None = None
    quantity: Decimal = Decimal(0)
    unit: str = ""
    unit_price: Decimal | None = None
    cost: Decimal | None = None
    currency: str = CURRENCY
    attribution: Attribution = EMPTY_ATTRIBUTION
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    name: str | None = None
    latency_ms: float | None = None
    outcome: str = "ok"
    avoided_cost: Decimal | None = None
    details: dict[str, Any] = field(default_factory=dict)
    source: str = "unknown"  # gateway, sdk, otlp, litellm, langchain, llamaindex... (see SOURCES)

    def __post_init__(self) -> None:
        if self.step not in STEP_KINDS:
            raise ValueError(f"unknown step kind {self.step!r}; one of {', '.join(STEP_KINDS)}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; one of {', '.join(OUTCOMES)}")
        if self.ts.tzinfo is None:
            raise ValueError("CostEvent.ts must be timezone-aware")
        if type(self.source) is not str or self.source not in _KNOWN_SOURCES:
            check_source(self.source)

    @property
    def unknown_price(self) -> bool:
        return self.cost is None
