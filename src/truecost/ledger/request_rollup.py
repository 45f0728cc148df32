"""The per-request rollup the SQL ledgers keep, and the questions it answers exactly.

One row per request id, hour, source, cost center, feature and tenant, with the sums of its events:
known cost, avoided cost, events, and events whose cost is unknown (counted, never priced at 0). A
store adds a batch's rows in the transaction that inserts the batch (all or nothing), so the rollup
is always exactly the events. A missing request id or attribute is stored as '' with its bit set in
``nulls`` (``NULL_BITS``): an empty value and a missing one stay apart. Events without a request id
are kept too (in the totals, never counted as a request).

It answers "the most expensive requests" and "how many distinct requests" (overall, per source or
attribute, per time bucket) for filters on cost center, feature, tenant, source and whole hours;
``answers`` says when. Other filters (model, step, outcome, other attributes, a time that is not on
the hour) are answered from the events. The SQL here is shared by SQLite and PostgreSQL: a
``Dialect`` names what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import MAX_PREC, Context, Decimal, localcontext
from typing import Any, Callable, Iterable, Mapping, Sequence

from truecost.ledger.store import AggregateRow, LedgerFilter

TABLE = "request_rollup"
KEY_COLUMNS = ("request_id", "hour", "source", "cost_center", "feature", "tenant", "nulls")
NULL_BITS = {"request_id": 1, "cost_center": 2, "feature": 4, "tenant": 8}
FIELDS = frozenset({"source", "cost_center", "feature", "tenant"})  # requests_by fields it answers
GROUP_KEYS = FIELDS | {"hour", "day", "month"}
HOUR_US = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_REQUEST = "(nulls & 1) = 0"  # the row has a request id

Fetch = Callable[[str, Sequence[Any]], Sequence[Sequence[Any]]]
Item = tuple[str | None, int, str, str | None, str | None, str | None, Any, Any]


@dataclass(frozen=True)
class Dialect:
    mark: str  # the parameter placeholder
    cost: str  # the known-cost column, and the avoided-cost column
    avoided: str
    money: Callable[[Any], Decimal]  # a SUM of a money column (None when no rows) as Decimal
    buckets: Mapping[str, str]  # hour, day, month: from the ``hour`` column (hours since the epoch)
    collate: str = ""  # orders request ids by code point, as Python does


def epoch_us(ts: datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def hour_of(ts: datetime) -> int:
    return epoch_us(ts) // HOUR_US


def answers(f: LedgerFilter, group_by: Sequence[str] = ()) -> bool:
    """Can the rollup answer exactly under ``f`` (grouped by ``group_by``)?"""
    if f.request_id is not None or f.steps or f.service is not None or f.outcome is not None:
        return False
    if not set(group_by) <= GROUP_KEYS:
        return False
    if any(name not in NULL_BITS or name == "request_id" or not isinstance(v, str) for name, v in f.attribution):
        return False
    return all(t is None or epoch_us(t) % HOUR_US == 0 for t in (f.since, f.until))


def rollup_rows(items: Iterable[Item]) -> list[tuple[Any, ...]]:
    """A batch's rows to add: one per key, in key order (so concurrent writers lock rows in one order).

    ``items``: (request id, hour, source, cost center, feature, tenant, cost, avoided cost) per event, the
    money as exact integers or Decimal; a cost of None is unknown. Decimal sums are exact (no rounding)."""
    acc: dict[tuple[Any, ...], list[Any]] = {}
    with localcontext(Context(prec=MAX_PREC)):
        for request_id, hour, source, cost_center, feature, tenant, cost, avoided in items:
            nulls = (request_id is None) + 2 * (cost_center is None) + 4 * (feature is None) + 8 * (tenant is None)
            key = (request_id or "", hour, source, cost_center or "", feature or "", tenant or "", nulls)
            a = acc.get(key)
            if a is None:
                a = acc[key] = [0, 0, 0, 0]
            if cost is None:
                a[3] += 1
            else:
                a[0] += cost
            if avoided is not None:
                a[1] += avoided
            a[2] += 1
    return [(*k, *v) for k, v in sorted(acc.items())]


def _where(f: LedgerFilter, d: Dialect, *more: str) -> tuple[str, list[Any]]:
    clauses: list[str] = list(more)
    params: list[Any] = []
    for column, t in (("hour >=", f.since), ("hour <", f.until)):
        if t is not None:
            clauses.append(f"{column} {d.mark}")
            params.append(hour_of(t))
    if f.source is not None:
        clauses.append(f"source = {d.mark}")
        params.append(f.source)
    for name, value in f.attribution:  # ``answers`` checked: a rolled-up attribute, and text
        clauses.append(f"{name} = {d.mark}" + (f" AND (nulls & {NULL_BITS[name]}) = 0" if value == "" else ""))
        params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _is(field: str, value: Any, d: Dialect) -> tuple[str, list[Any]]:
    """A row whose ``field`` is ``value`` (None: missing)."""
    bit = NULL_BITS.get(field)
    if value is None:
        return (f"(nulls & {bit}) <> 0", []) if bit else ("1 = 0", [])
    return f"{field} = {d.mark}" + (f" AND (nulls & {bit}) = 0" if bit else ""), [value]


def _sums(d: Dialect) -> str:
    return f"SUM({d.cost}), SUM({d.avoided}), SUM(events), SUM(unknown)"


def _row(keys: tuple[Any, ...], r: Sequence[Any], d: Dialect, request_count: int | None) -> AggregateRow:
    return AggregateRow(
        keys=keys,
        cost=d.money(r[0]),
        avoided_cost=d.money(r[1]),
        events=int(r[2] or 0),
        unknown=int(r[3] or 0),
        request_count=request_count,
    )


def request_stats(fetch: Fetch, d: Dialect, f: LedgerFilter, top: int) -> tuple[list[AggregateRow], int]:
    """``LedgerStore.request_stats`` from the rollup (``answers(f)`` must hold)."""
    where, params = _where(f, d, _REQUEST)
    rows = fetch(
        f"SELECT request_id, SUM({d.cost}) s, SUM({d.avoided}), SUM(events), SUM(unknown) FROM {TABLE}{where} "
        f"GROUP BY request_id ORDER BY s DESC, request_id{d.collate} LIMIT {int(top)}",
        params,
    )
    uwhere, uparams = _where(f, d, _REQUEST, "unknown > 0")
    unknown = int(fetch(f"SELECT COUNT(DISTINCT request_id) FROM {TABLE}{uwhere}", uparams)[0][0] or 0)
    sources: dict[str, set[str]] = {}
    if rows:  # their sources, by the primary key (request id first)
        swhere, sparams = _where(f, d, _REQUEST, f"request_id IN ({', '.join([d.mark] * len(rows))})")
        for rid, source in fetch(
            f"SELECT DISTINCT request_id, source FROM {TABLE}{swhere}", [*[r[0] for r in rows], *sparams]
        ):
            sources.setdefault(rid, set()).add(source)
    return [_row((r[0], tuple(sorted(sources.get(r[0], ())))), r[1:], d, 1) for r in rows], unknown


def requests_by(
    fetch: Fetch, d: Dialect, field: str, values: Sequence[Any], f: LedgerFilter
) -> tuple[AggregateRow, dict[Any, int]]:
    """``LedgerStore.requests_by`` from the rollup (``field in FIELDS`` and ``answers(f)`` must hold)."""
    per, per_params = "", []
    for v in values:
        clause, p = _is(field, v, d)
        per += f", COUNT(DISTINCT request_id) FILTER (WHERE {_REQUEST} AND {clause})"
        per_params += p
    where, params = _where(f, d)
    (r,) = fetch(
        f"SELECT {_sums(d)}, COUNT(DISTINCT request_id) FILTER (WHERE {_REQUEST}){per} FROM {TABLE}{where}",
        [*per_params, *params],
    )
    return _row((), r, d, int(r[4] or 0)), {v: int(n or 0) for v, n in zip(values, r[5:])}


def aggregate(fetch: Fetch, d: Dialect, group_by: Sequence[str], f: LedgerFilter) -> list[AggregateRow]:
    """``LedgerStore.aggregate`` with request counts from the rollup (``answers(f, group_by)`` must hold)."""
    cols = [
        d.buckets.get(g) or (f"CASE WHEN (nulls & {NULL_BITS[g]}) = 0 THEN {g} END" if g in NULL_BITS else g)
        for g in group_by
    ]
    where, params = _where(f, d)
    sql = f"SELECT {', '.join([*cols, _sums(d)])}, COUNT(DISTINCT request_id) FILTER (WHERE {_REQUEST}) FROM {TABLE}{where}"
    if cols:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(cols)))
    n = len(cols)
    out = [_row(tuple(r[:n]), r[n:], d, int(r[n + 4] or 0)) for r in fetch(sql, params) if r[n + 2]]
    return sorted(out, key=lambda x: -x.cost)
