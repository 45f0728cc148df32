"""The BudgetGuard contract, run on every implementation: in-process in memory, in-process backed by a
SQLite ledger, and PostgreSQL (shared by replicas) on the real server.

A request is admitted only while spent + in flight + its estimate stays within every hard budget it falls
under; settling releases the estimate and adds the real cost (the estimate when the cost is unknown)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tests.support.servers import fresh_name
from truecost.gateway.budgets import BudgetExceeded, BudgetGuard, BudgetUnpriced, LocalBudgetGuard, PostgresBudgetGuard
from truecost.gateway.config import BudgetConfig
from truecost.ledger import CostEvent, MemoryLedgerStore
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.types import Attribution

T0 = datetime(2026, 11, 5, 12, 0, tzinfo=timezone.utc)
CX = Attribution(cost_center="cx", team="t1")
D = Decimal


def day(limit: str, field: str = "cost_center", value: str = "cx", **kw) -> BudgetConfig:
    return BudgetConfig(field, value, kw.pop("period", "day"), D(limit), **kw)


class Backend:
    """Opens guards of one implementation over one store, like a gateway (re)starting on the same ledger."""

    def __init__(self, kind: str, tmp_path, request) -> None:
        self.kind, self.guards, self.stores = kind, [], []
        if kind == "sqlite":
            self.store = SQLiteLedgerStore(tmp_path / "ledger.db")
        elif kind == "postgres":
            from truecost.ledger.postgres import PostgresLedgerStore

            self.uri, self.schema = request.getfixturevalue("postgres_server").uri, fresh_name()
            self.store = PostgresLedgerStore(self.uri, schema=self.schema)
        else:
            self.store = None

    @property
    def persistent(self) -> bool:
        return self.store is not None

    def guard(self, budgets: list[BudgetConfig]) -> BudgetGuard:
        if self.kind == "postgres":
            g: BudgetGuard = PostgresBudgetGuard(budgets, self.uri, self.schema, store=self.store)
        else:
            g = LocalBudgetGuard(budgets, self.store)
        g.prime(T0)
        self.guards.append(g)
        return g

    def record(self, cost: str | None, ts: datetime = T0, **details) -> None:
        """A ledger row, as the gateway's writer leaves one."""
        self.store.append(
            [
                CostEvent(
                    id=fresh_name("e"),
                    request_id=fresh_name("r"),
                    ts=ts,
                    step="generate",
                    service="m",
                    quantity=D(1),
                    unit="tokens",
                    attribution=CX,
                    cost=None if cost is None else D(cost),
                    details=details,
                )
            ]
        )

    def close(self) -> None:
        for g in self.guards:
            g.close()
        if self.store is not None:
            self.store.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request, tmp_path):
    b = Backend(request.param, tmp_path, request)
    yield b
    b.close()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_backend(request, tmp_path):
    b = Backend(request.param, tmp_path, request)
    yield b
    b.close()


def test_declares_whether_it_does_network_io(backend):
    g = backend.guard([day("1")])
    assert isinstance(g, BudgetGuard)
    assert g.remote is (backend.kind == "postgres")


def test_a_request_under_no_budget_is_admitted_untouched(backend):
    g = backend.guard([day("1")])
    keys = g.admit(Attribution(cost_center="other"), D("5"), T0)
    assert keys == []
    g.settle(keys, D("5"), D("5"))
    assert g.spent("cost_center", "other", "day", T0) == 0 and g.spent("cost_center", "cx", "day", T0) == 0


def test_admission_holds_the_estimate_and_settling_charges_the_real_cost(backend):
    g = backend.guard([day("1")])
    keys = g.admit(CX, D("0.40"), T0)
    assert keys and g.in_flight("cost_center", "cx", "day", T0) == D("0.40")
    g.settle(keys, D("0.40"), D("0.125"))
    assert g.in_flight("cost_center", "cx", "day", T0) == 0
    assert g.spent("cost_center", "cx", "day", T0) == D("0.125")


def test_a_hard_limit_counts_what_is_in_flight_and_admits_exactly_up_to_it(backend):
    g = backend.guard([day("1")])
    first = g.admit(CX, D("0.60"), T0)
    with pytest.raises(BudgetExceeded, match="cost_center=cx"):
        g.admit(CX, D("0.41"), T0)  # 0.60 in flight + 0.41 > 1
    second = g.admit(CX, D("0.40"), T0)  # exactly the limit
    with pytest.raises(BudgetExceeded):
        g.admit(CX, D("0.000001"), T0)
    g.settle(first, D("0.60"), D("0.10"))
    g.settle(second, D("0.40"), D("0.10"))
    assert g.spent("cost_center", "cx", "day", T0) == D("0.20")
    assert g.admit(CX, D("0.80"), T0)


def test_an_unknown_cost_is_charged_at_its_estimate(backend):
    g = backend.guard([day("1")])
    keys = g.admit(CX, D("0.30"), T0)
    g.settle(keys, D("0.30"), None)
    assert g.spent("cost_center", "cx", "day", T0) == D("0.30")


def test_a_soft_budget_admits_and_alerts_once(backend):
    g = backend.guard([day("0.10", hard=False)])
    keys = g.admit(CX, D("0.20"), T0)
    assert keys
    alerts = g.take_alerts()
    assert len(alerts) == 1 and "cost_center=cx" in alerts[0]
    assert g.take_alerts() == []
    g.settle(keys, D("0.20"), D("0.20"))
    assert g.spent("cost_center", "cx", "day", T0) == D("0.20")


