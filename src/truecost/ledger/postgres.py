"""The PostgreSQL ledger store: the shared store behind several gateway replicas.

Exact money (NUMERIC, summed exactly), named append-only migrations like SQLite's, a batch
is one transaction (all or nothing), and a lost connection is reopened on the next call:
while the server is down, ``append`` raises LedgerError, so the BatchWriter spools to disk
and replays when the store is back. Each store may live in its own schema (tests use one
schema per test on one server).
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Sequence, TypeVar


from truecost.errors import LedgerError
from truecost.ledger import request_rollup
from truecost.ledger.events import CostEvent
from truecost.ledger.postgres_schema import MIGRATIONS
from truecost.ledger.store import AggregateRow, LedgerFilter, check_group_by
from truecost.types import ATTRIBUTION_FIELDS, Attribution

T = TypeVar("T")
_COLUMNS = (
    "id",
    "request_id",
    "ts",
    "step",
    "provider",
    "service",
    "region",
    "quantity",
    "unit",
    "unit_price",
    "cost",
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
    "details",
    "source",
)
_BUCKETS = {
    "hour": "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00')",
    "day": "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "month": "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM')",
}
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HOUR = "to_timestamp(hour * 3600) AT TIME ZONE 'UTC'"
_REQUESTS = request_rollup.Dialect(
    mark="%s",
    cost="cost",
    avoided="avoided",
    money=lambda v: Decimal(0) if v is None else Decimal(v),
    buckets={
        "hour": f"to_char({_HOUR}, 'YYYY-MM-DD\"T\"HH24:00')",
        "day": f"to_char({_HOUR}, 'YYYY-MM-DD')",
        "month": f"to_char({_HOUR}, 'YYYY-MM')",
    },
    collate=' COLLATE "C"',
)
_UPSERT_REQUESTS = f"""INSERT INTO request_rollup VALUES ({", ".join(["%s"] * 11)})
    ON CONFLICT ({", ".join(request_rollup.KEY_COLUMNS)}) DO UPDATE SET cost = request_rollup.cost + excluded.cost,
    avoided = request_rollup.avoided + excluded.avoided, events = request_rollup.events + excluded.events,
    unknown = request_rollup.unknown + excluded.unknown"""


def _fetch(c: Any) -> request_rollup.Fetch:
    return lambda sql, params: c.execute(sql, params).fetchall()


def _row(e: CostEvent) -> tuple[Any, ...]:
    a = e.attribution
    return (
        e.id,
        e.request_id,
        e.ts,
        e.step,
        e.provider,
        e.service,
        e.region,
        e.quantity,
        e.unit,
        e.unit_price,
        e.cost,
        e.currency,
        a.cost_center,
        a.team,
        a.feature,
        a.tenant,
        a.environment,
        a.user,
        json.dumps(dict(a.tags)),
        e.trace_id,
        e.span_id,
        e.parent_span_id,
        e.name,
        e.latency_ms,
        e.outcome,
        e.avoided_cost,
        json.dumps(e.details, default=str),
        e.source,
    )


def _event(r: tuple[Any, ...]) -> CostEvent:
    d = dict(zip(_COLUMNS, r))
    tags = d["tags"] if isinstance(d["tags"], dict) else json.loads(d["tags"])
    details = d["details"] if isinstance(d["details"], dict) else json.loads(d["details"])
    return CostEvent(
        id=d["id"],
        request_id=d["request_id"],
        ts=d["ts"].astimezone(timezone.utc),
        step=d["step"],
        provider=d["provider"],
        service=d["service"],
        region=d["region"],
        quantity=d["quantity"],
        unit=d["unit"],
        unit_price=d["unit_price"],
        cost=d["cost"],
        currency=d["currency"],
        attribution=Attribution(
            cost_center=d["cost_center"],
            team=d["team"],
            feature=d["feature"],
            tenant=d["tenant"],
            environment=d["environment"],
            user=d["user_id"],
            tags=tuple(tags.items()),
        ),
        trace_id=d["trace_id"],
        span_id=d["span_id"],
        parent_span_id=d["parent_span_id"],
        name=d["name"],
        latency_ms=d["latency_ms"],
        outcome=d["outcome"],
        avoided_cost=d["avoided"],
        details=details,
        source=d["source"],
    )


def _where(f: LedgerFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("request_id", f.request_id),
        ("service", f.service),
        ("outcome", f.outcome),
        ("source", f.source),
    ):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if f.since is not None:
        clauses.append("ts >= %s")
        params.append(f.since)
    if f.until is not None:
        clauses.append("ts < %s")
        params.append(f.until)
    if f.steps:
        clauses.append("step = ANY(%s)")
        params.append(list(f.steps))
    for field_name, value in f.attribution:
        if field_name not in ATTRIBUTION_FIELDS:
            raise ValueError(f"cannot filter on {field_name!r}")
        clauses.append(f"{'user_id' if field_name == 'user' else field_name} = %s")
        params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class PostgresLedgerStore:
    def __init__(self, uri: str, schema: str | None = None, connect_timeout: float = 5.0) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise LedgerError("the PostgreSQL ledger needs psycopg: pip install 'psycopg[binary]'") from None
        if schema is not None and not _SCHEMA.match(schema):
            raise LedgerError(f"invalid schema name {schema!r}")
        self.uri, self.schema, self.connect_timeout = uri, schema, connect_timeout
        self._lock = threading.Lock()
        self._conn: Any = None  # a psycopg Connection (imported lazily)
        with self._lock:
            self._connect()
            self._migrate()

    # -- connection ---------------------------------------------------------------------
    def _connect(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    self.uri, connect_timeout=int(max(1, round(self.connect_timeout))), autocommit=True
                )
                if self.schema is not None:  # else the connection's own search_path (public, or the URI's options)
                    self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    self._conn.execute(f'SET search_path TO "{self.schema}"')
            except psycopg.Error as exc:
                self._conn = None
                raise LedgerError(f"ledger {self._where_am_i()}: cannot connect ({exc})") from None
        return self._conn

    def _where_am_i(self) -> str:
        return f"postgres schema {self.schema or '(default)'}"

    def _run(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)`` under the lock; a broken connection is dropped and the error made clear."""
        import psycopg

        with self._lock:
            conn = self._connect()
            try:
                return fn(conn)
            except psycopg.OperationalError as exc:
                try:
                    conn.close()
                finally:
                    self._conn = None
                raise LedgerError(f"ledger {self._where_am_i()}: the server went away ({exc})") from None

    def _migrate(self) -> None:
        c = self._conn
        c.execute(
            "SELECT pg_advisory_lock(hashtext(%s))", (f"truecost-migrate-{self.schema}",)
        )  # replicas start together
        try:
            c.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)")
            done = {r[0] for r in c.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                with c.transaction():
                    for stmt in filter(str.strip, sql.split(";")):
                        c.execute(stmt)
                    c.execute("INSERT INTO _migrations VALUES (%s, %s)", (name, datetime.now(timezone.utc)))
        finally:
            c.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"truecost-migrate-{self.schema}",))

    def migrations(self) -> list[str]:
        return self._run(lambda c: [r[0] for r in c.execute("SELECT name FROM _migrations ORDER BY name")])

    # -- LedgerStore --------------------------------------------------------------------
    def append(self, events: Sequence[CostEvent]) -> None:
        if not events:
            return
        import psycopg

        rows = [_row(e) for e in events]
        sql = f"INSERT INTO cost_events ({','.join(_COLUMNS)}) VALUES ({','.join(['%s'] * len(_COLUMNS))})"
        per_request = [  # in key order, so replicas adding to the same rows lock them in one order
            (*r[:7], Decimal(r[7]), Decimal(r[8]), *r[9:])
            for r in request_rollup.rollup_rows(
                (e.request_id, request_rollup.hour_of(e.ts), e.source, e.attribution.cost_center)
                + (e.attribution.feature, e.attribution.tenant, e.cost, e.avoided_cost)
                for e in events
            )
        ]

        def insert(c: Any) -> None:
            try:
                with c.transaction(), c.cursor() as cur:
                    cur.executemany(sql, rows)
                    cur.executemany(_UPSERT_REQUESTS, per_request)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raise LedgerError(
                    f"ledger {self._where_am_i()}: could not append {len(rows)} events "
                    f"({exc.__class__.__name__}: {str(exc).splitlines()[0]}); nothing from this batch was stored"
                ) from None

        self._run(insert)

    def query(self, filter: LedgerFilter = LedgerFilter(), limit: int | None = None) -> list[CostEvent]:
        where, params = _where(filter)
        sql = f"SELECT {','.join(_COLUMNS)} FROM cost_events{where} ORDER BY ts, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_event(r) for r in self._run(lambda c: c.execute(sql, params).fetchall())]

    def aggregate(
        self, group_by: Sequence[str], filter: LedgerFilter = LedgerFilter(), count_requests: bool = True
    ) -> list[AggregateRow]:
        check_group_by(group_by)
        if count_requests and request_rollup.answers(filter, group_by):
            return self._run(lambda c: request_rollup.aggregate(_fetch(c), _REQUESTS, group_by, filter))
        cols = [_BUCKETS.get(g, "user_id" if g == "user" else g) for g in group_by]
        where, params = _where(filter)
        requests = "COUNT(DISTINCT request_id)" if count_requests else "NULL"
        select = ", ".join(
            cols + ["SUM(cost)", "SUM(avoided)", "COUNT(*)", "COUNT(*) FILTER (WHERE cost IS NULL)", requests]
        )
        sql = f"SELECT {select} FROM cost_events{where}"
        if cols:
            sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(cols)))
        n = len(cols)
        out = [
            AggregateRow(
                keys=tuple(r[:n]),
                cost=r[n] or Decimal(0),
                avoided_cost=r[n + 1] or Decimal(0),
                events=r[n + 2],
                unknown=r[n + 3],
                request_count=r[n + 4],
            )
            for r in self._run(lambda c: c.execute(sql, params).fetchall())
            if r[n + 2]
        ]
        return sorted(out, key=lambda x: -x.cost)

    def request_stats(self, filter: LedgerFilter = LedgerFilter(), top: int = 10) -> tuple[list[AggregateRow], int]:
        """The ``top`` most expensive requests (keys: request id, its sources) and the number of requests
        with an unknown price: from the request rollup when it answers ``filter``, else from the events."""
        if request_rollup.answers(filter):
            return self._run(lambda c: request_rollup.request_stats(_fetch(c), _REQUESTS, filter, top))
        where, params = _where(filter)
        extra = " AND " if where else " WHERE "

        def q(c: Any) -> tuple[list[Any], int, dict[str, list[str]]]:
            rows = c.execute(
                f"SELECT request_id, COALESCE(SUM(cost), 0) s, SUM(avoided), COUNT(*), "
                f"COUNT(*) FILTER (WHERE cost IS NULL) FROM cost_events{where}{extra}request_id IS NOT NULL "
                f'GROUP BY request_id ORDER BY s DESC, request_id COLLATE "C" LIMIT {int(top)}',
                params,
            ).fetchall()
            unknown = c.execute(
                f"SELECT COUNT(DISTINCT request_id) FROM cost_events{where}{extra}cost IS NULL", params
            ).fetchone()[0]
            ids = [r[0] for r in rows]
            sources = (
                dict(
                    c.execute(
                        f"SELECT request_id, array_agg(DISTINCT source) FROM cost_events{where}{extra}"
                        f"request_id = ANY(%s) GROUP BY request_id",
                        [*params, ids],
                    ).fetchall()
                )
                if ids
                else {}
            )
            return rows, unknown, sources

        rows, unknown, sources = self._run(q)
        return [
            AggregateRow(
                keys=(r[0], tuple(sorted(sources.get(r[0]) or ()))),
                cost=r[1],
                avoided_cost=r[2] or Decimal(0),
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
        else in one scan of the events."""
        check_group_by([field])
        if field in _BUCKETS:
            raise ValueError(f"{field!r} is a time bucket, not a column")
        if field in request_rollup.FIELDS and request_rollup.answers(filter):
            return self._run(lambda c: request_rollup.requests_by(_fetch(c), _REQUESTS, field, values, filter))
        col = "user_id" if field == "user" else field
        where, params = _where(filter)
        per = "".join(f", COUNT(DISTINCT request_id) FILTER (WHERE {col} IS NOT DISTINCT FROM %s)" for _ in values)
        sql = (
            f"SELECT SUM(cost), SUM(avoided), COUNT(*), COUNT(*) FILTER (WHERE cost IS NULL), "
            f"COUNT(DISTINCT request_id){per} FROM cost_events{where}"
        )
        r = self._run(lambda c: c.execute(sql, [*values, *params]).fetchone())
        head = AggregateRow(
            keys=(),
            cost=r[0] or Decimal(0),
            avoided_cost=r[1] or Decimal(0),
            events=r[2],
            unknown=r[3],
            request_count=r[4],
        )
        return head, dict(zip(values, r[5:]))

    def count(self) -> int:
        return int(self._run(lambda c: c.execute("SELECT COUNT(*) FROM cost_events").fetchone()[0]))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
