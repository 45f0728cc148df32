import threading
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from truecost.errors import ConfigError
from truecost.gateway.budgets import BudgetExceeded, LocalBudgetGuard
from truecost.gateway.config import BudgetConfig, parse_config
from truecost.types import Attribution


def test_concurrent_admissions_never_commit_past_the_limit():
    guard = LocalBudgetGuard([BudgetConfig("cost_center", "cx", "day", Decimal("1.00"))])
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
    guard = LocalBudgetGuard([BudgetConfig("team", "t", "day", Decimal("0.10"), hard=False)])
    day1 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    keys = guard.admit(Attribution(team="t"), Decimal("0.2"), day1)
    guard.settle(keys, Decimal("0.2"), Decimal("0.2"))
    assert guard.take_alerts() and guard.spent("team", "t", "day", day1) == Decimal("0.2")
    assert guard.spent("team", "t", "day", datetime(2026, 11, 2, tzinfo=timezone.utc)) == 0


@pytest.mark.parametrize(
    "doc,problem",
    [
        ({}, "at least one upstream"),
        ({"upstreams": {"a": {"base_url": "http://x", "api_key": "sk-..."}}, "models": {}}, "api_key_env"),
        (
            {
                "upstreams": {"a": {"base_url": "http://x"}},
                "models": {"m": {"candidates": [{"upstream": "b", "model": "x"}]}},
            },
            "unknown upstream 'b'",
        ),
        (
            {
                "upstreams": {"a": {"base_url": "http://x"}},
                "models": {"m": {"candidates": [{"upstream": "a", "model": "x"}]}},
                "keys": [{"key": "sk-plain"}],
            },
            "hashed",
        ),
        (
            {
                "upstreams": {"a": {"base_url": "http://x"}},
                "models": {"m": {"candidates": [{"upstream": "a", "model": "x"}]}},
                "budgets": [{"cost_center": "c", "limit_usd": "abc"}],
            },
            "limit_usd",
        ),
    ],
)
def test_config_errors_name_the_problem(doc, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_config(doc)


BASE = {
    "upstreams": {"a": {"base_url": "http://x"}},
    "models": {"m": {"candidates": [{"upstream": "a", "model": "x"}]}},
}


@pytest.mark.parametrize(
    "extra,problem",
    [
        ({"bogus": 1}, "unknown settings bogus"),
        ({"keys": [{"key_sha256": "a" * 64, "tenant": "t", "colour": "red"}]}, "unknown settings colour"),
        ({"keys": [{"key_sha256": "a" * 64, "allow_attribution_headers": ["feature"]}]}, "unknown feature"),
        ({"keys": [{"key_sha256": "a" * 64, "models": ["nope"]}]}, "unknown nope"),
        ({"keys": [{"key_sha256": "a" * 64, "rpm": 0}]}, "rpm"),
        ({"keys": [{"key_sha256": "a" * 64, "expires_at": "soon"}]}, "ISO 8601"),
        ({"keys": [{"name": "k", "key_sha256": "a" * 64}, {"name": "k", "key_sha256": "b" * 64}]}, "unique"),
        ({"budgets": [{"cost_center": "c", "limit_usd": "1", "unpriced": "maybe"}]}, "unpriced"),
        ({"limits": {"max_json_depth": -1}}, "max_json_depth"),
        ({"metrics_token": "plain"}, "hashed"),
    ],
)
def test_new_config_keys_are_validated_and_unknown_ones_named(extra, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_config({**BASE, **extra})


def test_key_settings_parse():
    c = parse_config(
        {
            **BASE,
            "keys": [
                {
                    "name": "k",
                    "key_sha256": "A" * 64,
                    "models": ["m"],
                    "rpm": 5,
                    "tpm": 900,
                    "expires_at": "2027-01-01T00:00:00Z",
                    "scopes": ["read"],
                    "allow_attribution_headers": ["cost_center"],
                }
            ],
            "limits": {"max_n": 4},
            "max_body_bytes": 10,
        }
    )
    (k,) = c.keys
    assert k.key_sha256 == "a" * 64 and k.models == ("m",) and (k.rpm, k.tpm) == (5, 900) and k.scopes == ("read",)
    assert k.expired(datetime(2027, 1, 1, tzinfo=timezone.utc)) and not k.expired(
        datetime(2026, 12, 31, tzinfo=timezone.utc)
    )
    assert c.limits.max_n == 4 and c.limits.max_body_bytes == 10 and c.max_body_bytes == 10
    assert c.key_for("nope") is None


def test_spend_is_loaded_from_the_ledger_and_unknown_costs_count_at_their_budget_charge():
    from truecost.ledger.events import CostEvent
    from truecost.ledger.store import MemoryLedgerStore

    now = datetime(2026, 11, 5, 12, tzinfo=timezone.utc)
    who = Attribution(cost_center="cx")

    def event(i, cost, ts, **details):
        return CostEvent(
            id=f"e{i}",
            request_id=f"r{i}",
            ts=ts,
            step="generate",
            name=None,
            provider=None,
            service="m",
            region=None,
            quantity=Decimal(1),
            unit="tokens",
            unit_price=None,
            cost=cost,
            attribution=who,
            details=details,
        )

    store = MemoryLedgerStore()
    store.append(
        [
            event(1, Decimal("0.30"), now),
            event(2, None, now, budget_charge_usd="0.25"),
            event(3, None, now, unknown_reason="upstream error"),  # not billed: not charged
            event(4, Decimal("9"), datetime(2026, 11, 4, 23, tzinfo=timezone.utc)),
        ]
    )  # yesterday
    guard = LocalBudgetGuard([BudgetConfig("cost_center", "cx", "day", Decimal("1.00"))], store)
    guard.prime(now)
    assert guard.spent("cost_center", "cx", "day", now) == Decimal("0.55")
    with pytest.raises(BudgetExceeded):
        guard.admit(who, Decimal("0.50"), now)
    keys = guard.admit(who, Decimal("0.40"), now)
    guard.settle(keys, Decimal("0.40"), Decimal("0.10"))
    assert guard.spent("cost_center", "cx", "day", now) == Decimal("0.65")
    assert guard.in_flight("cost_center", "cx", "day", now) == 0


def test_budgets_match_the_keys_own_attribution_as_well_as_the_billed_one():
    guard = LocalBudgetGuard([BudgetConfig("cost_center", "cx", "day", Decimal("0.10"))])
    own, billed = Attribution(cost_center="cx"), Attribution(cost_center="other")
    keys = guard.admit([own, billed], Decimal("0.10"))
    with pytest.raises(BudgetExceeded):
        guard.admit([own, billed], Decimal("0.01"))
    guard.settle(keys, Decimal("0.10"), Decimal("0.10"))


@pytest.mark.parametrize(
    "attrs,problem",
    [
        ({"regoin": "regional"}, "unknown settings regoin"),
        ({"region": 3}, "a mapping of attribute to value"),
        (["region"], "a mapping of attribute to value"),
    ],
)
def test_upstream_price_attributes_are_checked(attrs, problem):
    doc = {
        "upstreams": {"u": {"base_url": "http://x/v1", "price_attributes": attrs}},
        "models": {"m": {"candidates": [{"upstream": "u", "model": "gpt-6-luna"}]}},
    }
    with pytest.raises(ConfigError, match=problem):
        parse_config(doc)
    doc["upstreams"]["u"]["price_attributes"] = {"region": "Regional"}
    assert parse_config(doc).upstreams["u"].price_attributes == (("region", "regional"),)
