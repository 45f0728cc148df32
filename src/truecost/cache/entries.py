"""Cache entries and the EntryStore seam (memory and SQLite)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

import numpy as np


@dataclass(slots=True)
class CacheEntry:
    id: int
    scope: str
    fingerprint: str
    text: str
    answer: dict  # the stored response body
    vector: np.ndarray | None = None
    model: str | None = None
    usage: dict = field(default_factory=dict)  # the original call's usage, to price avoided cost
    kb_version: str | None = None
    doc_ids: tuple[str, ...] = ()
    class_id: int | None = None  # equivalence class learned from verification
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    last_hit_at: float | None = None
    hits: int = 0

    @property
    def nbytes(self) -> int:
        return len(json.dumps(self.answer)) + len(self.text) + (self.vector.nbytes if self.vector is not None else 0)


@runtime_checkable
class EntryStore(Protocol):
    # declared, never probed: a shared store (several replicas use one) is also a SharedEntryStore
    shared: bool

    def get(self, entry_id: int) -> CacheEntry | None: ...

    def put(self, entry: CacheEntry) -> None: ...

    def delete(self, entry_ids: Iterable[int]) -> int: ...

    def expire(self, now: float) -> list[int]:
        """Delete entries whose expires_at has passed; return their ids."""

    def all(self) -> list[CacheEntry]:
        """Every stored entry (``SemanticCache.rebuild`` reads them after a restart)."""


class SharedEntryStore(EntryStore, Protocol):
    """An entry store several replicas share: settings every replica reads, and entries by document."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def ids_for_docs(self, doc_ids: Iterable[str]) -> list[int]:
        """Every stored entry built from any of these documents, whichever replica stored it."""


class MemoryEntryStore:
    shared = False

    def __init__(self) -> None:
        self._d: dict[int, CacheEntry] = {}
        self._lock = threading.Lock()

    def get(self, entry_id: int) -> CacheEntry | None:
        return self._d.get(entry_id)

    def put(self, entry: CacheEntry) -> None:
        with self._lock:
            self._d[entry.id] = entry

    def delete(self, entry_ids: Iterable[int]) -> int:
        with self._lock:
            return sum(self._d.pop(i, None) is not None for i in list(entry_ids))

    def expire(self, now: float) -> list[int]:
        with self._lock:
            gone = [i for i, e in self._d.items() if e.expires_at is not None and e.expires_at <= now]
            for i in gone:
                del self._d[i]
        return gone

    def all(self) -> list[CacheEntry]:
        return list(self._d.values())

    def __len__(self) -> int:
        return len(self._d)


class SQLiteEntryStore:
    """Entries on disk (WAL); vectors kept as float32 bytes so an index can be rebuilt from here."""

    shared = False  # one process's file

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("""CREATE TABLE IF NOT EXISTS cache_entries (
            id INTEGER PRIMARY KEY, scope TEXT NOT NULL, fingerprint TEXT NOT NULL, body TEXT NOT NULL,
            vector BLOB, expires_at REAL)""")
        self._conn.execute("CREATE INDEX IF NOT EXISTS ix_cache_fp ON cache_entries(fingerprint)")
        self._lock = threading.Lock()

    def get(self, entry_id: int) -> CacheEntry | None:
        with self._lock:
            row = self._conn.execute("SELECT body, vector FROM cache_entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            return None
        d = json.loads(row[0])
        d["doc_ids"] = tuple(d["doc_ids"])
        d["vector"] = np.frombuffer(row[1], dtype=np.float32).copy() if row[1] is not None else None
        return CacheEntry(**d)

    def put(self, entry: CacheEntry) -> None:
        d = asdict(entry)
        vec = d.pop("vector")
        blob = None if vec is None else np.asarray(vec, dtype=np.float32).tobytes()
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?, ?, ?, ?)",
                (entry.id, entry.scope, entry.fingerprint, json.dumps(d), blob, entry.expires_at),
            )

    def delete(self, entry_ids: Iterable[int]) -> int:
        ids = [(i,) for i in entry_ids]
        with self._lock:
            before = self._conn.total_changes
            self._conn.executemany("DELETE FROM cache_entries WHERE id = ?", ids)
            return self._conn.total_changes - before

    def expire(self, now: float) -> list[int]:
        with self._lock:
            gone = [
                r[0]
                for r in self._conn.execute(
                    "SELECT id FROM cache_entries WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
                )
            ]
            self._conn.executemany("DELETE FROM cache_entries WHERE id = ?", [(i,) for i in gone])
        return gone

    def all(self) -> list[CacheEntry]:
        with self._lock:
            ids = [r[0] for r in self._conn.execute("SELECT id FROM cache_entries ORDER BY id")]
        return [e for e in (self.get(i) for i in ids) if e is not None]

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM cache_entries").fetchone()[0]

    def close(self) -> None:
        self._conn.close()
