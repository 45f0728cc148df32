"""SQLite ledger store: WAL, append-only named migrations, exact Decimal money.

Money is stored twice: the exact Decimal as text, and an integer count of 1e-10 USD
(rounded half-even) that SQL can sum quickly and exactly. Totals are therefore exact to
1e-10 USD per event; the per-event text keeps every digit.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Sequence

from truecost.errors import LedgerError
from truecost.ledger import request_rollup
from truecost.ledger.events import CostEvent
from truecost.ledger.sqlite_schema import MIGRATIONS, statements
from truecost.ledger.store import AggregateRow, LedgerFilter, check_group_by
from truecost.types import ATTRIBUTION_FIELDS, Attribution

SCALE = Decimal(10) ** 10
_COLUMNS = (
    "id",
    "request_id",
    "ts_us",
    "step",
    "provider",
    "service",
    "region",
    "quantity",
    "unit",
    "unit_price",
    "cost",
    "cost_e10",
    "currency",
    "cost_center",
    "team",
    "feature",
    "tenant",
    "environment",
    "user_id",
    "tags",
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "latency_ms",
    "outcome",
    "avoided",
    "avoided_e10",
    "details",
    "source",
)
ROLLUP_KEYS = frozenset(
    {"cost_center", "feature", "tenant", "step", "service", "outcome", "source", "hour", "day", "month"}
)
_ROLLUP_BUCKETS = {
    "hour": "strftime('%Y-%m-%dT%H:00', hour * 3600, 'unixepoch')",
    "day": "strftime('%Y-%m-%d', hour * 3600, 'unixepoch')",
    "month": "strftime('%Y-%m', hour * 3600, 'unixepoch')",
}
HOUR_US = request_rollup.HOUR_US
_us = request_rollup.epoch_us  # microseconds since the epoch: the ts_us column
_UPSERT_ROLLUP = """INSERT INTO rollup_hourly VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT DO UPDATE SET cost_e10 = cost_e10 + excluded.cost_e10, avoided_e10 = avoided_e10 + excluded.avoided_e10,
    events = events + excluded.events, unknown = unknown + excluded.unknown"""
_UPSERT_REQUESTS = """INSERT INTO request_rollup VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT DO UPDATE SET cost_e10 = cost_e10 + excluded.cost_e10, avoided_e10 = avoided_e10 + excluded.avoided_e10,
    events = events + excluded.events, unknown = unknown + excluded.unknown"""
_REQUESTS = request_rollup.Dialect(
    mark="?", cost="cost_e10", avoided="avoided_e10", money=lambda v: Decimal(v or 0) / SCALE, buckets=_ROLLUP_BUCKETS
)

_BUCKETS = {
    "hour": "strftime('%Y-%m-%dT%H:00', ts_us / 1000000, 'unixepoch')",
    "day": "strftime('%Y-%m-%d', ts_us / 1000000, 'unixepoch')",
    "month": "strftime('%Y-%m', ts_us / 1000000, 'unixepoch')",
}


def _e10(amount: Decimal | None) -> int | None:
    return None if amount is None else int((amount * SCALE).to_integral_value(ROUND_HALF_EVEN))


def _text(d: Decimal | None) -> str | None:
    return None if d is None else str(d)


def _row(e: CostEvent) -> tuple[Any, ...]:
    a = e.attribution
    return (
        e.id,
        e.request_id,
        _us(e.ts),
        e.step,
        e.provider,
        e.service,
        e.region,
        str(e.quantity),
        e.unit,
        _text(e.unit_price),
        _text(e.cost),
        _e10(e.cost),
        e.currency,
        a.cost_center,
        a.team,
        a.feature,
        a.tenant,
        a.environment,
        a.user,
        json.dumps(dict(a.tags)) if a.tags else "{}",
        e.trace_id,
        e.span_id,
        e.parent_span_id,
        e.name,
        e.latency_ms,
        e.outcome,
        _text(e.avoided_cost),
        _e10(e.avoided_cost),
        json.dumps(e.details, default=str) if e.details else "{}",
        e.source,
    )


def _event(r: sqlite3.Row) -> CostEvent:
    return CostEvent(
        id=r["id"],
        request_id=r["request_id"],
        ts=datetime.fromtimestamp(r["ts_us"] / 1_000_000, tz=timezone.utc).replace(microsecond=r["ts_us"] % 1_000_000),
        step=r["step"],
        provider=r["provider"],
        service=r["service"],
        region=r["region"],
        quantity=Decimal(r["quantity"]),
        unit=r["unit"],
        unit_price=Decimal(r["unit_price"]) if r["unit_price"] is not None else None,
        cost=Decimal(r["cost"]) if r["cost"] is not None else None,
        currency=r["currency"],
        attribution=Attribution(
            cost_center=r["cost_center"],
            team=r["team"],
            feature=r["feature"],
            tenant=r["tenant"],
            environment=r["environment"],
            user=r["user_id"],
            tags=tuple(json.loads(r["tags"]).items()),
        ),
        trace_id=r["trace_id"],
        span_id=r["span_id"],
        parent_span_id=r["parent_span_id"],
        name=r["name"],
        latency_ms=r["latency_ms"],
        outcome=r["outcome"],
        avoided_cost=Decimal(r["avoided"]) if r["avoided"] is not None else None,
        details=json.loads(r["details"]),
        source=r["source"],
    )


def _where(f: LedgerFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if f.request_id is not None:
        clauses.append("request_id = ?")
        params.append(f.request_id)
    if f.since is not None:
        clauses.append("ts_us >= ?")
        params.append(_us(f.since))
    if f.until is not None:
        clauses.append("ts_us < ?")
        params.append(_us(f.until))
    if f.steps:
        clauses.append(f"step IN ({','.join('?' * len(f.steps))})")
        params.extend(f.steps)
    if f.service is not None:
        clauses.append("service = ?")
        params.append(f.service)
    if f.outcome is not None:
        clauses.append("outcome = ?")
        params.append(f.outcome)
    if f.source is not None:
        clauses.append("source = ?")
        params.append(f.source)
    for field_name, value in f.attribution:
        if field_name not in ATTRIBUTION_FIELDS:
            raise ValueError(f"cannot filter on {field_name!r}")
        clauses.append(f"{'user_id' if field_name == 'user' else field_name} = ?")
        params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _column(field: str) -> str:
    """The column of a group field (not a time bucket)."""
    check_group_by([field])
    if field in _BUCKETS:
        raise ValueError(f"{field!r} is a time bucket, not a column")
    return "user_id" if field == "user" else field


def _rollup_answers(group_by: Sequence[str], f: LedgerFilter, count_requests: bool) -> bool:
    """Can the hourly rollup answer this exactly? (No request counts, hour-aligned bounds, rolled-up keys.)"""
    if count_requests or f.request_id is not None or not set(group_by) <= ROLLUP_KEYS:
        return False
    if any(name not in ("cost_center", "feature", "tenant") for name, _ in f.attribution):
        return False
    return all(t is None or _us(t) % HOUR_US == 0 for t in (f.since, f.until))


class SQLiteLedgerStore:
    """The embedded default store. Safe to share between threads; readers in other processes see WAL commits."""

    def __init__(self, path: str | Path, timeout: float = 5.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from None
        self._lock = threading.Lock()
        self._insert = f"INSERT INTO cost_events ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})"

    def _migrate(self) -> None:
        c = self._conn
        c.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {r[0] for r in c.execute("SELECT name FROM _migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            c.execute("BEGIN IMMEDIATE")
            try:
                if c.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                    c.execute("COMMIT")  # another process applied it since we looked
                    continue
                for stmt in statements(sql):
                    c.execute(stmt)
                c.execute("INSERT INTO _migrations VALUES (?, ?)", (name, datetime.now(timezone.utc).isoformat()))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def migrations(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM _migrations ORDER BY name")]

    def append(self, events: Sequence[CostEvent]) -> None:
        if not events:
            return
        try:
            rows = [_row(e) for e in events]
        except ArithmeticError:  # an amount beyond what 1e-10 USD units can express
            raise LedgerError(
                f"ledger {self.path}: an amount out of range; nothing from this batch was stored"
            ) from None
        rollup: dict[tuple[Any, ...], list[int]] = {}
        for r in rows:  # column positions as in _COLUMNS
            key = (r[2] // HOUR_US, r[13] or "", r[15] or "", r[16] or "", r[3], r[5] or "", r[25], r[29])
            acc = rollup.get(key)
            if acc is None:
                acc = rollup[key] = [0, 0, 0, 0]
            acc[0] += r[11] or 0
            acc[1] += r[27] or 0
            acc[2] += 1
            acc[3] += r[11] is None
        per_request = request_rollup.rollup_rows(
            (r[1], r[2] // HOUR_US, r[29], r[13], r[15], r[16], r[11], r[27]) for r in rows
        )
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(self._insert, rows)
                self._conn.executemany(_UPSERT_ROLLUP, [(*k, *v) for k, v in rollup.items()])
                self._conn.executemany(_UPSERT_REQUESTS, per_request)
                self._conn.execute("COMMIT")
            except (sqlite3.Error, OverflowError) as exc:  # OverflowError: an amount past an INTEGER column
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise LedgerError(
                    f"ledger {self.path}: could not append {len(rows)} events ({exc}); "
                    "nothing from this batch was stored"
                ) from None

    def query(self, filter: LedgerFilter = LedgerFilter(), limit: int | None = None) -> list[CostEvent]:
        where, params = _where(filter)
        sql = f"SELECT * FROM cost_events{where} ORDER BY ts_us, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_event(r) for r in rows]

    def aggregate(
        self, group_by: Sequence[str], filter: LedgerFilter = LedgerFilter(), count_requests: bool = True
    ) -> list[AggregateRow]:
        check_group_by(group_by)
        if _rollup_answers(group_by, filter, count_requests):
            return self._aggregate_rollup(group_by, filter)
        if count_requests and request_rollup.answers(filter, group_by):
            with self._lock:
                return request_rollup.aggregate(self._fetch, _REQUESTS, group_by, filter)
        cols = [_BUCKETS.get(g, "user_id" if g == "user" else g) for g in group_by]
        where, params = _where(filter)
        requests = "COUNT(DISTINCT request_id)" if count_requests else "NULL"
        select = ", ".join(cols + ["SUM(cost_e10)", "SUM(avoided_e10)", "COUNT(*)", "SUM(cost_e10 IS NULL)", requests])
        sql = f"SELECT {select} FROM cost_events{where}"
        if cols:
            sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(cols)))
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        out = []
        n = len(cols)
        for r in rows:
            if r[n + 2] == 0:
                continue
            row = AggregateRow(
                keys=tuple(r[:n]),
                cost=Decimal(r[n] or 0) / SCALE,
                avoided_cost=Decimal(r[n + 1] or 0) / SCALE,
                events=r[n + 2],
                unknown=r[n + 3],
                request_count=r[n + 4],
            )
            out.append(row)
        return sorted(out, key=lambda x: -x.cost)

    def _aggregate_rollup(self, group_by: Sequence[str], f: LedgerFilter) -> list[AggregateRow]:
        cols = [_ROLLUP_BUCKETS.get(g, f"NULLIF({g}, '')") for g in group_by]
        clauses: list[str] = []
        params: list[Any] = []
        if f.since is not None:
            clauses.append("hour >= ?")
            params.append(_us(f.since) // HOUR_US)
        if f.until is not None:
            clauses.append("hour < ?")
            params.append(_us(f.until) // HOUR_US)
        if f.steps:
            clauses.append(f"step IN ({','.join('?' * len(f.steps))})")
            params.extend(f.steps)
        for column, value in (("service", f.service), ("outcome", f.outcome), ("source", f.source), *f.attribution):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        select = ", ".join(cols + ["SUM(cost_e10)", "SUM(avoided_e10)", "SUM(events)", "SUM(unknown)"])
        sql = f"SELECT {select} FROM rollup_hourly{where}"
        if cols:
            sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(cols)))
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        n = len(cols)
        out = [
            AggregateRow(
                keys=tuple(r[:n]),
                cost=Decimal(r[n] or 0) / SCALE,
                avoided_cost=Decimal(r[n + 1] or 0) / SCALE,
                events=r[n + 2],
                unknown=r[n + 3],
                request_count=None,
            )
            for r in rows
            if r[n + 2]
        ]
        return sorted(out, key=lambda x: -x.cost)

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

    def request_stats(self, filter: LedgerFilter = LedgerFilter(), top: int = 10) -> tuple[list[AggregateRow], int]:
        """The ``top`` most expensive requests (keys: request id, its sources) and the number of requests
        with an unknown price: from the request rollup when it answers ``filter``, else from the events."""
        if request_rollup.answers(filter):
            with self._lock:
                return request_rollup.request_stats(self._fetch, _REQUESTS, filter, top)
        where, params = _where(filter)
        extra = " AND " if where else " WHERE "
        with self._lock:
            rows = self._conn.execute(
                f"SELECT request_id, IFNULL(SUM(cost_e10), 0) s, SUM(avoided_e10), COUNT(*), SUM(cost_e10 IS NULL) "
                f"FROM cost_events{where}{extra}request_id IS NOT NULL GROUP BY request_id ORDER BY s DESC, request_id "
                f"LIMIT {int(top)}",
                params,
            ).fetchall()
            unknown = self._conn.execute(
                f"SELECT COUNT(DISTINCT request_id) FROM cost_events{where}{extra}cost_e10 IS NULL", params
            ).fetchone()[0]
            ids = [r[0] for r in rows]  # their sources: the request index finds them (the scan above stays covered)
            sources = (
                dict(
                    self._conn.execute(
                        f"SELECT request_id, GROUP_CONCAT(DISTINCT source) FROM cost_events{where}{extra}request_id IN "
                        f"({','.join('?' * len(ids))}) GROUP BY request_id",
                        [*params, *ids],
                    ).fetchall()
                )
                if ids
                else {}
            )
        return [
            AggregateRow(
                keys=(r[0], tuple(sorted(x for x in (sources.get(r[0]) or "").split(",") if x))),
                cost=Decimal(r[1] or 0) / SCALE,
                avoided_cost=Decimal(r[2] or 0) / SCALE,
                events=r[3],
                unknown=r[4],
                request_count=1,
            )
            for r in rows
        ], unknown

    def requests_by(
        self, field: str, values: Sequence[Any], filter: LedgerFilter = LedgerFilter()
    ) -> tuple[AggregateRow, dict[Any, int]]:
        """Totals with the distinct request count, and the distinct requests of each of ``values`` of ``field``
        (a request with events under two values counts under both): from the request rollup when it answers,
        else in one scan of the events (no sort, as a GROUP BY needs)."""
        col = _column(field)
        if field in request_rollup.FIELDS and request_rollup.answers(filter):
            with self._lock:
                return request_rollup.requests_by(self._fetch, _REQUESTS, field, values, filter)
        where, params = _where(filter)
        per = "".join(f", COUNT(DISTINCT request_id) FILTER (WHERE {col} IS ?)" for _ in values)
        sql = (
            f"SELECT SUM(cost_e10), SUM(avoided_e10), COUNT(*), SUM(cost_e10 IS NULL), COUNT(DISTINCT request_id)"
            f"{per} FROM cost_events{where}"
        )
        with self._lock:
            r = self._conn.execute(sql, [*values, *params]).fetchone()
        head = AggregateRow(
            keys=(),
            cost=Decimal(r[0] or 0) / SCALE,
            avoided_cost=Decimal(r[1] or 0) / SCALE,
            events=r[2],
            unknown=r[3] or 0,
            request_count=r[4],
        )
        return head, dict(zip(values, r[5:]))

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM cost_events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
