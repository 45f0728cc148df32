"""Who spent what, on which step, and what did the cache and router save?"""

from truecost.ledger.events import GENERATION_STEPS, OUTCOMES, STEP_KINDS, CostEvent
from truecost.ledger.store import AggregateRow, LedgerFilter, LedgerStore, MemoryLedgerStore
from truecost.ledger.writer import BatchWriter, replay_spool

__all__ = [
    "CostEvent",
    "STEP_KINDS",
    "OUTCOMES",
    "GENERATION_STEPS",
    "LedgerStore",
    "LedgerFilter",
    "AggregateRow",
    "MemoryLedgerStore",
    "BatchWriter",
    "replay_spool",
    "open_store",
]


def open_store(url: str) -> LedgerStore:
    """'memory:' or 'sqlite:///path/to/ledger.db' (a bare path means SQLite)."""
    if url in ("memory:", "memory://"):
        return MemoryLedgerStore()
    from truecost.ledger.sqlite import SQLiteLedgerStore

    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    return SQLiteLedgerStore(path)