def test_an_unpriced_model_is_refused_only_by_hard_budgets_that_refuse_it(backend):
    g = backend.guard([day("1")])
    with pytest.raises(BudgetUnpriced, match="no-price-model"):
        g.admit(CX, D("0"), T0, unpriced_model="no-price-model")
    assert g.in_flight("cost_center", "cx", "day", T0) == 0
    assert backend.guard([day("1", unpriced="allow")]).admit(CX, D("0"), T0, unpriced_model="no-price-model")
    assert backend.guard([day("1", field="team", value="t1", hard=False)]).admit(
        CX, D("0"), T0, unpriced_model="no-price-model"
    )


def test_every_budget_of_either_attribution_holds_the_request(backend):
    own, billed = Attribution(cost_center="cx"), Attribution(cost_center="other", team="t9")
    g = backend.guard([day("1"), day("0.50", field="team", value="t9"), day("1", value="unrelated")])
    keys = g.admit([own, billed], D("0.30"), T0)
    assert len(keys) == 2
    with pytest.raises(BudgetExceeded, match="team=t9"):
        g.admit([billed], D("0.30"), T0)
    g.settle(keys, D("0.30"), D("0.30"))
    assert g.spent("cost_center", "cx", "day", T0) == D("0.30") == g.spent("team", "t9", "day", T0)
    assert g.spent("cost_center", "unrelated", "day", T0) == 0


def test_periods_start_again(backend):
    g = backend.guard([day("1"), day("1", field="team", value="t1", period="month")])
    keys = g.admit(CX, D("0.90"), T0)
    g.settle(keys, D("0.90"), D("0.90"))
    tomorrow = T0 + timedelta(days=1)
    assert g.spent("cost_center", "cx", "day", tomorrow) == 0
    with pytest.raises(BudgetExceeded, match="team=t1"):  # the month is the same month
        g.admit(CX, D("0.20"), tomorrow)
    next_month = datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)
    assert g.admit(CX, D("0.90"), next_month)


def test_concurrent_admissions_never_pass_the_limit(backend):
    g = backend.guard([day("0.50")])
    admitted, refused, lock = [], [], threading.Lock()

    def work():
        for _ in range(12):
            try:
                keys = g.admit(CX, D("0.03"), T0)
            except BudgetExceeded:
                with lock:
                    refused.append(1)
                continue
            with lock:
                admitted.append(keys)
            g.settle(keys, D("0.03"), D("0.03"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 16 and len(refused) == 4 * 12 - 16  # 16 x 0.03 = 0.48; the 17th would pass 0.50
    assert g.spent("cost_center", "cx", "day", T0) == D("0.48") and g.in_flight("cost_center", "cx", "day", T0) == 0


def test_what_the_ledger_already_holds_counts(ledger_backend):
    b = ledger_backend
    b.record("0.30")
    b.record(None, budget_charge_usd="0.25")  # an unknown cost the budget was charged for
    b.record(None, unknown_reason="refused upstream")  # never billed: not charged
    b.record("9", ts=T0 - timedelta(days=1))  # yesterday
    g = b.guard([day("1")])
    with pytest.raises(BudgetExceeded):
        g.admit(CX, D("0.50"), T0)
    keys = g.admit(CX, D("0.45"), T0)
    g.settle(keys, D("0.45"), D("0.05"))
    assert g.spent("cost_center", "cx", "day", T0) == D("0.60")


def test_a_restart_on_the_same_ledger_forgets_nothing_and_counts_nothing_twice(ledger_backend):
    b = ledger_backend
    g = b.guard([day("1")])
    keys = g.admit(CX, D("0.50"), T0)
    b.record("0.40")  # the request's ledger row, as the gateway's writer leaves it
    g.settle(keys, D("0.50"), D("0.40"))
    again = b.guard([day("1")])
    assert again.spent("cost_center", "cx", "day", T0) == D("0.40")
    with pytest.raises(BudgetExceeded):
        again.admit(CX, D("0.61"), T0)


def test_the_memory_guard_starts_from_zero_without_a_ledger():
    g = LocalBudgetGuard([day("1")])
    g.prime(T0)
    assert g.spent("cost_center", "cx", "day", T0) == 0 and not g.remote
    store = MemoryLedgerStore()  # given a ledger, even the in-memory one, it reads it
    store.append(
        [
            CostEvent(
                id="e1",
                request_id="r1",
                ts=T0,
                step="generate",
                service="m",
                quantity=D(1),
                unit="tokens",
                attribution=CX,
                cost=D("0.7"),
            )
        ]
    )
    primed = LocalBudgetGuard([day("1")], store)
    primed.prime(T0)
    assert primed.spent("cost_center", "cx", "day", T0) == D("0.7")


def test_postgres_replicas_enforce_one_budget(request, tmp_path):
    b = Backend("postgres", tmp_path, request)
    try:
        one, two = b.guard([day("1")]), b.guard([day("1")])
        held = one.admit(CX, D("0.70"), T0)
        with pytest.raises(BudgetExceeded):
            two.admit(CX, D("0.31"), T0)  # the other replica's request is in flight
        one.settle(held, D("0.70"), D("0.20"))
        assert two.spent("cost_center", "cx", "day", T0) == D("0.20")
        assert two.admit(CX, D("0.80"), T0)
    finally:
        b.close()
