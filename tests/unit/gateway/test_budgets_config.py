import threading
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from truecost.errors import ConfigError
from truecost.gateway.budgets import BudgetExceeded, BudgetGuard
from truecost.gateway.config import BudgetConfig, parse_config
from truecost.types import Attribution


def test_concurrent_admissions_never_commit_past_the_limit():
    guard = BudgetGuard([BudgetConfig("cost_center", "cx", "day", Decimal("1.00"))])
    who = Attribution(cost_center="cx")
    admitted, refused, lock = [], [], threading.Lock()

    def work():
        for _ in range(50):
            try:
                keys = guard.admit(who, Decimal("0.03"))
            except BudgetExceeded:
                with lock:
                    refused.append(1)
                continue
            with lock:
                admitted.append(keys)
            guard.settle(keys, Decimal("0.03"), Decimal("0.03"))
    threads = [threading.Thread(target=work) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(admitted) == 33 and len(refused) == 8 * 50 - 33  # 33 x 0.03 = 0.99; the 34th would cross
    assert guard.spent("cost_center", "cx", "day") == Decimal("0.99")


def test_budget_periods_reset_and_soft_budgets_alert():
    guard = BudgetGuard([BudgetConfig("team", "t", "day", Decimal("0.10"), hard=False)])
    day1 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    keys = guard.admit(Attribution(team="t"), Decimal("0.2"), day1)
    guard.settle(keys, Decimal("0.2"), Decimal("0.2"))
    assert guard.alerts and guard.spent("team", "t", "day", day1) == Decimal("0.2")
    assert guard.spent("team", "t", "day", datetime(2026, 11, 2, tzinfo=timezone.utc)) == 0


@pytest.mark.parametrize("doc,problem", [
    ({}, "at least one upstream"),
    ({"upstreams": {"a": {"base_url": "http://x", "api_key": "sk-..."}}, "models": {}}, "api_key_env"),
    ({"upstreams": {"a": {"base_url": "http://x"}}, "models": {"m": {"candidates": [{"upstream": "b", "model": "x"}]}}},
     "unknown upstream 'b'"),
    ({"upstreams": {"a": {"base_url": "http://x"}}, "models": {"m": {"candidates": [{"upstream": "a", "model": "x"}]}},
      "keys": [{"key": "sk-plain"}]}, "hashed"),
    ({"upstreams": {"a": {"base_url": "http://x"}}, "models": {"m": {"candidates": [{"upstream": "a", "model": "x"}]}},
      "budgets": [{"cost_center": "c", "limit_usd": "abc"}]}, "limit_usd"),
])
def test_config_errors_name_the_problem(doc, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_config(doc)
