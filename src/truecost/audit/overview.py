"""The numbers behind the dashboard: one scan of the ledger, rolled up in memory.

``overview`` answers the overview page with two aggregate queries (one grouped by
bucket x cost center x feature x step x service x outcome x source, one for the distinct
request count, overall and per source) and a third for the most expensive requests, so it
stays fast on large ledgers. ``request_detail`` is one request's waterfall.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Sequence

from truecost.ledger.events import GENERATION_STEPS
from truecost.ledger.store import AggregateRow, LedgerFilter, LedgerStore

ZERO = Decimal(0)
FILTER_FIELDS = ("cost_center", "feature", "tenant")
# Units of time-priced resources. A self-hosted model's generate step carries a second charge,
# the machine it ran on (tracking's charge_compute: service "c7i.xlarge", unit "vCPU-seconds");
# that service is a resource, not a model served.
COMPUTE_UNITS = frozenset({"vCPU-seconds", "instance-seconds"})
NOT_SERVED = frozenset({"error", "escalated"})  # a failed call, a weak answer the cascade did not keep


@dataclass(frozen=True, slots=True)
class Budget:
    field: str
    value: str
    period: str  # day | month
    limit_usd: Decimal


def make_filter(
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
    source: str | None = None,
    **attribution: str | None,
) -> LedgerFilter:
    pairs = tuple((k, v) for k, v in attribution.items() if v and k in FILTER_FIELDS)
    return LedgerFilter(since=since, until=until, service=model or None, source=source or None, attribution=pairs)


def _bucket(flt: LedgerFilter, store: LedgerStore) -> str:
    rows = store.aggregate(["day"], flt, count_requests=False)
    return "hour" if len(rows) <= 3 else "day"


def _sum(rows: Sequence[AggregateRow], pred) -> Decimal:
    return sum((r.cost for r in rows if pred(r)), ZERO)


def period_start(period: str, now: datetime) -> datetime:
    day = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def request_stats(store: LedgerStore, flt: LedgerFilter, top: int) -> tuple[list[AggregateRow], int]:
    """Most expensive requests (keys: request id, its sources) and how many requests have an unknown price."""
    return store.request_stats(flt, top)


def _is_compute(store: LedgerStore, flt: LedgerFilter, service: str) -> bool:
    """Is ``service`` a time-priced resource on generation steps? One event tells: a name is either
    a model or a machine (the rollups carry no unit, and a probe stays cheap on large ledgers)."""
    probe = LedgerFilter(
        since=flt.since,
        until=flt.until,
        steps=tuple(GENERATION_STEPS),
        service=service,
        source=flt.source,
        attribution=flt.attribution,
    )
    first = store.query(probe, limit=1)
    return bool(first) and first[0].unit in COMPUTE_UNITS


def served_mix(store: LedgerStore, flt: LedgerFilter, gens: Sequence[AggregateRow]) -> dict[str, int]:
    """Generations by the model that served them: not the compute charge a self-hosted model's step
    also carries, not failed calls, not answers a cascade escalated away from."""
    counts: dict[str, int] = {}
    for r in gens:
        service = r.keys[4]
        if service is None or r.keys[5] in NOT_SERVED:
            continue
        counts[service] = counts.get(service, 0) + r.events
    if flt.service is None:  # a model filter already names a model
        for service in [s for s in counts if _is_compute(store, flt, s)]:
            del counts[service]
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _request_row(r: AggregateRow) -> dict[str, Any]:
    # "unknown": steps with no price; their cost is not in cost_usd (a request of only those is unknown, not $0)
    return {
        "request_id": r.keys[0],
        "cost_usd": r.cost,
        "events": r.events,
        "sources": list(r.keys[1]),
        "unknown": r.unknown,
    }


def expensive_requests(store: LedgerStore, flt: LedgerFilter, top: int) -> list[dict[str, Any]]:
    rows, _ = request_stats(store, flt, top)
    return [_request_row(r) for r in rows]


def requests_by(
    store: LedgerStore, flt: LedgerFilter, field: str, values: Sequence[Any]
) -> tuple[AggregateRow, dict[Any, int]]:
    """Totals with the distinct request count, and the distinct requests of each of ``values``: every value
    ``field`` takes under ``flt`` (a store may answer both in one scan; with one value, its requests are all)."""
    if 1 < len(values) <= 64:  # one scan in a SQL store; beyond 64 values, two GROUP BY scans serve better
        return store.requests_by(field, values, flt)
    rows = store.aggregate([], flt)
    head = rows[0] if rows else AggregateRow(keys=(), request_count=0)
    if len(values) <= 1:
        return head, {v: head.request_count or 0 for v in values}
    return head, {r.keys[0]: r.request_count or 0 for r in store.aggregate([field], flt)}


def by_source(rows: Sequence[AggregateRow], col: int, requests: dict[Any, int], total: Decimal) -> list[dict[str, Any]]:
    """Requests, events and cost per source (``rows`` keyed by source at ``col``). A request recorded by two
    sources, say an SDK step and the gateway's call joined by one request id, counts once in each."""
    acc: dict[str, AggregateRow] = {}
    for r in rows:
        a = acc.setdefault(r.keys[col], AggregateRow(keys=(r.keys[col],)))
        a.cost += r.cost
        a.events += r.events
        a.unknown += r.unknown
    return [
        {
            "key": k,
            "requests": requests.get(k, 0),
            "events": a.events,
            "cost_usd": a.cost,
            "share": float(a.cost / total) if total else None,
            "unknown": a.unknown,
        }
        for k, a in sorted(acc.items(), key=lambda kv: (-kv[1].cost, kv[0]))
    ]


