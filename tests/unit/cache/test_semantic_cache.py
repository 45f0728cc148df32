import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from truecost.cache.entries import MemoryEntryStore
from truecost.cache.verifier import NormalisedMatch
from truecost.cache.index import ExactIndex
from truecost.cache.policy import CalibratedThreshold, FixedThreshold, OnlineErrorBounded
from truecost.cache.replay import replay_chunks
from truecost.cache.request import cache_key, cacheable_response
from truecost.cache.semantic import CacheLimits, SemanticCache


class HashEmbedder:
    """Deterministic bag-of-words vectors: near-duplicate texts get near-identical vectors."""

    model_id, dims = "test/hash-bow", 64

    def embed_batch(self, texts):
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, hash(w) % self.dims] += 1.0
            out[i] /= max(np.linalg.norm(out[i]), 1e-9)
        return out


def body(text, model="m", system=None, **params):
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return {"model": model, "messages": msgs, **params}


def answer(text, finish="stop"):
    return {
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }


def make(policy=None, **kw):
    return SemanticCache(
        HashEmbedder(), ExactIndex(64), MemoryEntryStore(), policy or FixedThreshold(0.8), NormalisedMatch(), **kw
    )


def test_exact_then_semantic_hit():
    c = make()
    r = c.lookup(body("what is the refund policy"), tenant="t1")
    assert r.status == "miss"
    c.store(r, answer("30 days"))
    assert c.lookup(body("what  is the refund policy"), tenant="t1").status == "hit_exact"
    hit = c.lookup(body("what is the refund policy please"), tenant="t1")
    assert hit.status == "hit_semantic" and hit.entry.answer["choices"][0]["message"]["content"] == "30 days"


def test_scope_separates_tenant_model_system_prompt_and_params():
    c = make()
    r = c.lookup(body("cancel my order", system="be brief", temperature=0), tenant="t1")
    c.store(r, answer("done"))
    for b, tenant in [
        (body("cancel my order", system="be brief", temperature=0), "t2"),
        (body("cancel my order", model="other", system="be brief", temperature=0), "t1"),
        (body("cancel my order", system="be verbose", temperature=0), "t1"),
        (body("cancel my order", system="be brief", temperature=1), "t1"),
    ]:
        assert not c.lookup(b, tenant=tenant).hit
    assert c.lookup(body("cancel my order", system="be brief", temperature=0, user="x"), tenant="t1").hit


@pytest.mark.parametrize(
    "resp,status,reason",
    [
        (answer("partial", finish="length"), 200, "finish_reason"),
        (answer("x"), 500, "status"),
        (
            {"choices": [{"message": {"content": None, "tool_calls": [{"id": "1"}]}, "finish_reason": "stop"}]},
            200,
            "tool",
        ),
        ({"choices": [{"message": {"content": "", "refusal": "I can't"}, "finish_reason": "stop"}]}, 200, "refusal"),
        (answer("   "), 200, "empty"),
    ],
)
def test_only_complete_successful_answers_are_stored(resp, status, reason):
    assert reason in cacheable_response(resp, status)
    c = make()
    r = c.lookup(body("hello there"))
    assert c.store(r, resp, status=status) is None
    assert not c.lookup(body("hello there")).hit


