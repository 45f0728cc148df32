"""Client feedback in the cache library: who may report on a served hit, once; and the regenerate pattern."""

import pytest

from truecost.cache.entries import MemoryEntryStore
from truecost.cache.index import ExactIndex
from truecost.cache.policy import FixedThreshold
from truecost.cache.semantic import SemanticCache
from truecost.cache.served import ServedHit, ServedHits, end_user
from truecost.cache.verifier import QUERIES, ClientFeedback, Verdict

from tests.unit.cache.test_semantic_cache import HashEmbedder, answer, body


class Recording(FixedThreshold):
    """Hits at cosine >= 0.8 (near-duplicates of the hash embedder), and keeps every verdict it is given."""

    learns = True

    def __init__(self):
        super().__init__(0.8)
        self.learned = []

    def learn(self, decision, label):
        self.learned.append((decision.hit, label))

    def report(self, decision, correct):  # a client's verdict reaches the policy through report, not learn
        self.learned.append((decision.hit, correct))


class Always:
    """A lookup-time verifier that always says "same"."""

    capabilities, name = frozenset({QUERIES}), "always"

    def verify(self, pairs):
        return [Verdict(0.9, self.name) for _ in pairs]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(window=None, by="user"):
    clock = Clock()
    cache = SemanticCache(
        HashEmbedder(),
        ExactIndex(64),
        MemoryEntryStore(),
        Recording(),
        [ClientFeedback(), Always()],
        clock=clock,
        regenerate_window=window,
        regenerate_by=by,
    )
    cache.store(cache.lookup(body("how long does a refund take")), answer("five days"))
    return cache, clock


def test_only_the_owner_reports_on_a_hit_and_only_once():
    cache, _ = make()
    hit = cache.lookup(body("how long does a refund take please"), request_id="r1", owner="key:a")
    assert hit.status == "hit_semantic"
    miss = cache.lookup(body("where is my parcel"), request_id="r2", owner="key:a")
    assert miss.status == "miss"
    assert cache.report("r1", False, owner="key:b") is None  # another owner: as if it did not exist
    assert cache.report("r1", False) is None
    assert cache.report("r2", False, owner="key:a") is None  # a miss is not remembered
    assert cache.report("nope", False, owner="key:a") is None
    report = cache.report("r1", False, owner="key:a")
    assert report is not None and report.status == "hit_semantic" and report.learned
    assert cache.policy.learned == [(True, False)]
    assert cache.verifiers.reliability["always"].pairs == 1  # scored: the verifier said same, the client wrong
    assert cache.report("r1", False, owner="key:a") is None  # once
    assert cache.stats["feedback_wrong"] == 1 and cache.stats["feedback_unknown"] == 5


def test_a_report_that_may_not_teach_is_counted_and_taken_but_not_learned():
    cache, _ = make()
    cache.lookup(body("how long does a refund take please"), request_id="r1", owner="key:a")
    report = cache.report("r1", True, owner="key:a", learn=False)
    assert report is not None and not report.learned
    assert cache.policy.learned == [] and cache.verifiers.reliability["always"].pairs == 0
    assert cache.stats["feedback_right"] == 1
    assert cache.report("r1", False, owner="key:a") is None


def test_score_verifiers_false_teaches_the_policy_only():
    cache, _ = make()
    cache.lookup(body("how long does a refund take please"), request_id="r1", owner="key:a")
    assert cache.report("r1", False, owner="key:a", score_verifiers=False).learned
    assert cache.policy.learned == [(True, False)] and cache.verifiers.reliability["always"].pairs == 0


def test_an_exact_hit_is_reportable_but_teaches_the_policy_nothing():
    cache, _ = make()
    hit = cache.lookup(body("how long does a refund take"), request_id="r1", owner="key:a")
    assert hit.status == "hit_exact"
    report = cache.report("r1", False, owner="key:a")
    assert report is not None and report.status == "hit_exact" and not report.learned
    assert cache.policy.learned == []


def test_a_policy_that_does_not_learn_is_not_said_to_have_learned():
    cache, _ = make()
    cache.policy = FixedThreshold(0.8)  # learns nothing from anything
    cache.lookup(body("how long does a refund take please"), request_id="r1", owner="key:a")
    report = cache.report("r1", False, owner="key:a")
    assert report is not None and report.status == "hit_semantic" and not report.learned


