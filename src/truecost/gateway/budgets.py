"""Budgets per attribution and period, exact at the boundary, remembered across restarts.

A request is admitted only if spent + the estimates of requests in flight stay under the
limit; its estimate is released and its real cost added when it ends (exactly once: the
pipeline settles by structure). So concurrent requests cannot overspend by more than the
gap between estimates and real costs of what is in flight.

Spend of the current period is read from the ledger the first time a budget is checked in
that period (at start-up, and again when a new day or month begins), so a restart neither
forgets nor double-counts: spent = the known costs of the matching ledger rows, plus the
amount charged to the budget for rows whose cost is unknown (``budget_charge_usd``).
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence, runtime_checkable

from truecost.ledger.store import LedgerFilter, LedgerStore
from truecost.types import ZERO, Attribution

if TYPE_CHECKING:  # budgets are built by the registry, which config.py reads: no import cycle at run time
    from truecost.gateway.config import BudgetConfig

Attributions = Attribution | Iterable[Attribution]  # the key's own and the billed one

# a request in flight longer than this (a replica killed mid-request) stops holding its estimate
IN_FLIGHT_TTL = timedelta(minutes=15)


class BudgetExceeded(Exception):
    def __init__(self, budget: BudgetConfig, spent: Decimal) -> None:
        super().__init__(
            f"budget for {budget.field}={budget.value} ({budget.period}) is ${budget.limit_usd}; "
            f"${spent:.6f} is spent or in flight"
        )
        self.budget = budget


class BudgetUnpriced(Exception):
    """A model without a price cannot be held to a hard budget (unless the budget says ``unpriced: allow``)."""

    def __init__(self, budget: BudgetConfig, model: str) -> None:
        super().__init__(
            f"model {model!r} has no price in the catalog, and the hard budget for {budget.field}="
            f"{budget.value} cannot be enforced without one; add its price, or set unpriced: allow"
        )
        self.budget = budget


def _period_key(period: str, now: datetime) -> str:
    return now.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def period_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def matching(
    budgets: Sequence[BudgetConfig], attributions: Attributions, now: datetime
) -> list[tuple[BudgetConfig, tuple]]:
    """Every budget any of the attributions falls under (the key's own and the billed one), once each."""
    atts = [attributions] if isinstance(attributions, Attribution) else list(attributions)
    return [
        (b, (b.field, b.value, _period_key(b.period, now)))
        for b in budgets
        if any(getattr(a, b.field) == b.value for a in atts)
    ]


def check_unpriced(matched: list[tuple[BudgetConfig, tuple]], unpriced_model: str | None) -> None:
    if unpriced_model is None:
        return
    for b, _key in matched:
        if b.hard and b.unpriced != "allow":
            raise BudgetUnpriced(b, unpriced_model)


def ledger_spend(store: LedgerStore, budget: BudgetConfig, now: datetime) -> Decimal:
    """What the ledger already holds for this budget's current period (known costs + budget charges of unknowns)."""
    f = LedgerFilter(since=period_start(budget.period, now), attribution=((budget.field, budget.value),))
    rows = store.aggregate([], f)
    spent = sum((r.cost for r in rows), ZERO)
    if any(r.unknown for r in rows):
        for e in store.query(f):
            if e.cost is None and e.details.get("budget_charge_usd") is not None:
                spent += Decimal(str(e.details["budget_charge_usd"]))
    return spent


@runtime_checkable
class BudgetGuard(Protocol):
    """Admits a request only while its budgets' spend plus what is in flight stays under their limits.

    ``admit`` returns the admission's budget keys (opaque; [] when no budget matches), or raises
    BudgetExceeded (a hard limit would be passed), BudgetUnpriced (``unpriced_model`` under a hard budget
    that refuses unpriced models) or BudgetUnavailable (the store cannot be reached). ``settle`` releases the
    estimate and adds the real cost, or the estimate when the cost is unknown; each admission is settled
    once. ``remote`` declares network I/O: the gateway then calls admit and settle from a worker thread.
    """

    remote: bool

    def prime(self, now: datetime | None = None) -> None:
        """Load what the current periods already spent (at start-up)."""

    def admit(
        self,
        attribution: Attributions,
        estimate: Decimal,
        now: datetime | None = None,
        *,
        unpriced_model: str | None = None,
    ) -> list[tuple]: ...

    def settle(self, keys: list[tuple], estimate: Decimal, actual: Decimal | None) -> None: ...

    def take_alerts(self) -> list[str]:
        """The soft budgets passed since the last call (each alert once)."""

    def spent(self, field: str, value: str, period: str, now: datetime | None = None) -> Decimal: ...

    def in_flight(self, field: str, value: str, period: str, now: datetime | None = None) -> Decimal: ...

    def close(self) -> None:
        """Release connections (the gateway's shutdown)."""


class _Alerts:
    """Soft-budget alerts, appended by admissions (any thread) and taken by the gateway."""

    def __init__(self) -> None:
        self._alerts: list[str] = []
        self._alerts_lock = threading.Lock()

    def _alert(self, b: BudgetConfig) -> None:
        with self._alerts_lock:
            self._alerts.append(f"soft budget {b.field}={b.value} passed its ${b.limit_usd}")

    def take_alerts(self) -> list[str]:
        if not self._alerts:  # the usual case, on every request: no lock taken
            return []
        with self._alerts_lock:
            taken, self._alerts = self._alerts, []
        return taken


class LocalBudgetGuard(_Alerts):
    """In-process budgets (one gateway process): in memory, or ledger-backed when given the ledger ``store``
    (then spend survives restarts: ``prime`` reads the current periods' spend from it)."""

    remote = False

    def __init__(self, budgets: list[BudgetConfig], store: LedgerStore | None = None) -> None:
        super().__init__()
        self.budgets = budgets
        self.store = store
        self._spent: dict[tuple, Decimal] = {}
        self._in_flight: dict[tuple, Decimal] = {}
        self._lock = threading.Lock()

    def prime(self, now: datetime | None = None) -> None:
        """Load the current periods' spend from the ledger (at start-up, before the first request)."""
        now = now or datetime.now(timezone.utc)
        with self._lock:
            for b in self.budgets:
                self._load(b, (b.field, b.value, _period_key(b.period, now)), now)

    def _load(self, b: BudgetConfig, key: tuple, now: datetime) -> None:
        if key not in self._spent:
            self._spent[key] = ledger_spend(self.store, b, now) if self.store is not None else ZERO

    def admit(
        self,
        attribution: Attributions,
        estimate: Decimal,
        now: datetime | None = None,
        *,
        unpriced_model: str | None = None,
    ) -> list[tuple]:
        now = now or datetime.now(timezone.utc)
        with self._lock:
            matched = matching(self.budgets, attribution, now)
            check_unpriced(matched, unpriced_model)
            for b, key in matched:
                self._load(b, key, now)
                committed = self._spent[key] + self._in_flight.get(key, ZERO)
                if b.hard and committed + estimate > b.limit_usd:
                    raise BudgetExceeded(b, committed)
                if not b.hard and committed + estimate > b.limit_usd:
                    self._alert(b)
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

    def in_flight(self, field: str, value: str, period: str, now: datetime | None = None) -> Decimal:
        key = (field, value, _period_key(period, now or datetime.now(timezone.utc)))
        return self._in_flight.get(key, ZERO)

    def close(self) -> None:
        """Nothing to release: the ledger store is closed by its owner."""


class BudgetUnavailable(Exception):
    """The shared budget store cannot be reached: budgeted requests are refused, never let through unchecked."""


class PostgresBudgetGuard(_Alerts):
    """The same rule as LocalBudgetGuard, kept in PostgreSQL so every replica enforces one budget.

    Admission locks the budget rows (``SELECT ... FOR UPDATE``) in one transaction: across
    replicas, spent + in-flight estimates never pass a hard limit. Each admission holds its
    estimate in a row of its own that expires (``IN_FLIGHT_TTL``), so a replica killed
    mid-request does not hold budget for ever. A period's row is seeded from the ledger when
    it is created. Only requests that match a budget touch the database.
    """

    remote = True  # network I/O: the gateway calls it from a worker thread

    def __init__(
        self, budgets: list[BudgetConfig], uri: str, schema: str | None = None, store: LedgerStore | None = None
    ) -> None:
        import psycopg  # optional: the postgres extra

        super().__init__()
        self._psycopg: Any = psycopg
        self.budgets, self.uri, self.schema, self.store = budgets, uri, schema, store
        self._lock = threading.Lock()
        self._conn = None
        with self._lock:
            c = self._connection()
            c.execute("SELECT pg_advisory_lock(hashtext('truecost-budgets-setup'))")
            try:
                c.execute(
                    "CREATE TABLE IF NOT EXISTS budget_usage (field TEXT NOT NULL, value TEXT NOT NULL, "
                    "period_key TEXT NOT NULL, spent NUMERIC NOT NULL DEFAULT 0, in_flight NUMERIC NOT NULL DEFAULT 0, "
                    "PRIMARY KEY (field, value, period_key))"
                )
                c.execute(
                    "CREATE TABLE IF NOT EXISTS budget_in_flight (id TEXT PRIMARY KEY, field TEXT NOT NULL, "
                    "value TEXT NOT NULL, period_key TEXT NOT NULL, amount NUMERIC NOT NULL, "
                    "expires_at TIMESTAMPTZ NOT NULL)"
                )
                c.execute(
                    "CREATE INDEX IF NOT EXISTS budget_in_flight_key ON budget_in_flight (field, value, period_key)"
                )
            finally:
                c.execute("SELECT pg_advisory_unlock(hashtext('truecost-budgets-setup'))")

    def _connection(self):
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._psycopg.connect(self.uri, autocommit=True, connect_timeout=3)
                if self.schema:
                    self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    self._conn.execute(f'SET search_path TO "{self.schema}"')
            except self._psycopg.Error as exc:
                self._conn = None
                raise BudgetUnavailable(f"budget store unreachable ({type(exc).__name__})") from None
        return self._conn

    def prime(self, now: datetime | None = None) -> None:
        """Nothing to load: the rows live in PostgreSQL (seeded from the ledger when a period's row is created)."""

    def _tx(self, fn):
        with self._lock:
            c = self._connection()
            try:
                with c.transaction():
                    return fn(c)
            except self._psycopg.OperationalError as exc:
                c.close()
                self._conn = None
                raise BudgetUnavailable(f"budget store went away ({type(exc).__name__})") from None

    def admit(
        self,
        attribution: Attributions,
        estimate: Decimal,
        now: datetime | None = None,
        *,
        unpriced_model: str | None = None,
    ) -> list[tuple]:
        now = now or datetime.now(timezone.utc)
        matched = matching(self.budgets, attribution, now)
        check_unpriced(matched, unpriced_model)
        if not matched:
            return []
        admission = uuid.uuid4().hex

        def go(c):
            for b, key in matched:
                created = c.execute(
                    "INSERT INTO budget_usage (field, value, period_key) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING RETURNING 1",
                    key,
                ).fetchone()
                if created and self.store is not None:  # a new period: what the ledger already holds counts
                    c.execute(
                        "UPDATE budget_usage SET spent = %s WHERE field = %s AND value = %s AND period_key = %s",
                        (ledger_spend(self.store, b, now), *key),
                    )
                (spent,) = c.execute(
                    "SELECT spent FROM budget_usage WHERE field = %s AND value = %s AND period_key = %s FOR UPDATE", key
                ).fetchone()
                (in_flight,) = c.execute(
                    "SELECT COALESCE(SUM(amount), 0) FROM budget_in_flight WHERE field = %s AND "
                    "value = %s AND period_key = %s AND expires_at > %s",
                    (*key, now),
                ).fetchone()
                committed = spent + in_flight
                if committed + estimate > b.limit_usd:
                    if b.hard:
                        raise BudgetExceeded(b, committed)
                    self._alert(b)
            for i, (_b, key) in enumerate(matched):
                c.execute(
                    "INSERT INTO budget_in_flight (id, field, value, period_key, amount, expires_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (f"{admission}-{i}", *key, estimate, now + IN_FLIGHT_TTL),
                )
            c.execute("DELETE FROM budget_in_flight WHERE expires_at < %s", (now - IN_FLIGHT_TTL,))
            return [(*key, f"{admission}-{i}") for i, (_b, key) in enumerate(matched)]

        return self._tx(go)

    def settle(self, keys: list[tuple], estimate: Decimal, actual: Decimal | None) -> None:
        if not keys:
            return
        charge = actual if actual is not None else estimate  # an unknown cost is charged at its estimate

        def go(c):
            for field, value, period_key, admission in keys:
                c.execute("DELETE FROM budget_in_flight WHERE id = %s", (admission,))
                c.execute(
                    "UPDATE budget_usage SET spent = spent + %s WHERE field = %s AND value = %s AND period_key = %s",
                    (charge, field, value, period_key),
                )

        self._tx(go)

    def spent(self, field: str, value: str, period: str, now: datetime | None = None) -> Decimal:
        key = (field, value, _period_key(period, now or datetime.now(timezone.utc)))
        row = self._tx(
            lambda c: c.execute(
                "SELECT spent FROM budget_usage WHERE field = %s AND value = %s AND period_key = %s", key
            ).fetchone()
        )
        return row[0] if row else ZERO

    def in_flight(self, field: str, value: str, period: str, now: datetime | None = None) -> Decimal:
        now = now or datetime.now(timezone.utc)
        key = (field, value, _period_key(period, now))
        row = self._tx(
            lambda c: c.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM budget_in_flight WHERE field = %s AND "
                "value = %s AND period_key = %s AND expires_at > %s",
                (*key, now),
            ).fetchone()
        )
        return row[0]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
