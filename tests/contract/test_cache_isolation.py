"""Tenant isolation on every cache backend: adversarial near-duplicates from two tenants,
through a policy that would hit on anything in its own scope, never cross; answers made with
parameters the cache has never heard of are never served to requests without them (the scope
is deny by default); and a tenant cannot plant an entry another tenant will be served."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.servers import fresh_name
from tests.unit.cache.test_cache_scope import FINDING_PARAMS, ops_strategy, run_isolation_ops
from tests.unit.cache.test_semantic_cache import HashEmbedder, answer, body
from truecost.cache.entries import MemoryEntryStore, SQLiteEntryStore
from truecost.cache.verifier import NormalisedMatch
from truecost.cache.index import ExactIndex, HNSWIndex
from truecost.cache.policy import FixedThreshold
from truecost.cache.semantic import SemanticCache
from truecost.gateway.config import KeyConfig
from truecost.gateway.pipeline import attribution_for

BACKENDS = ["memory", "sqlite+hnsw", "postgres+pgvector", "redis"]


@pytest.fixture(params=BACKENDS)
def make_cache(request, tmp_path):
    def build():
        name = fresh_name("iso")
        if request.param == "memory":
            index, entries = ExactIndex(64), MemoryEntryStore()
        elif request.param == "sqlite+hnsw":
            index, entries = HNSWIndex(64), SQLiteEntryStore(tmp_path / f"{name}.db")
        elif request.param == "postgres+pgvector":
            from truecost.cache.pgvector import PgEntryStore, PgVectorIndex

            uri = request.getfixturevalue("postgres_server").uri
            index, entries = PgVectorIndex(uri, 64, prefix=name), PgEntryStore(uri, prefix=name)
        else:
            from truecost.cache.redis_store import RedisEntryStore, RedisVectorIndex

            url = request.getfixturevalue("redis_server").url
            index, entries = RedisVectorIndex(url, 64, prefix=name), RedisEntryStore(url, prefix=name)
        return SemanticCache(HashEmbedder(), index, entries, FixedThreshold(-1.0), NormalisedMatch())

    return build


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(st.tuples(st.sampled_from(["t1", "t2"]), st.text(min_size=1, max_size=24)), min_size=5, max_size=80)
)
def test_property_no_cross_tenant_hits(make_cache, ops):
    c = make_cache()
    owner = {}
    for tenant, text in ops:
        r = c.lookup(body(f"cancel my {text}"), tenant=tenant)
        if r.hit:
            assert owner[r.entry.id] == tenant
        else:
            e = c.store(r, answer(f"{tenant}: {text}"))
            if e is not None:
                owner[e.id] = tenant


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=ops_strategy(["acme", "key:support", "anonymous"], 40))
def test_property_no_hits_across_unknown_parameters_or_partitions(make_cache, data):
    """Random unknown parameters on the storing request and not on the looking-up one, and vice versa
    (and with other values): zero hits across them, exact or semantic, on every backend."""
    pool, ops = data
    run_isolation_ops(make_cache(), pool, ops)


def test_answers_made_with_other_parameters_are_never_served(make_cache):
    """guided_choice, guided_regex, guided_json, functions, function_call, top_k, ... (issue 15's finding)."""
    c = make_cache()
    c.store(c.lookup(body("a plain question"), "acme"), answer("plain"))  # the plain scope is not empty
    for name, value in FINDING_PARAMS.items():
        c.store(c.lookup(body(f"question about {name}", **{name: value}), "acme"), answer(f"made with {name}"))
    content = lambda r: r.entry.answer["choices"][0]["message"]["content"]  # noqa: E731
    for name, value in FINDING_PARAMS.items():
        for text in (f"question about {name}", f"a question about {name} please"):
            r = c.lookup(body(text), "acme")  # the policy hits on anything in scope: only the plain answer may come
            assert r.status == "hit_semantic" and content(r) == "plain", (name, r.status)
        got = c.lookup(body(f"question about {name}", **{name: value}), "acme")
        assert got.status == "hit_exact" and content(got) == f"made with {name}"
        assert content(c.lookup(body(f"another question on {name}", **{name: value}), "acme")) == f"made with {name}"


def test_two_thousand_near_duplicates_never_cross(make_cache):
    c = make_cache()
    rng = np.random.default_rng(11)
    words = ["cancel", "my", "order", "subscription", "refund", "card", "account", "please", "now", "the"]
    hits = crossings = 0
    for i in range(2000):
        tenant = "a" if i % 2 else "b"
        r = c.lookup(body(" ".join(rng.choice(words, size=4))), tenant=tenant)
        if r.hit:
            hits += 1
            crossings += not r.entry.answer["choices"][0]["message"]["content"].startswith(tenant + ":")
        else:
            c.store(r, answer(f"{tenant}: x"))
    assert hits > 500 and crossings == 0  # the cache does hit, and only within a tenant


def test_a_tenant_cannot_plant_an_answer_for_another(make_cache):
    c = make_cache()
    # tenant "mallory" asks exactly what the victim will ask, and stores a poisoned answer
    c.store(c.lookup(body("what is the support phone number"), tenant="mallory"), answer("call +1 555 SCAM"))
    got = c.lookup(body("what is the support phone number"), tenant="victim")
    assert not got.hit
    # and the tenant is never taken from what a keyed client sends: headers cannot claim another tenant
    claim = {"x-truecost-tenant": "victim", "x-truecost-tags": "tenant=victim"}
    assert attribution_for(KeyConfig("m", "0" * 64, tenant="mallory"), claim).tenant == "mallory"
    assert attribution_for(KeyConfig("m2", "0" * 64), claim).tenant is None  # its cache scope is "key:m2"
    # keys without a tenant each get a partition of their own
    c.store(c.lookup(body("what is my balance"), "key:m2"), answer("poisoned"))
    assert not c.lookup(body("what is my balance"), "key:other").hit
    assert not c.lookup(body("what is my balance"), "anonymous").hit


@pytest.mark.parametrize("backend", ["postgres+pgvector", "redis"])
def test_invalidation_and_kb_version_reach_every_replica(backend, request):
    """Two SemanticCache objects over one shared store stand for two replicas."""
    from truecost.cache import semantic

    name = fresh_name("inv")
    if backend == "postgres+pgvector":
        from truecost.cache.pgvector import PgEntryStore, PgVectorIndex

        uri = request.getfixturevalue("postgres_server").uri
        parts = lambda: (PgVectorIndex(uri, 64, prefix=name), PgEntryStore(uri, prefix=name))  # noqa: E731
    else:
        from truecost.cache.redis_store import RedisEntryStore, RedisVectorIndex

        url = request.getfixturevalue("redis_server").url
        parts = lambda: (RedisVectorIndex(url, 64, prefix=name), RedisEntryStore(url, prefix=name))  # noqa: E731
    clock = [1000.0]
    a, b = (
        SemanticCache(
            HashEmbedder(), *parts(), FixedThreshold(0.8), NormalisedMatch(), kb_version="v1", clock=lambda: clock[0]
        )
        for _ in range(2)
    )
    a.store(a.lookup(body("what is the refund policy"), tenant="t"), answer("30 days"), doc_ids=["kb-refunds"])
    a.store(a.lookup(body("how do I change my pin"), tenant="t"), answer("in the app"), doc_ids=["kb-pin"])
    assert b.lookup(body("what is the refund policy"), tenant="t").hit  # stored by a, served by b
    assert b.invalidate(["kb-refunds"]) == 1  # b never stored it, yet drops it for everyone
    assert not a.lookup(body("what is the refund policy"), tenant="t").hit
    assert a.lookup(body("how do I change my pin"), tenant="t").hit
    b.set_kb_version("v2")
    clock[0] += semantic.KB_VERSION_REFRESH_S  # within the stated bound, a sees the new version
    assert not a.lookup(body("how do I change my pin"), tenant="t").hit