def test_the_feedback_shortcut_keeps_its_meaning():
    cache, _ = make()
    cache.lookup(body("how long does a refund take please"), request_id="r1")
    assert cache.feedback("r1", correct=False) is True
    assert cache.feedback("r1", correct=False) is False


def test_asking_again_within_the_window_is_a_regenerate_once():
    cache, clock = make(window=120)
    near = body("how long does a refund take please", user="alice")
    first = cache.lookup(near, request_id="r1", owner="key:a")
    assert first.status == "hit_semantic"
    clock.t += 30
    again = cache.lookup(near, request_id="r2", owner="key:a")
    assert again.status == "regenerate" and not again.hit and again.regenerate_of == "r1" and again.entry is None
    assert cache.policy.learned == [(True, False)]
    assert cache.verifiers.reliability["always"].pairs == 0  # one-sided evidence never scores the verifiers
    assert cache.store(again, answer("a fresh answer")) is None  # the fresh answer is not stored
    assert cache.report("r1", False, owner="key:a") is None  # already counted
    assert cache.stats["regenerate"] == 1 and cache.stats["hit_semantic"] == 1
    third = cache.lookup(near, request_id="r3", owner="key:a")
    assert third.status == "hit_semantic"  # the regenerate took the earlier hit: served from the cache again
    assert cache.policy.learned == [(True, False)]


def test_a_regenerate_needs_the_same_client_the_same_entry_and_the_window():
    cache, clock = make(window=120)
    near = body("how long does a refund take please", user="alice")
    cache.lookup(near, request_id="r1", owner="key:a")
    assert cache.lookup(near, request_id="r2", owner="key:b").status == "hit_semantic"  # another key
    assert cache.lookup({**near, "user": "bob"}, request_id="r3", owner="key:a").status == "hit_semantic"
    clock.t += 121
    assert cache.lookup(near, request_id="r4", owner="key:a").status == "hit_semantic"  # r1 is too old
    assert cache.policy.learned == [] and cache.stats["regenerate"] == 0
    clock.t += 1
    assert cache.lookup(near, request_id="r5", owner="key:a").status == "regenerate"  # r4, a second ago


def test_no_window_no_regenerate():
    cache, _ = make()
    near = body("how long does a refund take please", user="alice")
    cache.lookup(near, request_id="r1", owner="key:a")
    assert cache.lookup(near, request_id="r2", owner="key:a").status == "hit_semantic"
    assert cache.skipped(near, owner="key:a") is None


def test_without_an_end_user_the_owner_is_a_client_only_when_asked_to_be():
    near = body("how long does a refund take please")  # no user: a service key may stand for many people
    cache, _ = make(window=120)
    cache.lookup(near, request_id="r1", owner="key:a")
    assert cache.lookup(near, request_id="r2", owner="key:a").status == "hit_semantic"
    assert cache.skipped(near, owner="key:a") is None and cache.stats["regenerate"] == 0
    cache, _ = make(window=120, by="key")
    cache.lookup(near, request_id="r1", owner="key:a")
    assert cache.lookup(near, request_id="r2", owner="key:a").status == "regenerate"
    with pytest.raises(ValueError, match="regenerate_by"):
        make(by="tenant")


def test_an_exact_regenerate_serves_fresh_and_learns_nothing():
    cache, clock = make(window=120, by="key")
    same = body("how long does a refund take")
    assert cache.lookup(same, request_id="r1", owner="key:a").status == "hit_exact"
    assert cache.lookup(same, request_id="r2", owner="key:a").status == "regenerate"
    assert cache.policy.learned == [] and cache.stats["regenerate"] == 1


