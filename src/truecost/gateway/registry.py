"""The gateway's backends by name: one name -> factory table per seam.

``config.py`` refuses a name that is not in its table (with the list of known names), and
``app.build`` constructs from the same table, so a backend is added in one place. The key
stores' table is ``truecost.gateway.key_backends.BACKENDS``. Factories take the parsed config
(and what they are built on); optional dependencies (psycopg, redis) are imported by the
backends themselves when they are constructed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

from truecost.cache.entries import EntryStore, MemoryEntryStore
from truecost.cache.index import ExactIndex, HNSWIndex, VectorIndex
from truecost.cache.pgvector import PgEntryStore, PgVectorIndex
from truecost.cache.redis_store import RedisEntryStore, RedisVectorIndex
from truecost.gateway.budgets import BudgetGuard, LocalBudgetGuard, PostgresBudgetGuard
from truecost.ledger.postgres import PostgresLedgerStore
from truecost.ledger.sqlite import SQLiteLedgerStore
from truecost.ledger.store import LedgerStore
from truecost.upstream.anthropic import AnthropicUpstream
from truecost.upstream.base import Upstream
from truecost.upstream.openai_compat import OpenAICompatibleUpstream

if TYPE_CHECKING:
    from truecost.gateway.config import CacheConfig, GatewayConfig, UpstreamConfig


# -- Upstream: `kind:` of an upstream --------------------------------------------------------------------


def _client(cls: type) -> Callable[[UpstreamConfig], Upstream]:
    def make(u: UpstreamConfig) -> Upstream:
        client: Upstream = cls(
            u.base_url,
            u.api_key(),
            connect_timeout=u.connect_timeout,
            first_byte_timeout=u.first_byte_timeout,
            idle_timeout=u.idle_timeout,
            max_retries=u.max_retries,
        )
        return client

    return make


UPSTREAMS: dict[str, Callable[[UpstreamConfig], Upstream]] = {
    "openai": _client(OpenAICompatibleUpstream),  # any OpenAI-compatible endpoint
    "anthropic": _client(AnthropicUpstream),  # the Messages API
}


# -- LedgerStore: chosen by the `ledger:` URI ------------------------------------------------------------


class Ledger(NamedTuple):
    store: LedgerStore
    spool: Path  # this replica's durable spool (its write-ahead log lives beside it)


def ledger_kind(uri: str) -> str:
    """postgresql://... (or postgres://...) -> postgresql; anything else is a SQLite path."""
    return "postgresql" if uri.startswith(("postgresql://", "postgres://")) else "sqlite"


def _sqlite_ledger(config: GatewayConfig) -> Ledger:
    spool = Path(config.spool) if config.spool else Path(config.ledger).with_suffix(".spool.jsonl")
    return Ledger(SQLiteLedgerStore(config.ledger), spool)


def _postgres_ledger(config: GatewayConfig) -> Ledger:
    # one spool per replica: set `spool:` in each replica's config
    return Ledger(
        PostgresLedgerStore(config.ledger, schema=config.ledger_schema),
        Path(config.spool or ".truecost/gateway.spool.jsonl"),
    )


LEDGERS: dict[str, Callable[[GatewayConfig], Ledger]] = {"sqlite": _sqlite_ledger, "postgresql": _postgres_ledger}


# -- BudgetGuard: beside a PostgreSQL ledger when there are budgets, else in the process ---------------


def _local_budgets(config: GatewayConfig, store: LedgerStore) -> BudgetGuard:
    guard = LocalBudgetGuard(config.budgets, store)
    guard.prime()  # the current periods' spend, from the ledger: a restart forgets nothing
    return guard


def _postgres_budgets(config: GatewayConfig, store: LedgerStore) -> BudgetGuard:
    return PostgresBudgetGuard(config.budgets, config.ledger, config.ledger_schema, store=store)


BUDGET_GUARDS: dict[str, Callable[[GatewayConfig, LedgerStore], BudgetGuard]] = {
    "local": _local_budgets,  # one gateway process; spend read back from the ledger at start-up
    "postgresql": _postgres_budgets,  # shared by every replica on the same database
}


def budget_guard_name(config: GatewayConfig) -> str:
    return "postgresql" if config.budgets and ledger_kind(config.ledger) == "postgresql" else "local"


# -- the semantic cache's VectorIndex and EntryStore: `cache.backend:` (and `cache.index:` in memory) ----

CACHE_INDEXES: dict[str, Callable[[int], VectorIndex]] = {"exact": ExactIndex, "hnsw": HNSWIndex}


def _memory_cache(c: CacheConfig, dims: int) -> tuple[VectorIndex, EntryStore]:
    return CACHE_INDEXES[c.index](dims), MemoryEntryStore()


def _postgres_cache(c: CacheConfig, dims: int) -> tuple[VectorIndex, EntryStore]:
    url = str(c.url)  # config validation: a shared backend has its url
    return PgVectorIndex(url, dims, prefix=c.prefix), PgEntryStore(url, prefix=c.prefix)


def _redis_cache(c: CacheConfig, dims: int) -> tuple[VectorIndex, EntryStore]:
    url = str(c.url)
    return RedisVectorIndex(url, dims, prefix=c.prefix), RedisEntryStore(url, prefix=c.prefix)


CACHE_BACKENDS: dict[str, Callable[[CacheConfig, int], tuple[VectorIndex, EntryStore]]] = {
    "memory": _memory_cache,  # per process
    "postgres": _postgres_cache,  # pgvector, shared by the replicas on the same url and prefix
    "redis": _redis_cache,  # Redis Stack (RediSearch), shared likewise
}


def known(table: dict) -> str:
    """The names of a table, for error messages: 'a, b or c'."""
    names = list(table)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