def _cost_by(rows: Sequence[AggregateRow], i: int) -> list[dict]:
    """Cost per value of the key at ``i``, largest first (a missing value shows as "-")."""
    acc: dict[Any, Decimal] = {}
    for r in rows:
        acc[r.keys[i]] = acc.get(r.keys[i], ZERO) + r.cost
    return [{"key": k if k is not None else "-", "cost_usd": v} for k, v in sorted(acc.items(), key=lambda kv: -kv[1])]


def _spend_over_time(rows: Sequence[AggregateRow], series_by: str) -> dict[str, Any]:
    """Cost per time bucket (key 0), one series per value of ``series_by``."""
    col = {"cost_center": 1, "feature": 2, "step": 3, "model": 4, "source": 6}.get(series_by, 1)
    series: dict[str, dict[str, Decimal]] = {}
    for r in rows:
        name = r.keys[col] or "-"
        series.setdefault(name, {})
        series[name][r.keys[0]] = series[name].get(r.keys[0], ZERO) + r.cost
    buckets = sorted({r.keys[0] for r in rows})
    return {
        "by": series_by,
        "buckets": buckets,
        "series": {k: [v.get(b, ZERO) for b in buckets] for k, v in series.items()},
    }


def _cache_figures(rows: Sequence[AggregateRow], cache_target_error: float | None) -> dict[str, Any]:
    """Lookups, hits, cost avoided and the lookups' own cost, from rows keyed with step at 3, outcome at 5."""
    lookups = [r for r in rows if r.keys[3] == "cache_lookup"]
    n_lookups = sum(r.events for r in lookups)
    n_hits = sum(r.events for r in lookups if r.keys[5] == "cache_hit")
    cache_avoided = sum((r.avoided_cost for r in lookups), ZERO)
    lookup_cost = _sum(lookups, lambda r: True)
    return {
        "lookups": n_lookups,
        "hits": n_hits,
        "hit_rate": n_hits / n_lookups if n_lookups else None,
        "avoided_usd": cache_avoided,
        "lookup_cost_usd": lookup_cost,
        "net_savings_usd": cache_avoided - lookup_cost,
        # the policy bounds false hits per lookup; the estimate is that bound applied to the lookups
        "false_hit_bound": None if cache_target_error is None else cache_target_error * n_lookups,
    }


def _budget_rows(store: LedgerStore, budgets: Sequence[Budget], now: datetime) -> list[dict[str, Any]]:
    """Each budget's spend in its current period against its limit."""
    out = []
    for b in budgets:
        spent = _sum(
            store.aggregate(
                [],
                LedgerFilter(since=period_start(b.period, now), attribution=((b.field, b.value),)),
                count_requests=False,
            ),
            lambda r: True,
        )
        out.append(
            {
                "budget": f"{b.field}={b.value}",
                "period": b.period,
                "limit_usd": b.limit_usd,
                "spent_usd": spent,
                "used": float(spent / b.limit_usd) if b.limit_usd else None,
            }
        )
    return out


