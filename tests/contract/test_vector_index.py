"""The VectorIndex contract, run against every index."""

import numpy as np
import pytest

from truecost.cache.index import CorruptIndexError, ExactIndex, HNSWIndex

DIMS = 32


def unit(rng, n):
    v = rng.standard_normal((n, DIMS)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["exact", "hnsw", "pgvector", "redis"])
def index(request):
    from tests.support.servers import fresh_name

    if request.param == "hnsw":
        return HNSWIndex(DIMS)
    if request.param == "pgvector":
        from truecost.cache.pgvector import PgVectorIndex

        return PgVectorIndex(request.getfixturevalue("postgres_server").uri, DIMS, prefix=fresh_name("c"))
    if request.param == "redis":
        from truecost.cache.redis_store import RedisVectorIndex

        return RedisVectorIndex(request.getfixturevalue("redis_server").url, DIMS, prefix=fresh_name("c"))
    return ExactIndex(DIMS)


def test_nearest_is_itself_with_similarity_one(index):
    rng = np.random.default_rng(0)
    v = unit(rng, 200)
    index.upsert(list(range(200)), v, "s")
    for i in (0, 57, 199):
        (top_id, sim), *_ = index.search(v[i], 3, "s")
        assert top_id == i and sim == pytest.approx(1.0, abs=1e-3)


def test_results_are_ordered_cosine_similarities(index):
    rng = np.random.default_rng(1)
    v = unit(rng, 100)
    index.upsert(list(range(100)), v, "s")
    q = unit(rng, 1)[0]
    got = index.search(q, 10, "s")
    sims = [s for _, s in got]
    assert sims == sorted(sims, reverse=True)
    exact = sorted(((i, float(v[i] @ q)) for i in range(100)), key=lambda x: -x[1])[:10]
    assert [i for i, _ in got][:5] == [i for i, _ in exact][:5]
    np.testing.assert_allclose(sims, [s for _, s in exact], atol=2e-3)


def test_a_selective_scope_still_finds_its_nearest_and_returns_k(index):
    # 2% of the entries in the asked scope, the rest near the query in other scopes: a filtered
    # graph search must walk past them (over-fetch) and still hand back exactly k, best first
    rng = np.random.default_rng(5)
    q = unit(rng, 1)[0]
    crowd = q + 0.15 * rng.standard_normal((490, DIMS)).astype(np.float32)
    crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
    mine = unit(rng, 10)
    mine[3] = q + 0.3 * mine[3]
    mine /= np.linalg.norm(mine, axis=1, keepdims=True)
    index.upsert(list(range(1000, 1490)), crowd, "others")
    index.upsert(list(range(10)), mine, "mine")
    got = index.search(q, 3, "mine")
    assert len(got) == 3 and got[0][0] == 3 and all(i < 10 for i, _ in got)


def test_scopes_are_hard_partitions(index):
    rng = np.random.default_rng(2)
    v = unit(rng, 10)
    index.upsert([1, 2, 3], v[:3], "tenant-a")
    index.upsert([4], v[0:1], "tenant-b")  # the very same vector in another scope
    assert {i for i, _ in index.search(v[0], 10, "tenant-a")} == {1, 2, 3}
    assert [i for i, _ in index.search(v[0], 10, "tenant-b")] == [4]
    assert index.search(v[0], 10, "tenant-c") == []
    assert index.count() == 4 and index.count("tenant-a") == 3


def test_delete_and_upsert_replace(index):
    rng = np.random.default_rng(3)
    v = unit(rng, 5)
    index.upsert([1, 2], v[:2], "s")
    assert index.delete([1, 99]) == 1
    assert [i for i, _ in index.search(v[0], 5, "s")] == [2]
    index.upsert([2], v[3:4], "s")  # same id, new vector
    ((top, sim),) = index.search(v[3], 5, "s")
    assert top == 2 and sim == pytest.approx(1.0, abs=1e-3)


def test_an_id_upserted_into_another_scope_moves(index):
    rng = np.random.default_rng(4)
    v = unit(rng, 2)
    index.upsert([7], v[:1], "a")
    index.upsert([7], v[1:], "b")
    assert index.search(v[0], 5, "a") == [] and [i for i, _ in index.search(v[1], 5, "b")] == [7]
    assert index.count() == 1


@pytest.mark.parametrize("bad", [np.full(DIMS, np.nan), np.zeros(DIMS), np.ones(DIMS + 1)])
def test_bad_vectors_are_refused(index, bad):
    with pytest.raises(ValueError):
        index.upsert([1], bad[None, :].astype(np.float32), "s")
    assert index.count() == 0


def test_hnsw_persists_and_refuses_a_damaged_file(tmp_path):
    rng = np.random.default_rng(4)
    v = unit(rng, 50)
    ix = HNSWIndex(DIMS)
    ix.upsert(list(range(50)), v, "s")
    ix.save(tmp_path)
    again = HNSWIndex.load(tmp_path)
    assert again.count() == 50 and again.search(v[7], 1, "s")[0][0] == 7
    f = next(tmp_path.glob("scope-*.usearch"))
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError):
        HNSWIndex.load(tmp_path)


def test_pgvector_partitions_new_tables_keeps_old_ones_and_bulk_loads(postgres_server):
    import psycopg

    from tests.support.servers import fresh_name
    from truecost.cache.pgvector import CacheBackendError, PgVectorIndex

    rng = np.random.default_rng(6)
    v = unit(rng, 300)
    new = PgVectorIndex(postgres_server.uri, DIMS, prefix=fresh_name("c"))
    assert new.partitioned
    old_name = fresh_name("c")
    old = PgVectorIndex(postgres_server.uri, DIMS, prefix=old_name, partitions=0)
    assert not old.partitioned
    old.upsert([1], v[:1], "s")
    again = PgVectorIndex(postgres_server.uri, DIMS, prefix=old_name)  # a table made by an earlier version
    assert not again.partitioned and [i for i, _ in again.search(v[0], 3, "s")] == [1]
    # bulk load: rows first, the graph built once afterwards
    bulk = PgVectorIndex(postgres_server.uri, DIMS, prefix=fresh_name("c"), build_hnsw=False)
    with (
        psycopg.connect(postgres_server.uri, autocommit=True) as c,
        c.cursor().copy(f"COPY {bulk.table} (id, scope, embedding) FROM STDIN") as cp,
    ):
        for i in range(300):
            cp.write_row((i, f"s{i % 5}", "[" + ",".join(map(str, v[i])) + "]"))
    bulk.create_hnsw()
    with psycopg.connect(postgres_server.uri) as c:
        indexes = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (bulk.table,))}
    assert f"{bulk.table}_hnsw" in indexes
    assert bulk.count() == 300 and bulk.search(v[42], 1, "s2")[0][0] == 42
    with pytest.raises(CacheBackendError, match="partitions"):
        PgVectorIndex(postgres_server.uri, DIMS, prefix=fresh_name("c"), partitions=-1)
