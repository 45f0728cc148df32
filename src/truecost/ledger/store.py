"""The LedgerStore seam, its filter and aggregate types, and the in-memory store."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from truecost.ledger.events import CostEvent
from truecost.types import ATTRIBUTION_FIELDS, ZERO

# Fields an aggregate may group by. Time buckets: 'hour', 'day', 'month'.
GROUP_FIELDS = (
    "step",
    "provider",
    "service",
    "region",
    "outcome",
    "source",
    "unit",
    "request_id",
    "currency",
    *ATTRIBUTION_FIELDS,
    "hour",
    "day",
    "month",
)


@dataclass(frozen=True, slots=True)
class LedgerFilter:
    request_id: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    steps: tuple[str, ...] = ()
    service: str | None = None
    outcome: str | None = None
    source: str | None = None  # where the events were recorded: gateway, sdk, otlp, litellm...
    attribution: tuple[tuple[str, str], ...] = ()  # (field, value) pairs, all must match

    def matches(self, e: CostEvent) -> bool:
        if self.request_id is not None and e.request_id != self.request_id:
            return False
        if self.since is not None and e.ts < self.since:
            return False
        if self.until is not None and e.ts >= self.until:
            return False
        if self.steps and e.step not in self.steps:
            return False
        if self.service is not None and e.service != self.service:
            return False
        if self.outcome is not None and e.outcome != self.outcome:
            return False
        if self.source is not None and e.source != self.source:
            return False
        return all(getattr(e.attribution, f) == v for f, v in self.attribution)


@dataclass(slots=True)
class AggregateRow:
    keys: tuple[Any, ...]
    cost: Decimal = ZERO  # sum of the known costs
    avoided_cost: Decimal = ZERO
    events: int = 0
    unknown: int = 0  # events whose cost is None (not included in ``cost``)
    request_count: int | None = 0  # distinct request ids; None when not counted (count_requests=False)


def check_group_by(group_by: Sequence[str]) -> None:
    bad = [g for g in group_by if g not in GROUP_FIELDS]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)}; one of {', '.join(GROUP_FIELDS)}")


def group_value(e: CostEvent, key: str) -> object:
    if key == "hour":
        return e.ts.strftime("%Y-%m-%dT%H:00")
    if key == "day":
        return e.ts.strftime("%Y-%m-%d")
    if key == "month":
        return e.ts.strftime("%Y-%m")
    if key in ATTRIBUTION_FIELDS:
        return getattr(e.attribution, key)
    return getattr(e, key)


@runtime_checkable
class LedgerStore(Protocol):
    def append(self, events: Sequence[CostEvent]) -> None:
        """Store all events or none (raises LedgerError and stores nothing)."""

    def query(self, filter: LedgerFilter = LedgerFilter(), limit: int | None = None) -> list[CostEvent]:
        """Events matching the filter, oldest first."""

    def aggregate(
        self, group_by: Sequence[str], filter: LedgerFilter = LedgerFilter(), count_requests: bool = True
    ) -> list[AggregateRow]:
        """Sums of cost and avoided cost, with event and unknown-price counts, and (unless
        ``count_requests`` is False, which is cheaper on large ledgers) distinct request counts."""

    def request_stats(self, filter: LedgerFilter = LedgerFilter(), top: int = 10) -> tuple[list[AggregateRow], int]:
        """The ``top`` most expensive requests (keys: request id, its sorted sources; equal costs in request id
        order) and the number of requests with an unknown price (``request_stats_of`` is the reference answer)."""

    def requests_by(
        self, field: str, values: Sequence[Any], filter: LedgerFilter = LedgerFilter()
    ) -> tuple[AggregateRow, dict[Any, int]]:
        """Totals with the distinct request count, and the distinct requests under each of ``values`` of
        ``field`` (a request under two values counts under both); ``requests_by_of`` is the reference."""

    def close(self) -> None: ...


def aggregate_events(
    events: Iterable[CostEvent], group_by: Sequence[str], count_requests: bool = True
) -> list[AggregateRow]:
    check_group_by(group_by)
    rows: dict[tuple[Any, ...], AggregateRow] = {}
    requests: dict[tuple[Any, ...], set[str | None]] = {}
    for e in events:
        k = tuple(group_value(e, g) for g in group_by)
        row = rows.get(k)
        if row is None:
            row = rows[k] = AggregateRow(keys=k)
        row.events += 1
        if e.cost is None:
            row.unknown += 1
        else:
            row.cost += e.cost
        if e.avoided_cost is not None:
            row.avoided_cost += e.avoided_cost
        if e.request_id is not None:
            requests.setdefault(k, set()).add(e.request_id)
    for k, row in rows.items():
        row.request_count = len(requests.get(k, ())) if count_requests else None
    return sorted(rows.values(), key=lambda r: -r.cost)


class MemoryLedgerStore:
    """A list behind a lock: the test double, and a real store for short-lived jobs."""

    def __init__(self) -> None:
        self._events: list[CostEvent] = []
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def append(self, events: Sequence[CostEvent]) -> None:
        from truecost.errors import LedgerError

        events = list(events)
        with self._lock:
            ids = [e.id for e in events]
            dup = next((i for i in ids if i in self._ids), None) or (len(set(ids)) != len(ids) and "within batch")
            if dup:
                raise LedgerError(f"duplicate event id {dup}; nothing from this batch was stored")
            self._events.extend(events)
            self._ids.update(ids)

    def query(self, filter: LedgerFilter = LedgerFilter(), limit: int | None = None) -> list[CostEvent]:
        with self._lock:
            out = [e for e in self._events if filter.matches(e)]
        out.sort(key=lambda e: e.ts)
        return out[:limit] if limit is not None else out

    def aggregate(
        self, group_by: Sequence[str], filter: LedgerFilter = LedgerFilter(), count_requests: bool = True
    ) -> list[AggregateRow]:
        return aggregate_events(self.query(filter), group_by, count_requests)

    def request_stats(self, filter: LedgerFilter = LedgerFilter(), top: int = 10) -> tuple[list[AggregateRow], int]:
        return request_stats_of(self, filter, top)

    def requests_by(
        self, field: str, values: Sequence[Any], filter: LedgerFilter = LedgerFilter()
    ) -> tuple[AggregateRow, dict[Any, int]]:
        return requests_by_of(self, field, values, filter)

    def close(self) -> None:
        pass


def request_stats_of(store: LedgerStore, flt: LedgerFilter, top: int) -> tuple[list[AggregateRow], int]:
    """``LedgerStore.request_stats`` from ``aggregate`` alone: any store's answer, for stores without a faster one."""
    per_request: dict[str, AggregateRow] = {}
    for r in store.aggregate(["request_id", "source"], flt, count_requests=False):
        if r.keys[0] is None:
            continue
        acc = per_request.setdefault(r.keys[0], AggregateRow(keys=(r.keys[0], ()), request_count=1))
        acc.keys = (r.keys[0], tuple(sorted((*acc.keys[1], r.keys[1]))))
        acc.cost += r.cost
        acc.avoided_cost += r.avoided_cost
        acc.events += r.events
        acc.unknown += r.unknown
    rows = per_request.values()  # equal costs: the request id decides (as a string, by code point)
    return sorted(rows, key=lambda r: (-r.cost, r.keys[0]))[:top], sum(1 for r in rows if r.unknown)


