"""The EntryStore contract, run against every store."""

import numpy as np
import pytest

from truecost.cache.entries import CacheEntry, MemoryEntryStore, SQLiteEntryStore


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def store(request, tmp_path):
    from tests.support.servers import fresh_name

    if request.param == "postgres":
        from truecost.cache.pgvector import PgEntryStore

        return PgEntryStore(request.getfixturevalue("postgres_server").uri, prefix=fresh_name("e"))
    if request.param == "redis":
        from truecost.cache.redis_store import RedisEntryStore

        return RedisEntryStore(request.getfixturevalue("redis_server").url, prefix=fresh_name("e"))
    return MemoryEntryStore() if request.param == "memory" else SQLiteEntryStore(tmp_path / "entries.db")


def entry(i, **kw):
    return CacheEntry(
        id=i,
        scope="s",
        fingerprint=f"fp{i}",
        text=f"q{i}",
        answer={"choices": [{"message": {"content": f"a{i}"}}]},
        vector=np.arange(4, dtype=np.float32) + i,
        **kw,
    )


def test_a_store_declares_whether_replicas_share_it(store, request):
    """Declared, never probed: the shared stores (PostgreSQL, Redis) say so and carry the shared methods; the
    per-process ones (memory, SQLite) say not, and the cache never asks them for another replica's state."""
    assert store.shared is (request.node.callspec.params["store"] in ("postgres", "redis"))
    if store.shared:
        assert all(callable(getattr(store, m)) for m in ("get_meta", "set_meta", "ids_for_docs"))


def test_put_get_roundtrip(store):
    e = entry(1, doc_ids=("kb-1", "kb-2"), kb_version="v3", usage={"prompt_tokens": 5}, class_id=7, expires_at=99.0)
    store.put(e)
    got = store.get(1)
    assert got.answer == e.answer and got.doc_ids == ("kb-1", "kb-2") and got.kb_version == "v3"
    assert got.class_id == 7 and got.usage == {"prompt_tokens": 5}
    np.testing.assert_array_equal(got.vector, e.vector)
    assert store.get(2) is None


def test_delete_and_expire(store):
    store.put(entry(1, expires_at=10.0))
    store.put(entry(2, expires_at=20.0))
    store.put(entry(3))
    assert store.expire(15.0) == [1]
    assert store.get(1) is None and store.get(2) is not None
    assert store.delete([2, 42]) == 1
    assert store.get(3) is not None


def test_text_with_nul_and_odd_unicode_round_trips(store):
    e = CacheEntry(
        id=9,
        scope="s",
        fingerprint="fp9",
        text="nul\x00 and \ud7ff \U0001f600",
        answer={"choices": [{"message": {"content": "a\x00b"}}]},
    )
    store.put(e)
    got = store.get(9)
    assert got.text == e.text and got.answer == e.answer


@pytest.fixture(params=["postgres", "redis"])
def shared_store(request):
    from tests.support.servers import fresh_name

    if request.param == "postgres":
        from truecost.cache.pgvector import PgEntryStore

        return PgEntryStore(request.getfixturevalue("postgres_server").uri, prefix=fresh_name("e"))
    from truecost.cache.redis_store import RedisEntryStore

    return RedisEntryStore(request.getfixturevalue("redis_server").url, prefix=fresh_name("e"))


def test_shared_stores_find_entries_by_document_and_keep_metadata(shared_store):
    shared_store.put(entry(1, doc_ids=("kb-1",)))
    shared_store.put(entry(2, doc_ids=("kb-1", "kb-2")))
    shared_store.put(entry(3, doc_ids=("kb-3",)))
    assert sorted(shared_store.ids_for_docs(["kb-1"])) == [1, 2]
    assert sorted(shared_store.ids_for_docs(["kb-2", "kb-3"])) == [2, 3]
    assert shared_store.ids_for_docs([]) == []
    shared_store.delete([2])
    assert shared_store.ids_for_docs(["kb-2"]) == []
    assert shared_store.get_meta("kb_version") is None
    shared_store.set_meta("kb_version", "v2")
    shared_store.set_meta("kb_version", "v3")
    assert shared_store.get_meta("kb_version") == "v3"
