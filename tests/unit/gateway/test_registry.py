"""One name -> factory table per seam: config validation and construction read the same table."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from tests.support.requires import need

need("aiohttp", "gateway")

from truecost.errors import ConfigError  # noqa: E402
from truecost.gateway import registry  # noqa: E402
from truecost.gateway.app import build  # noqa: E402
from truecost.gateway.budgets import BudgetGuard, LocalBudgetGuard  # noqa: E402
from truecost.gateway.config import parse_config  # noqa: E402
from truecost.ledger.store import LedgerStore  # noqa: E402
from truecost.upstream.base import Upstream  # noqa: E402
from truecost.upstream.memory import MemoryUpstream  # noqa: E402

MODELS = {"m": {"candidates": [{"upstream": "a", "model": "gpt-6-luna"}]}}


def doc(tmp_path, **extra):
    return {
        "upstreams": {"a": {"base_url": "http://127.0.0.1:9/v1", **extra.pop("upstream", {})}},
        "models": MODELS,
        "ledger": str(tmp_path / "ledger.db"),
        **extra,
    }


def test_every_upstream_kind_config_accepts_builds_an_upstream(tmp_path):
    for kind, make in registry.UPSTREAMS.items():
        config = parse_config(doc(tmp_path, upstream={"kind": kind}))
        client = make(config.upstreams["a"])
        assert isinstance(client, Upstream), kind
        asyncio.run(client.aclose())


def test_config_refuses_a_name_outside_the_table_and_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="kind must be openai or anthropic, got 'azure'"):
        parse_config(doc(tmp_path, upstream={"kind": "azure"}))
    with pytest.raises(ConfigError, match="cache.backend must be memory, postgres or redis, got 'mongo'"):
        parse_config(doc(tmp_path, cache={"backend": "mongo"}))
    with pytest.raises(ConfigError, match="cache.index must be exact or hnsw"):
        parse_config(doc(tmp_path, cache={"index": "ivf"}))


def test_a_name_added_to_the_table_is_accepted_and_built(tmp_path, monkeypatch):
    made = []
    monkeypatch.setitem(registry.UPSTREAMS, "in-memory", lambda u: made.append(u.name) or MemoryUpstream())
    config = parse_config(doc(tmp_path, upstream={"kind": "in-memory"}))
    app = build(config)
    assert made == ["a"] and isinstance(app.state.pipeline.upstreams["a"], MemoryUpstream)
    with TestClient(app):  # start and stop: shutdown closes what build opened
        pass
    assert app.state.pipeline.upstreams["a"].closed


def test_the_budget_guard_is_built_once_from_its_table_and_handed_to_the_pipeline(tmp_path, monkeypatch):
    built: list[BudgetGuard] = []

    def local(config, store: LedgerStore) -> BudgetGuard:
        built.append(LocalBudgetGuard(config.budgets, store))
        return built[-1]

    monkeypatch.setitem(registry.BUDGET_GUARDS, "local", local)
    config = parse_config(doc(tmp_path, budgets=[{"cost_center": "cx", "limit_usd": "1"}]))
    assert registry.budget_guard_name(config) == "local"
    app = build(config)
    assert len(built) == 1 and app.state.pipeline.budgets is built[0] and built[0].store is app.state.store
    with TestClient(app):
        pass


def test_the_ledger_and_shared_budgets_follow_the_ledger_uri(tmp_path):
    config = parse_config(doc(tmp_path, budgets=[{"cost_center": "cx", "limit_usd": "1"}]))
    assert registry.ledger_kind(config.ledger) == "sqlite" and registry.budget_guard_name(config) == "local"
    pg = parse_config(
        {
            **doc(tmp_path),
            "ledger": "postgresql://u@127.0.0.1:9/db",
            "budgets": [{"cost_center": "cx", "limit_usd": "1"}],
        }
    )
    assert registry.ledger_kind(pg.ledger) == "postgresql" and registry.budget_guard_name(pg) == "postgresql"
    assert registry.budget_guard_name(parse_config({**doc(tmp_path), "ledger": "postgres://x/db"})) == "local"
    ledger = registry.LEDGERS["sqlite"](config)
    assert ledger.spool == tmp_path / "ledger.spool.jsonl"
    ledger.store.close()


def test_every_cache_index_config_accepts_builds_one():
    for name, make in registry.CACHE_INDEXES.items():
        index = make(4)
        assert index.count() == 0, name
