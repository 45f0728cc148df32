"""Read-side questions every report asks: one request's breakdown, totals, generation share."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from truecost.ledger.events import GENERATION_STEPS, CostEvent
from truecost.ledger.store import AggregateRow, LedgerFilter, LedgerStore
from truecost.types import ZERO


@dataclass(slots=True)
class RequestBreakdown:
    request_id: str
    events: list[CostEvent]
    total: Decimal  # known costs only
    unknown: int  # steps whose price is unknown

    @property
    def by_step(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for e in self.events:
            out[e.step] = out.get(e.step, ZERO) + (e.cost or ZERO)
        return out

    @property
    def generation_share(self) -> float | None:
        gen = sum((e.cost or ZERO for e in self.events if e.step in GENERATION_STEPS), ZERO)
        return float(gen / self.total) if self.total else None


def request_breakdown(store: LedgerStore, request_id: str) -> RequestBreakdown:
    events = store.query(LedgerFilter(request_id=request_id))
    total = sum((e.cost for e in events if e.cost is not None), ZERO)
    return RequestBreakdown(request_id, events, total, sum(1 for e in events if e.cost is None))


def totals(store: LedgerStore, group_by: Sequence[str], filter: LedgerFilter = LedgerFilter()) -> list[AggregateRow]:
    return store.aggregate(group_by, filter)


@dataclass(slots=True)
class Summary:
    total: Decimal
    generation: Decimal
    avoided: Decimal
    events: int
    unknown: int
    requests: int

    @property
    def generation_share(self) -> float | None:
        return float(self.generation / self.total) if self.total else None

    @property
    def cost_per_request(self) -> Decimal | None:
        return self.total / self.requests if self.requests else None


def summary(
    store: LedgerStore, filter: LedgerFilter = LedgerFilter(), by_step: Sequence[AggregateRow] | None = None
) -> Summary:
    """Totals and generation share. Pass ``by_step`` rows (without request counts) if you have them."""
    by_step = store.aggregate(["step"], filter, count_requests=False) if by_step is None else by_step
    overall = store.aggregate([], filter)
    o = overall[0] if overall else AggregateRow(keys=())
    gen = sum((r.cost for r in by_step if r.keys[0] in GENERATION_STEPS), ZERO)
    return Summary(
        total=o.cost,
        generation=gen,
        avoided=o.avoided_cost,
        events=o.events,
        unknown=o.unknown,
        requests=o.request_count or 0,
    )