def test_non_text_and_huge_prompts_bypass_the_semantic_tier():
    img = {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert cache_key(img, None).text is None
    assert cache_key(body("x" * 30_000), None).text is None
    c = make()
    assert c.lookup({"model": "m", "messages": []}).status == "bypass"
    r = c.lookup(img)
    assert r.status == "miss" and "non-text" in r.reason
    c.store(r, answer("a picture"))
    assert c.lookup(img).status == "hit_exact"  # identical request: the exact tier still works


def test_invalidation_by_document_and_kb_version():
    c = make(kb_version="v1")
    r1 = c.lookup(body("fees for transfers abroad"))
    c.store(r1, answer("1%"), doc_ids=["kb-fees"])
    r2 = c.lookup(body("how to reset my pin code"))
    c.store(r2, answer("in the app"), doc_ids=["kb-pin"])
    assert c.invalidate(["kb-fees"]) == 1
    assert not c.lookup(body("fees for transfers abroad")).hit
    assert c.lookup(body("how to reset my pin code")).hit
    assert c.set_kb_version("v2") == 1
    assert not c.lookup(body("how to reset my pin code")).hit and len(c) == 0


def test_ttl_and_lru_eviction():
    now = [1000.0]
    c = make(limits=CacheLimits(max_entries=2, ttl_seconds=60), clock=lambda: now[0])
    for text in ("alpha one", "beta two", "gamma three"):
        c.store(c.lookup(body(text)), answer(text))
    assert len(c) == 2 and not c.lookup(body("alpha one")).hit  # least recently used went first
    now[0] += 61
    assert not c.lookup(body("gamma three")).hit  # expired


def test_nan_vector_from_a_broken_embedder_is_a_miss_not_a_wrong_hit():
    class Broken(HashEmbedder):
        def embed_batch(self, texts):
            return np.full((len(texts), self.dims), np.nan, dtype=np.float32)

    c = SemanticCache(Broken(), ExactIndex(64), MemoryEntryStore(), FixedThreshold(0.0))
    r = c.lookup(body("anything"))
    assert r.status == "miss" and "invalid vector" in r.reason


def test_calibrated_threshold_meets_precision_on_pairs():
    rng = np.random.default_rng(0)
    sims = np.concatenate([rng.uniform(0.7, 1.0, 500), rng.uniform(0.3, 0.9, 500)])
    same = np.array([True] * 500 + [False] * 500)
    p = CalibratedThreshold.from_pairs(sims, same, target_error=0.02)
    accepted = sims >= p.threshold
    assert (~same[accepted]).mean() <= 0.02 and accepted.sum() > 100
    with pytest.raises(ValueError):
        CalibratedThreshold.from_pairs([0.9, 0.8], [True, True], 0.01)


def test_online_policy_learns_to_hit_within_the_bound():
    """Synthetic intents: queries are noisy copies of 20 intent centres; the policy must
    learn to answer from the right class and keep false hits under the bound."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 64))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    class Noisy:
        model_id, dims = "test/noisy", 64

        def embed_batch(self, texts):
            out = []
            for t in texts:
                k, seed = map(int, t.split(":"))
                v = centres[k] + np.random.default_rng(seed).standard_normal(64) * 0.09
                out.append(v / np.linalg.norm(v))
            return np.array(out, dtype=np.float32)

    policy = OnlineErrorBounded(target_error=0.02, seed=0)
    c = SemanticCache(Noisy(), ExactIndex(64), MemoryEntryStore(), policy, NormalisedMatch())
    hits = wrong = 0
    n = 3000
    for i in range(n):
        k = int(rng.integers(20))
        r = c.lookup(body(f"{k}:{i}"))
        if r.hit:
            hits += 1
            wrong += r.entry.answer["choices"][0]["message"]["content"] != f"intent {k}"
        else:
            c.store(r, answer(f"intent {k}"))
    assert hits / n > 0.5
    assert wrong / n <= 0.02
    assert c.verifications > 0 and policy.state()["observations"] > 0


def test_replay_stream_reassembles_the_answer():
    chunks = list(
        replay_chunks(answer("The refund takes five to seven working days."), chunk_chars=7, include_usage=True)
    )
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    assert text == "The refund takes five to seven working days."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["t1", "t2"]), st.text(min_size=1, max_size=30)), min_size=5, max_size=60))
def test_no_cross_tenant_hits_ever(ops):
    """Adversarial near-duplicates from two tenants, with a policy that hits on anything."""
    c = make(policy=FixedThreshold(-1.0))
    owner = {}
    for tenant, text in ops:
        q = f"cancel my {text}"
        r = c.lookup(body(q), tenant=tenant)
        if r.hit:
            assert owner[r.entry.id] == tenant
        else:
            e = c.store(r, answer(f"{tenant}: {q}"))
            if e is not None:
                owner[e.id] = tenant


def test_thousands_of_near_duplicates_from_two_tenants_never_cross():
    c = make(policy=FixedThreshold(-1.0))  # would hit on anything in its own scope
    rng = np.random.default_rng(7)
    words = ["cancel", "my", "order", "subscription", "refund", "card", "account", "please", "now", "the"]
    crossings = 0
    for i in range(4000):
        tenant = "a" if i % 2 else "b"
        text = " ".join(rng.choice(words, size=4))
        r = c.lookup(body(text), tenant=tenant)
        if r.hit:
            crossings += not r.entry.answer["choices"][0]["message"]["content"].startswith(tenant + ":")
        else:
            c.store(r, answer(f"{tenant}: {text}"))
    assert crossings == 0


def test_concurrent_lookups_and_stores_lose_nothing():
    import threading

    c = make(policy=FixedThreshold(0.999))
    stored, lock = [], threading.Lock()

    def work(t):
        for i in range(200):
            text = f"question {t} number {i}"
            r = c.lookup(body(text))
            if not r.hit and c.store(r, answer(text)) is not None:
                with lock:
                    stored.append(text)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(stored) > 100
    assert len(c) == len(stored) == c.index.count() == c.stats["stored"]
    assert all(c.lookup(body(text)).status == "hit_exact" for text in stored)


def test_restart_rebuilds_the_index_from_the_entry_store(tmp_path):
    from truecost.cache.entries import SQLiteEntryStore

    store = SQLiteEntryStore(tmp_path / "entries.db")
    c = SemanticCache(HashEmbedder(), ExactIndex(64), store, FixedThreshold(0.8), kb_version="v1")
    c.store(c.lookup(body("what is the refund policy"), tenant="t1"), answer("30 days"), doc_ids=["kb-1"])
    c.store(c.lookup(body("how do I change my pin"), tenant="t1"), answer("in the app"))
    store.close()

    reopened = SQLiteEntryStore(tmp_path / "entries.db")
    fresh = SemanticCache(HashEmbedder(), ExactIndex(64), reopened, FixedThreshold(0.8), kb_version="v1")
    assert fresh.rebuild() == 2
    assert fresh.lookup(body("what is the refund policy"), tenant="t1").status == "hit_exact"
    assert fresh.lookup(body("what is the refund policy please"), tenant="t1").status == "hit_semantic"
    assert not fresh.lookup(body("what is the refund policy"), tenant="t2").hit
    assert fresh.invalidate(["kb-1"]) == 1
    e = fresh.store(fresh.lookup(body("new question here"), tenant="t1"), answer("new"))
    assert e.id not in {x.id for x in reopened.all() if x.id != e.id}  # a new id, never one already stored
    assert len(reopened) == 2 and reopened.get(e.id) is not None
