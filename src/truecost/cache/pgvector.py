"""PostgreSQL backends of the cache seams: a pgvector HNSW VectorIndex and an EntryStore.

Shared by every gateway replica that points at the same database. The scope is a hard
partition here too: every search carries ``WHERE scope = ...`` (pgvector's iterative index
scan keeps filtered results complete), so a scope never sees another's entries, whatever
the similarity.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict
from typing import Iterable, Sequence

import numpy as np

from truecost.cache.entries import CacheEntry
from truecost.cache.index import check_vectors
from truecost.errors import TruecostError

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


class CacheBackendError(TruecostError):
    """The shared cache store is unreachable or misconfigured (the cache then misses; requests go on)."""


def _literal(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in v.tolist()) + "]"


class _PgBase:
    def __init__(self, uri: str, prefix: str, schema: str = "public") -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise CacheBackendError("the PostgreSQL cache needs psycopg: pip install 'psycopg[binary]'") from None
        for name in (prefix, schema):
            if not _NAME.match(name):
                raise CacheBackendError(f"invalid name {name!r} (lowercase letters, digits, underscores)")
        self.uri, self.prefix, self.schema = uri, prefix, schema
        self._lock = threading.Lock()
        self._conn = None

    def _connection(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.uri, autocommit=True, connect_timeout=5)
                self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                self._conn.execute(f'SET search_path TO "{self.schema}", public')
            except psycopg.Error as exc:
                self._conn = None
                raise CacheBackendError(f"cannot reach the cache database ({exc})") from None
        return self._conn

    def _run(self, fn):
        import psycopg

        with self._lock:
            conn = self._connection()
            try:
                return fn(conn)
            except psycopg.OperationalError as exc:
                conn.close()
                self._conn = None
                raise CacheBackendError(f"the cache database went away ({exc})") from None

    def _setup(self, fn) -> None:
        """DDL under an advisory lock: replicas starting together would otherwise race on CREATE ... IF NOT EXISTS."""

        def locked(c):
            c.execute("SELECT pg_advisory_lock(hashtext('truecost-cache-setup'))")
            try:
                fn(c)
            finally:
                c.execute("SELECT pg_advisory_unlock(hashtext('truecost-cache-setup'))")

        self._run(locked)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class PgVectorIndex(_PgBase):
    """HNSW over ``vector_cosine_ops``; similarity = 1 - cosine distance.

    New tables are hash-partitioned by scope (``partitions``, 8 by default; 0 for one table):
    a scope's search then walks one partition's graph, where its own rows are a large share,
    instead of one graph where they are a few percent and the filtered walk stops short.
    ``bench/shared_cache_scale.py`` (1M entries, 50 scopes, ef_search 400): recall@1 0.51 on
    one table (0.33 at the old ef_search 100), 0.94 on 8 partitions, p50 8.9 ms and p99 23 ms
    (one table: p99 94 ms). An existing table is used as it was created.
    For a bulk load: ``build_hnsw=False``, COPY into ``table``, then ``create_hnsw()``.
    """

    def __init__(
        self,
        uri: str,
        dims: int,
        prefix: str = "truecost_cache",
        schema: str = "public",
        m: int = 16,
        ef_construction: int = 64,
        ef_search: int = 400,
        overfetch: int = 0,
        partitions: int = 8,
        build_hnsw: bool = True,
    ) -> None:
        super().__init__(uri, prefix, schema)
        self.dims, self.ef_search, self.m, self.ef_construction = dims, ef_search, m, ef_construction
        # A scope filter keeps only a few of the graph's nearest nodes; asking the iterative scan
        # for `overfetch` in-scope rows makes it walk further. On one 1M-row table it did not help
        # (recall@1 0.34 either way, p50 6.3 -> 47.6 ms); partitions do. Off by default.
        self.overfetch = overfetch
        self.table = t = f"{prefix}_vectors"
        if partitions < 0 or partitions > 1024:
            raise CacheBackendError(f"partitions: 0 (one table) to 1024, got {partitions}")

        def setup(c):
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
            exists = c.execute("SELECT to_regclass(%s) IS NOT NULL", (t,)).fetchone()[0]
            if not exists and partitions > 1:
                c.execute(
                    f"CREATE TABLE {t} (id BIGINT NOT NULL, scope TEXT NOT NULL, "
                    f"embedding vector({int(dims)}) NOT NULL, PRIMARY KEY (scope, id)) PARTITION BY HASH (scope)"
                )
                for i in range(partitions):
                    c.execute(
                        f"CREATE TABLE {t}_p{i} PARTITION OF {t} FOR VALUES WITH (MODULUS {partitions}, REMAINDER {i})"
                    )
                c.execute(f"CREATE INDEX {t}_id ON {t} (id)")  # an id's row, whichever scope holds it
            elif not exists:
                c.execute(
                    f"CREATE TABLE {t} (id BIGINT PRIMARY KEY, scope TEXT NOT NULL, "
                    f"embedding vector({int(dims)}) NOT NULL)"
                )
            self.partitioned = c.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s))", (t,)
            ).fetchone()[0]
            if build_hnsw:
                self._create_hnsw(c)
            c.execute(f"CREATE INDEX IF NOT EXISTS {t}_scope ON {t} (scope)")

        self._setup(setup)
        self._ready = True  # reconnections are tuned from here on
        self._run(self._configure)  # the setup connection was opened before there was a table to tune

    def _create_hnsw(self, c) -> None:
        c.execute(
            f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} USING hnsw "
            f"(embedding vector_cosine_ops) WITH (m = {int(self.m)}, ef_construction = {int(self.ef_construction)})"
        )

    def create_hnsw(self) -> None:
        """Build the HNSW index (after a bulk load into ``table``; building once beats inserting row by row)."""
        self._setup(self._create_hnsw)

    def set_ef_search(self, ef_search: int) -> None:
        """The HNSW candidate list per search (recall against latency), from the next search on."""
        self.ef_search = int(ef_search)
        self._run(self._configure)

    def _configure(self, conn) -> None:
        conn.execute(f"SET hnsw.ef_search = {int(self.ef_search)}")
        conn.execute("SET hnsw.iterative_scan = strict_order")  # filtered searches stay complete and ordered

    def _connection(self):
        fresh = self._conn is None or self._conn.closed
        conn = super()._connection()
        if fresh and getattr(self, "_ready", False):
            self._configure(conn)
        return conn

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, scope: str) -> None:
        v = check_vectors(vectors, self.dims)
        if len(ids) != len(v):
            raise ValueError("as many ids as vectors")
        rows = [(int(i), scope, _literal(x)) for i, x in zip(ids, v)]
        t = self.table

        def go(c):
            with c.transaction(), c.cursor() as cur:
                if self.partitioned:  # the key is (scope, id): an id moving scope leaves its old row first
                    cur.execute(f"DELETE FROM {t} WHERE id = ANY(%s) AND scope <> %s", ([r[0] for r in rows], scope))
                    conflict = "(scope, id) DO UPDATE SET embedding = EXCLUDED.embedding"
                else:
                    conflict = "(id) DO UPDATE SET scope = EXCLUDED.scope, embedding = EXCLUDED.embedding"
                cur.executemany(
                    f"INSERT INTO {t} (id, scope, embedding) VALUES (%s, %s, %s::vector) ON CONFLICT {conflict}", rows
                )

        self._run(go)

    def search(self, vector: np.ndarray, k: int, scope: str) -> list[tuple[int, float]]:
        q = _literal(check_vectors(vector, self.dims)[0])
        rows = self._run(
            lambda c: c.execute(
                f"SELECT id, 1 - (embedding <=> %s::vector) FROM {self.table} WHERE scope = %s "
                f"ORDER BY embedding <=> %s::vector LIMIT %s",
                (q, scope, q, max(int(k), self.overfetch)),
            ).fetchall()
        )
        return [(int(i), float(s)) for i, s in rows[: int(k)]]

    def delete(self, ids: Iterable[int]) -> int:
        ids = [int(i) for i in ids]
        return self._run(lambda c: c.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (ids,)).rowcount)

    def count(self, scope: str | None = None) -> int:
        if scope is None:
            return self._run(lambda c: c.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])
        return self._run(
            lambda c: c.execute(f"SELECT COUNT(*) FROM {self.table} WHERE scope = %s", (scope,)).fetchone()[0]
        )


class PgEntryStore(_PgBase):
    """Cache entries in PostgreSQL; vectors kept so an index can be rebuilt from here."""

    shared = True  # a SharedEntryStore: every replica on the same database, schema and prefix

    def __init__(self, uri: str, prefix: str = "truecost_cache", schema: str = "public") -> None:
        super().__init__(uri, prefix, schema)
        self._table = t = f"{prefix}_entries"
        self._meta = f"{prefix}_meta"
        self._setup(
            lambda c: (
                c.execute(
                    f"CREATE TABLE IF NOT EXISTS {t} (id BIGINT PRIMARY KEY, scope TEXT NOT NULL, "
                    f"fingerprint TEXT NOT NULL, body BYTEA NOT NULL, vector BYTEA, expires_at DOUBLE PRECISION, "
                    f"doc_ids TEXT[] NOT NULL DEFAULT '{{}}')"
                ),
                c.execute(f"CREATE INDEX IF NOT EXISTS {t}_fp ON {t} (fingerprint)"),
                c.execute(f"CREATE INDEX IF NOT EXISTS {t}_exp ON {t} (expires_at) WHERE expires_at IS NOT NULL"),
                c.execute(f"CREATE INDEX IF NOT EXISTS {t}_docs ON {t} USING gin (doc_ids)"),
                c.execute(f"CREATE TABLE IF NOT EXISTS {self._meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"),
            )
        )

    def get(self, entry_id: int) -> CacheEntry | None:
        row = self._run(
            lambda c: c.execute(f"SELECT body, vector FROM {self._table} WHERE id = %s", (int(entry_id),)).fetchone()
        )
        return None if row is None else _entry(row[0], row[1])

    def put(self, entry: CacheEntry) -> None:
        d = asdict(entry)
        vec = d.pop("vector")
        blob = None if vec is None else np.asarray(vec, dtype=np.float32).tobytes()
        self._run(
            lambda c: c.execute(
                f"INSERT INTO {self._table} VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                f"scope = EXCLUDED.scope, fingerprint = EXCLUDED.fingerprint, body = EXCLUDED.body, vector = EXCLUDED.vector, "
                f"expires_at = EXCLUDED.expires_at, doc_ids = EXCLUDED.doc_ids",
                (
                    entry.id,
                    entry.scope,
                    entry.fingerprint,
                    json.dumps(d, default=str).encode(),
                    blob,
                    entry.expires_at,
                    list(entry.doc_ids),
                ),
            )
        )

    def ids_for_docs(self, doc_ids: Iterable[str]) -> list[int]:
        """Every entry (from any replica) produced from one of these documents."""
        docs = list(doc_ids)
        return (
            [
                r[0]
                for r in self._run(
                    lambda c: c.execute(f"SELECT id FROM {self._table} WHERE doc_ids && %s", (docs,)).fetchall()
                )
            ]
            if docs
            else []
        )

    def get_meta(self, key: str) -> str | None:
        row = self._run(lambda c: c.execute(f"SELECT value FROM {self._meta} WHERE key = %s", (key,)).fetchone())
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._run(
            lambda c: c.execute(
                f"INSERT INTO {self._meta} VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, value),
            )
        )

    def delete(self, entry_ids: Iterable[int]) -> int:
        ids = [int(i) for i in entry_ids]
        return self._run(lambda c: c.execute(f"DELETE FROM {self._table} WHERE id = ANY(%s)", (ids,)).rowcount)

    def expire(self, now: float) -> list[int]:
        return sorted(
            r[0]
            for r in self._run(
                lambda c: c.execute(
                    f"DELETE FROM {self._table} WHERE expires_at IS NOT NULL AND expires_at <= %s RETURNING id", (now,)
                ).fetchall()
            )
        )

    def all(self) -> list[CacheEntry]:
        return [
            _entry(b, v)
            for b, v in self._run(lambda c: c.execute(f"SELECT body, vector FROM {self._table} ORDER BY id").fetchall())
        ]

    def __len__(self) -> int:
        return self._run(lambda c: c.execute(f"SELECT COUNT(*) FROM {self._table}").fetchone()[0])


def _entry(body, vector) -> CacheEntry:
    d = json.loads(bytes(body))  # BYTEA: PostgreSQL text and JSONB cannot hold a NUL character, prompts can
    d["doc_ids"] = tuple(d.get("doc_ids") or ())
    d["vector"] = np.frombuffer(bytes(vector), dtype=np.float32).copy() if vector is not None else None
    return CacheEntry(**d)