def test_skipping_the_cache_for_the_same_request_within_the_window_reports_the_hit():
    cache, clock = make(window=120)
    near = body("how long does a refund take please", user="alice")
    cache.lookup(near, request_id="r1", owner="key:a")
    assert cache.skipped(body("how long does a refund take, please?", user="alice"), owner="key:a") is None
    assert cache.skipped(near, owner="key:b") is None
    clock.t += 60
    assert cache.skipped(near, owner="key:a") == "r1"
    assert cache.policy.learned == [(True, False)]
    assert cache.skipped(near, owner="key:a") is None  # once
    cache.lookup(near, request_id="r2", owner="key:a")
    clock.t += 121
    assert cache.skipped(near, owner="key:a") is None  # outside the window
    assert cache.report("r2", False, owner="key:a") is not None  # still reportable
    assert cache.skipped({"model": "m", "user": "alice"}, owner="key:a") is None  # not cacheable: nothing to match


def test_served_hits_forget_the_oldest_and_keep_their_indexes_consistent():
    served = ServedHits(capacity=2)
    for i in range(3):
        served.remember(ServedHit(f"r{i}", "o", ("o", None), None, "", float(i), entry_id=7, fingerprint=f"f{i}"))
    assert len(served) == 2 and served.take("o", "r0") is None
    assert served.take_recent(("o", None), 0.0, entry_id=7).request_id == "r2"  # the latest hit of entry 7
    assert served.take_recent(("o", None), 0.0, entry_id=7) is None  # r1 is not indexed by the entry any more
    assert served.take_recent(("o", None), 0.0, fingerprint="f1").request_id == "r1"
    assert len(served) == 0


@pytest.mark.parametrize("field", ["user", "safety_identifier"])
def test_end_users_are_hashed_to_a_bounded_id(field):
    long = "u" * 100_000
    assert len(end_user({field: long})) == 32 and end_user({field: long}) != end_user({field: long + "x"})
    assert end_user({"user": 5}) is None and end_user({}) is None
    assert end_user({"user": "a", "safety_identifier": "b"}) == end_user({"safety_identifier": "b"})


def test_remembered_hits_pin_no_answers_even_from_a_store_that_copies_each_entry(tmp_path):
    """A shared store (SQLite here; Redis and pgvector alike) returns a fresh copy of the entry on every hit:
    the remembered hits must not keep those copies' answers (was: 200 hits of one 100 kB answer held 20 MB)."""
    import tracemalloc

    from truecost.cache.entries import SQLiteEntryStore

    cache = SemanticCache(HashEmbedder(), ExactIndex(64), SQLiteEntryStore(tmp_path / "e.db"), Recording())
    question = body("how long does a refund take")
    cache.store(cache.lookup(question), answer("five days. " + "x" * 100_000))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            assert cache.lookup(question, request_id=f"r{i}", owner="key:a").status == "hit_exact"
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache.served) == 200 and held < 2_000_000, held
    report = cache.report("r7", False, owner="key:a")  # still a hit to report on
    assert report is not None and report.status == "hit_exact"


def test_remembered_hits_are_bounded_in_bytes_and_a_flooding_owner_forgets_its_own():
    served = ServedHits(capacity=1_000, max_bytes=400_000)
    served.remember(ServedHit("v1", "key:victim", ("key:victim", None), None, "refund?", 0.0, 1, "fv"))
    long_text = "\U0001f600" * 20_000  # the longest embedded text, 4 bytes a character
    for i in range(100):
        served.remember(ServedHit(f"f{i}", "key:flood", ("key:flood", None), None, long_text, 1.0 + i, 2, f"f{i}"))
    assert served.nbytes <= 400_000 and 1 < len(served) < 10
    assert served.take("key:flood", "f0") is None and served.take("key:flood", "f99") is not None  # oldest first
    assert served.take("key:victim", "v1") is not None  # never the victim's: the flooder holds the most
    for rid in [f"f{i}" for i in range(100)]:
        served.take("key:flood", rid)
    assert len(served) == 0 and served.nbytes == 0  # the byte count follows every hit taken
    # a full table by count: the same rule
    served = ServedHits(capacity=5)
    served.remember(ServedHit("v1", "key:victim", ("key:victim", None), None, "", 0.0, 1, "fv"))
    for i in range(50):
        served.remember(ServedHit(f"f{i}", "key:flood", ("key:flood", None), None, "", 1.0 + i, 2, f"f{i}"))
    assert len(served) == 5 and served.take("key:victim", "v1") is not None