def requests_by_of(
    store: LedgerStore, field: str, values: Sequence[Any], flt: LedgerFilter
) -> tuple[AggregateRow, dict[Any, int]]:
    """``LedgerStore.requests_by`` from ``aggregate`` alone (two scans)."""
    rows = store.aggregate([], flt)
    head = rows[0] if rows else AggregateRow(keys=(), request_count=0)
    if not values:
        return head, {}
    per = {r.keys[0]: r.request_count or 0 for r in store.aggregate([field], flt)}
    return head, {v: per.get(v, 0) for v in values}


def rollup(rows: Sequence[AggregateRow], group_by: Sequence[str], keep: Sequence[str]) -> list[AggregateRow]:
    """Sum finer rows (grouped by ``group_by``) into coarser ones (grouped by ``keep``).

    Request counts do not add up across groups, so the result has ``request_count=None``.
    """
    idx = [list(group_by).index(k) for k in keep]
    out: dict[tuple[Any, ...], AggregateRow] = {}
    for r in rows:
        k = tuple(r.keys[i] for i in idx)
        o = out.get(k)
        if o is None:
            o = out[k] = AggregateRow(keys=k, request_count=None)
        o.cost += r.cost
        o.avoided_cost += r.avoided_cost
        o.events += r.events
        o.unknown += r.unknown
    return sorted(out.values(), key=lambda x: -x.cost)