def overview(
    store: LedgerStore,
    flt: LedgerFilter = LedgerFilter(),
    budgets: Sequence[Budget] = (),
    now: datetime | None = None,
    top: int = 10,
    series_by: str = "cost_center",
    cache_target_error: float | None = None,
) -> dict[str, Any]:
    bucket = _bucket(flt, store)
    keys = [bucket, "cost_center", "feature", "step", "service", "outcome", "source"]
    rows = store.aggregate(keys, flt, count_requests=False)
    h, source_requests = requests_by(store, flt, "source", sorted({r.keys[6] for r in rows}))
    total = h.cost
    gens = [r for r in rows if r.keys[3] in GENERATION_STEPS]
    mix = served_mix(store, flt, gens)
    route_avoided = sum((r.avoided_cost for r in gens if r.keys[5] == "routed"), ZERO)
    expensive, unknown_requests = request_stats(store, flt, top)
    budget_rows = _budget_rows(store, budgets, now or datetime.now(timezone.utc))
    gen_cost = _sum(gens, lambda r: True)
    return {
        "total_usd": total,
        "requests": h.request_count,
        "events": h.events,
        "unknown_events": h.unknown,
        "unknown_requests": unknown_requests,
        "cost_per_request_usd": total / h.request_count if h.request_count else None,
        "generation_share": float(gen_cost / total) if total else None,
        "bucket": bucket,
        "spend_over_time": _spend_over_time(rows, series_by),
        "by_cost_center": _cost_by(rows, 1),
        "by_feature": _cost_by(rows, 2),
        "by_step": _cost_by(rows, 3),
        "by_source": by_source(rows, 6, source_requests, total),
        "cache": _cache_figures(rows, cache_target_error),
        "routing": {"mix": mix, "avoided_usd": route_avoided},
        "budgets": budget_rows,
        "expensive_requests": [_request_row(r) for r in expensive],
    }


def request_detail(
    store: LedgerStore, request_id: str, scope: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any] | None:
    """One request's steps; with ``scope`` ((field, value) pairs) only its events inside that scope,
    None when there are none (a request of another tenant is not found)."""
    events = sorted(store.query(LedgerFilter(request_id=request_id, attribution=scope)), key=lambda e: e.ts)
    if not events:
        return None
    total = sum((e.cost for e in events if e.cost is not None), ZERO)
    steps = []
    for e in events:
        d = e.details
        steps.append(
            {
                "step": e.step,
                "name": e.name,
                "service": e.service,
                "provider": e.provider,
                "source": e.source,
                "quantity": e.quantity,
                "unit": e.unit,
                "unit_price": e.unit_price,
                "cost_usd": e.cost,
                "latency_ms": e.latency_ms,
                "outcome": e.outcome,
                "avoided_usd": e.avoided_cost,
                "unknown_reason": d.get("unknown_reason"),
                "cache": d.get("cache"),
                "similarity": d.get("similarity"),
                "route_reason": d.get("route_reason"),
                "tokens": d.get("tokens"),
            }
        )
    served = next(
        (
            s["service"]
            for s in reversed(steps)
            if s["step"] in GENERATION_STEPS
            and s["service"]
            and s["unit"] not in COMPUTE_UNITS
            and s["outcome"] not in NOT_SERVED
        ),
        None,
    )
    cache = next((s for s in steps if s["step"] == "cache_lookup"), None)
    route = next((s["route_reason"] for s in steps if s["route_reason"]), None)
    return {
        "request_id": request_id,
        "ts": events[0].ts.isoformat(),
        "attribution": events[0].attribution.as_dict(),
        "total_usd": total,
        "unknown": sum(1 for e in events if e.cost is None),
        "steps": steps,
        "served_by": served or (cache["service"] if cache and cache["outcome"] == "cache_hit" else None),
        "cache": None
        if cache is None
        else {
            "status": cache["cache"],
            "outcome": cache["outcome"],
            "similarity": cache["similarity"],
            "avoided_usd": cache["avoided_usd"],
        },
        "route": route,
        "latency_ms": sum(e.latency_ms or 0 for e in events),
        "sources": sorted({e.source for e in events}),
    }


def window(days: int | None, now: datetime | None = None) -> datetime | None:
    return None if not days else (now or datetime.now(timezone.utc)) - timedelta(days=days)
