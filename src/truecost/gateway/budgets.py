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
