"""Budgets per attribution and period, exact at the boundary.

A request is admitted only if spent + the estimates of requests in flight stay under the
limit; its estimate is released and its real cost added when it ends. So concurrent
requests cannot overspend by more than the gap between estimates and real costs of what
is in flight.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from decimal import Decimal

from truecost.gateway.config import BudgetConfig
from truecost.types import ZERO, Attribution


class BudgetExceeded(Exception):
    def __init__(self, budget: BudgetConfig, spent: Decimal) -> None:
        super().__init__(f"budget for {budget.field}={budget.value} ({budget.period}) is ${budget.limit_usd}; "
                         f"${spent:.6f} is spent or in flight")
        self.budget = budget


def _period_key(period: str, now: datetime) -> str:
    return now.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


class BudgetGuard:
    def __init__(self, budgets: list[BudgetConfig]) -> None:
        self.budgets = budgets
        self._spent: dict[tuple, Decimal] = {}
        self._in_flight: dict[tuple, Decimal] = {}
        self._lock = threading.Lock()
        self.alerts: list[str] = []

    def _matching(self, attribution: Attribution, now: datetime) -> list[tuple[BudgetConfig, tuple]]:
        return [(b, (b.field, b.value, _period_key(b.period, now))) for b in self.budgets
                if getattr(attribution, b.field) == b.value]

    def admit(self, attribution: Attribution, estimate: Decimal, now: datetime | None = None) -> list[tuple]:
        now = now or datetime.now(timezone.utc)
        with self._lock:
            matched = self._matching(attribution, now)
            for b, key in matched:
                committed = self._spent.get(key, ZERO) + self._in_flight.get(key, ZERO)
                if b.hard and committed + estimate > b.limit_usd:
                    raise BudgetExceeded(b, committed)
                if not b.hard and committed + estimate > b.limit_usd:
                    self.alerts.append(f"soft budget {b.field}={b.value} passed its ${b.limit_usd}")
            for _b, key in matched:
                self._in_flight[key] = self._in_flight.get(key, ZERO) + estimate
            return [key for _b, key in matched]

    def settle(self, keys: list[tuple], estimate: Decimal, actual: Decimal | None) -> None:
        with self._lock:
            for key in keys:
                self._in_flight[key] = self._in_flight.get(key, ZERO) - estimate
                # an unknown cost is charged at its estimate: never silently free
                self._spent[key] = self._spent.get(key, ZERO) + (actual if actual is not None else estimate)

    def spent(self, field: str, value: str, period: str, now: datetime | None = None) -> Decimal:
        key = (field, value, _period_key(period, now or datetime.now(timezone.utc)))
        return self._spent.get(key, ZERO)


class BudgetUnavailable(Exception):
    """The shared budget store cannot be reached: budgeted requests are refused, never let through unchecked."""


class PostgresBudgetGuard:
    """The same rule as BudgetGuard, kept in PostgreSQL so every replica enforces one budget.

    Admission locks the budget rows (``SELECT ... FOR UPDATE``) in one transaction: across
    replicas, spent + in-flight estimates never pass a hard limit. Only requests that match
    a budget touch the database.
    """

    remote = True  # network I/O: the gateway calls it from a worker thread

    def __init__(self, budgets: list[BudgetConfig], uri: str, schema: str | None = None) -> None:
        import psycopg

        self.budgets, self.uri, self.schema = budgets, uri, schema
        self.alerts: list[str] = []
        self._lock = threading.Lock()
        self._conn = None
        with self._lock:
            c = self._connection()
            c.execute("SELECT pg_advisory_lock(hashtext('truecost-budgets-setup'))")
            try:
                c.execute("CREATE TABLE IF NOT EXISTS budget_usage (field TEXT NOT NULL, value TEXT NOT NULL, "
                          "period_key TEXT NOT NULL, spent NUMERIC NOT NULL DEFAULT 0, in_flight NUMERIC NOT NULL DEFAULT 0, "
                          "PRIMARY KEY (field, value, period_key))")
            finally:
                c.execute("SELECT pg_advisory_unlock(hashtext('truecost-budgets-setup'))")
        self._psycopg = psycopg

    def _connection(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.uri, autocommit=True, connect_timeout=3)
                if self.schema:
                    self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    self._conn.execute(f'SET search_path TO "{self.schema}"')
            except psycopg.Error as exc:
                self._conn = None
                raise BudgetUnavailable(f"budget store unreachable ({exc})") from None
        return self._conn

    def _matching(self, attribution: Attribution, now: datetime) -> list[tuple[BudgetConfig, tuple]]:
        return [(b, (b.field, b.value, _period_key(b.period, now))) for b in self.budgets
                if getattr(attribution, b.field) == b.value]

    def _tx(self, fn):
        with self._lock:
            c = self._connection()
            try:
                with c.transaction():
                    return fn(c)
            except self._psycopg.OperationalError as exc:
                c.close()
                self._conn = None
                raise BudgetUnavailable(f"budget store went away ({exc})") from None

    def admit(self, attribution: Attribution, estimate: Decimal, now: datetime | None = None) -> list[tuple]:
        matched = self._matching(attribution, now or datetime.now(timezone.utc))
        if not matched:
            return []

        def go(c):
            for b, key in matched:
                c.execute("INSERT INTO budget_usage (field, value, period_key) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", key)
                spent, in_flight = c.execute("SELECT spent, in_flight FROM budget_usage WHERE field = %s AND value = %s "
                                             "AND period_key = %s FOR UPDATE", key).fetchone()
                committed = spent + in_flight
                if committed + estimate > b.limit_usd:
                    if b.hard:
                        raise BudgetExceeded(b, committed)
                    self.alerts.append(f"soft budget {b.field}={b.value} passed its ${b.limit_usd}")
            for _b, key in matched:
                c.execute("UPDATE budget_usage SET in_flight = in_flight + %s WHERE field = %s AND value = %s "
                          "AND period_key = %s", (estimate, *key))
            return [key for _b, key in matched]
        return self._tx(go)

    def settle(self, keys: list[tuple], estimate: Decimal, actual: Decimal | None) -> None:
        if not keys:
            return
        charge = actual if actual is not None else estimate  # an unknown cost is charged at its estimate

        def go(c):
            for key in keys:
                c.execute("UPDATE budget_usage SET in_flight = in_flight - %s, spent = spent + %s WHERE field = %s "
                          "AND value = %s AND period_key = %s", (estimate, charge, *key))
        self._tx(go)

    def spent(self, field: str, value: str, period: str, now: datetime | None = None) -> Decimal:
        key = (field, value, _period_key(period, now or datetime.now(timezone.utc)))
        row = self._tx(lambda c: c.execute("SELECT spent FROM budget_usage WHERE field = %s AND value = %s AND "
                                           "period_key = %s", key).fetchone())
        return row[0] if row else ZERO
