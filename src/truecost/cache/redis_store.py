"""Redis Stack backends of the cache seams: a RediSearch HNSW VectorIndex and an EntryStore.

Vectors live in hashes ``<prefix>:v:<id>`` indexed by ``FT.CREATE ... VECTOR HNSW COSINE``
with the scope as a TAG field; every KNN query is pre-filtered by the scope tag, so the
scope stays a hard partition. Entries live in ``<prefix>:e:<id>`` with a sorted set of
expiry times.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Iterable, Sequence

import numpy as np

from truecost.cache.entries import CacheEntry
from truecost.cache.index import check_vectors
from truecost.cache.pgvector import CacheBackendError

_PREFIX = re.compile(r"^[A-Za-z0-9_]{1,40}$")


def _client(url: str):
    try:
        import redis
    except ImportError:
        raise CacheBackendError("the Redis cache needs redis-py: pip install redis") from None
    return redis.Redis.from_url(url, protocol=2)  # RESP2: FT.SEARCH replies as flat arrays


def _tag(value: str) -> str:
    """Escape a TAG value for a RediSearch query: every character that is not a letter or digit."""
    return re.sub(r"([^A-Za-z0-9])", r"\\\1", value)


def _guard(fn):
    def inner(*a, **kw):
        import redis

        try:
            return fn(*a, **kw)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CacheBackendError(f"the cache Redis is unreachable ({exc})") from None

    return inner


class RedisVectorIndex:
    def __init__(
        self,
        url: str,
        dims: int,
        prefix: str = "truecost",
        m: int = 16,
        ef_construction: int = 200,
        ef_runtime: int = 64,
        overfetch: int = 20,
    ) -> None:
        if not _PREFIX.match(prefix):
            raise CacheBackendError(f"invalid key prefix {prefix!r}")
        self.dims, self.prefix, self.ef_runtime = dims, prefix, ef_runtime
        # KNN over more in-scope rows than asked: under a selective scope filter this buys recall
        # (bench/shared_cache_scale.py, 1M entries in 50 scopes: recall@1 0.73 -> 1.0, p50 1.1 -> 15.5 ms).
        self.overfetch = overfetch
        self.r = _client(url)
        self.name = f"{prefix}:vidx"
        self._create(m, ef_construction)

    @_guard
    def _create(self, m: int, ef_construction: int) -> None:
        import redis

        try:
            self.r.execute_command("FT.INFO", self.name)
        except redis.ResponseError:
            self.r.execute_command(
                "FT.CREATE",
                self.name,
                "ON",
                "HASH",
                "PREFIX",
                "1",
                f"{self.prefix}:v:",
                "SCHEMA",
                "scope",
                "TAG",
                "CASESENSITIVE",
                "vec",
                "VECTOR",
                "HNSW",
                "10",
                "TYPE",
                "FLOAT32",
                "DIM",
                str(self.dims),
                "DISTANCE_METRIC",
                "COSINE",
                "M",
                str(m),
                "EF_CONSTRUCTION",
                str(ef_construction),
            )

    @_guard
    def upsert(self, ids: Sequence[int], vectors: np.ndarray, scope: str) -> None:
        v = check_vectors(vectors, self.dims)
        if len(ids) != len(v):
            raise ValueError("as many ids as vectors")
        pipe = self.r.pipeline(transaction=True)
        for i, x in zip(ids, v):
            pipe.hset(f"{self.prefix}:v:{int(i)}", mapping={"scope": scope, "vec": x.astype(np.float32).tobytes()})
        pipe.execute()

    @_guard
    def search(self, vector: np.ndarray, k: int, scope: str) -> list[tuple[int, float]]:
        q = check_vectors(vector, self.dims)[0].astype(np.float32).tobytes()
        fetch = max(int(k), self.overfetch)
        res = self.r.execute_command(
            "FT.SEARCH",
            self.name,
            f"(@scope:{{{_tag(scope)}}})=>[KNN {fetch} @vec $B EF_RUNTIME {max(self.ef_runtime, fetch)} AS dist]",
            "PARAMS",
            "2",
            "B",
            q,
            "SORTBY",
            "dist",
            "ASC",
            "RETURN",
            "1",
            "dist",
            "LIMIT",
            "0",
            str(int(k)),
            "DIALECT",
            "2",
        )
        out = []
        for j in range(1, len(res), 2):
            key = res[j].decode() if isinstance(res[j], bytes) else res[j]
            fields = res[j + 1]
            dist = float(fields[fields.index(b"dist") + 1])
            out.append((int(key.rsplit(":", 1)[1]), 1.0 - dist))
        return out

    @_guard
    def delete(self, ids: Iterable[int]) -> int:
        keys = [f"{self.prefix}:v:{int(i)}" for i in ids]
        return int(self.r.delete(*keys)) if keys else 0

    @_guard
    def count(self, scope: str | None = None) -> int:
        query = "*" if scope is None else f"@scope:{{{_tag(scope)}}}"
        return int(self.r.execute_command("FT.SEARCH", self.name, query, "LIMIT", "0", "0", "DIALECT", "2")[0])

    def close(self) -> None:
        self.r.close()


class RedisEntryStore:
    shared = True  # a SharedEntryStore: every replica on the same url and prefix

    def __init__(self, url: str, prefix: str = "truecost") -> None:
        if not _PREFIX.match(prefix):
            raise CacheBackendError(f"invalid key prefix {prefix!r}")
        self.prefix = prefix
        self.r = _client(url)
        self._exp = f"{prefix}:e:expiry"

    def _key(self, i: int) -> str:
        return f"{self.prefix}:e:{int(i)}"

    @_guard
    def get(self, entry_id: int) -> CacheEntry | None:
        got = self.r.hmget(self._key(entry_id), "body", "vector")
        if got[0] is None:
            return None
        d = json.loads(got[0])
        d["doc_ids"] = tuple(d.get("doc_ids") or ())
        d["vector"] = np.frombuffer(got[1], dtype=np.float32).copy() if got[1] else None
        return CacheEntry(**d)

    @_guard
    def put(self, entry: CacheEntry) -> None:
        d = asdict(entry)
        vec = d.pop("vector")
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            self._key(entry.id),
            mapping={
                "body": json.dumps(d, default=str),
                "vector": b"" if vec is None else np.asarray(vec, dtype=np.float32).tobytes(),
            },
        )
        pipe.sadd(f"{self.prefix}:e:ids", int(entry.id))
        for doc in entry.doc_ids:
            pipe.sadd(f"{self.prefix}:doc:{doc}", int(entry.id))
        if entry.expires_at is not None:
            pipe.zadd(self._exp, {str(int(entry.id)): float(entry.expires_at)})
        else:
            pipe.zrem(self._exp, str(int(entry.id)))
        pipe.execute()

    @_guard
    def delete(self, entry_ids: Iterable[int]) -> int:
        ids = [int(i) for i in entry_ids]
        if not ids:
            return 0
        docs = {}
        read = self.r.pipeline(transaction=False)
        for i in ids:
            read.hget(self._key(i), "body")
        for i, body in zip(ids, read.execute()):
            if body:
                docs[i] = json.loads(body).get("doc_ids") or []
        pipe = self.r.pipeline(transaction=True)
        for i, ds in docs.items():
            for d in ds:
                pipe.srem(f"{self.prefix}:doc:{d}", i)
        pipe.delete(*[self._key(i) for i in ids])
        pipe.srem(f"{self.prefix}:e:ids", *ids)
        pipe.zrem(self._exp, *[str(i) for i in ids])
        return int(pipe.execute()[sum(len(ds) for ds in docs.values())])

    @_guard
    def expire(self, now: float) -> list[int]:
        due = sorted(int(x) for x in self.r.zrangebyscore(self._exp, "-inf", now))
        self.delete(due)
        return due

    @_guard
    def ids_for_docs(self, doc_ids: Iterable[str]) -> list[int]:
        docs = [f"{self.prefix}:doc:{d}" for d in doc_ids]
        return sorted(int(x) for x in self.r.sunion(docs)) if docs else []

    @_guard
    def get_meta(self, key: str) -> str | None:
        v = self.r.hget(f"{self.prefix}:meta", key)
        return None if v is None else v.decode()

    @_guard
    def set_meta(self, key: str, value: str) -> None:
        self.r.hset(f"{self.prefix}:meta", key, value)

    @_guard
    def all(self) -> list[CacheEntry]:
        ids = sorted(int(x) for x in self.r.smembers(f"{self.prefix}:e:ids"))
        return [e for e in (self.get(i) for i in ids) if e is not None]

    @_guard
    def __len__(self) -> int:
        return int(self.r.scard(f"{self.prefix}:e:ids"))

    def close(self) -> None:
        self.r.close()
