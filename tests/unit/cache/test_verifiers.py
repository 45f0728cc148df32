"""The verifier panel, the policies' use of verifier sources, client feedback, and the shipped query-pair verifier."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from truecost.cache.entries import MemoryEntryStore
from truecost.cache.index import ExactIndex
from truecost.cache.panel import VerifierPanel
from truecost.cache.policy import Candidate, OnlineErrorBounded, VerifierOnly, make_policy
from truecost.cache.semantic import SemanticCache
from truecost.cache.verifier import (
    ANSWERS,
    QUERIES,
    Budgeted,
    ClientFeedback,
    KnownClassVerifier,
    NormalisedMatch,
    PairView,
    Verdict,
)

from tests.contract.test_verifier import HashEmbedder


class Scripted:
    """A lookup-time verifier whose verdicts are given: P(same) by (query, other)."""

    capabilities = frozenset({QUERIES})

    def __init__(self, p, name="scripted"):
        self.p, self.name, self.asked = p, name, 0

    def verify(self, pairs):
        self.asked += len(pairs)
        return [Verdict(self.p(x.query, x.other), self.name) for x in pairs]


def body(text):
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def answer(text):
    return {
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }


# -- the panel ------------------------------------------------------------------------------
def test_panel_weighs_a_source_by_its_agreement_with_the_most_trusted_one():
    truth = KnownClassVerifier({"a": "x", "b": "x", "c": "y"}, name="truth")
    liar = Scripted(lambda q, o: 0.99 if {q, o} == {"a", "c"} else 0.01, name="liar")
    panel = VerifierPanel([truth, liar], prior_pairs=2)
    assert panel.reliability["liar"].weight() == 1.0
    for _ in range(30):
        panel.judge([PairView("a", "b"), PairView("a", "c")])
    assert panel.reliability["liar"].weight() == pytest.approx(2 / 62)  # 60 pairs, always wrong: no weight left
    assert panel.reliability["truth"].pairs == 0  # the reference is not scored against itself
    # pooled: the reference decides, the discredited source barely moves it
    pooled = panel.judge([PairView("a", "b")])[0]
    assert pooled.same and pooled.p_same > 0.99


def test_panel_uses_budgeted_sources_only_where_allowed_and_feedback_never_judges():
    costly = Budgeted(KnownClassVerifier({"a": "x", "b": "x"}), requests_per_hour=10)
    panel = VerifierPanel([ClientFeedback(), costly])
    assert panel.lookup_sources == [] and panel.accepts_feedback and panel.judges
    assert panel.judge([PairView("a", "b")], allow_budgeted=False) == [None]
    assert panel.judge([PairView("a", "b")], allow_budgeted=True)[0].same and costly.calls == 1
    assert not VerifierPanel([ClientFeedback()]).judges


def test_panel_refuses_undeclared_capabilities():
    class Odd:
        name, capabilities = "odd", frozenset({"telepathy"})

        def verify(self, pairs):
            return [None] * len(pairs)

    with pytest.raises(ValueError, match="telepathy"):
        VerifierPanel([Odd()])


# -- policies ---------------------------------------------------------------------------------
def test_online_policy_learns_from_soft_labels_and_uses_the_verifiers_opinion():
    pol = OnlineErrorBounded(0.05, min_observations=20, refit_every=10, explore=0.0, seed=1)
    rng = np.random.default_rng(0)
    v = np.ones(4, np.float32) / 2
    pol.add_member(1, v)
    pol.add_member(2, v)
    for i in range(400):
        p = float(rng.random())
        d = pol.decide(v, [Candidate(i, 0.8, 1, p), Candidate(i + 1, 0.79, 2, 0.5)])
        if not d.hit:
            pol.learn(d, p)  # the soft label: P(same) as the verifier gave it
    assert pol._model is not None
    high = pol.decide(v, [Candidate(1, 0.8, 1, 0.999), Candidate(2, 0.79, 2, 0.5)])
    low = pol.decide(v, [Candidate(1, 0.8, 1, 0.01), Candidate(2, 0.79, 2, 0.5)])
    assert high.score > 0.9 > 0.2 > low.score


def test_online_policy_serves_the_member_the_verifiers_prefer():
    pol = OnlineErrorBounded(0.05)
    pol.add_member(7, np.ones(4, np.float32))
    d = pol.decide(np.ones(4, np.float32) / 2, [Candidate(1, 0.9, 7, 0.2), Candidate(2, 0.88, 7, 0.95)])
    assert d.check_classes[0] == (7, 1) and d.predicted_class == 7
    from truecost.cache.policy_state import best_member as _best_member

    assert _best_member([Candidate(1, 0.9, 7, 0.2), Candidate(2, 0.88, 7, 0.95)], 7) == 2
    assert _best_member([Candidate(1, 0.9, 7), Candidate(2, 0.88, 7)], 7) == 1


def test_verifier_only_policy_keeps_its_expected_error_under_the_budget():
    pol = make_policy("verifier-only", 0.02)
    assert isinstance(pol, VerifierOnly)
    rng = np.random.default_rng(3)
    hits, expected = 0, 0.0
    for i in range(2000):
        p = float(rng.beta(5, 1))
        d = pol.decide(np.zeros(4), [Candidate(i, 0.5, i, p)])
        if d.hit:
            hits += 1
            expected += 1 - p
    assert hits > 100 and expected / 2000 <= 0.02
    assert not pol.decide(np.zeros(4), [Candidate(1, 0.99, 1)]).hit  # no verifier opinion: never a hit


# -- the cache with verifiers and feedback -----------------------------------------------------
def _cache(policy, verifier):
    return SemanticCache(HashEmbedder(), ExactIndex(64), MemoryEntryStore(), policy, verifier)


def test_lookup_time_verifier_scores_candidates_and_the_miss_is_judged():
    same = Scripted(lambda q, o: 0.97 if q.split()[-1] == o.split()[-1] else 0.03)
    cache = _cache(make_policy("verifier-only", 0.05), [same])
    r = cache.lookup(body("please cancel my order"))
    cache.store(r, answer("cancelled"))
    r = cache.lookup(body("cancel my order"))
    assert [c.pair_p for c in r.candidates] == [pytest.approx(0.97)] and same.asked == 1


def test_feedback_on_a_served_hit_reaches_the_policy_and_scores_the_verifiers():
    learned = []

    class Recording(OnlineErrorBounded):
        def learn(self, decision, label):
            learned.append((decision.hit, label))

    scripted = Scripted(lambda q, o: 0.9)
    pol = Recording(0.05)
    pol.tau = 0.5  # an untrained model says P(correct) 0.5 for anything: a hit
    from truecost.cache.policy_state import Logistic as _Logistic

    pol._model = _Logistic(pol.n_features)
    pol.explore = pol.explore_min = 0.0
    cache = _cache(pol, [ClientFeedback(), scripted])
    cache.store(cache.lookup(body("cancel my order")), answer("cancelled"))
    hit = cache.lookup(body("cancel my order now"), request_id="req-1")
    assert hit.status == "hit_semantic"
    n_learned = len(learned)
    assert cache.feedback("req-1", correct=False) is True
    assert len(learned) == n_learned  # a one-sided report is not a training sample
    assert pol.state()["reported_wrong"] == 1
    assert cache.verifiers.reliability["scripted"].pairs == 1 and cache.verifiers.reliability["scripted"].agreed == 0
    assert cache.feedback("req-1", correct=True) is False  # reported once; unknown afterwards
    assert cache.stats["feedback_wrong"] == 1 and cache.stats["feedback_unknown"] == 1
    # that class's hits were reported wrong: it is no longer answered from (P capped at 1/3 < 0.5)
    again = cache.lookup(body("cancel my order now"), request_id="req-2")
    assert again.status == "miss" and again.decision.score < 0.5


def test_answer_verifier_still_classifies_after_a_miss():
    cache = _cache(OnlineErrorBounded(0.01), NormalisedMatch())
    assert ANSWERS in NormalisedMatch().capabilities
    a = cache.lookup(body("what is the refund policy"))
    first = cache.store(a, answer("30 days"))
    b = cache.lookup(body("refund policy please"))
    second = cache.store(b, answer("30 Days!"))
    assert second.class_id == first.class_id and cache.verifications == 1


# -- the shipped query-pair verifier -------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_verifier():
    from truecost.cache.embedders import MiniLMEmbedder
    from truecost.cache.query_verifier import QueryPairVerifier

    return QueryPairVerifier(MiniLMEmbedder())


def test_query_pair_verifier_tells_a_changed_key_term_from_a_paraphrase(minilm_verifier):
    a = ["cancel my order", "How do I learn Python?", "My card payment was declined", "How do I reset my password?"]
    b = [
        "cancel my subscription",
        "How do I learn Java?",
        "My transfer was declined",
        "I forgot my password, how can I change it?",
    ]
    p = minilm_verifier.probabilities(a, b)
    assert p[0] < 0.5 and p[1] < 0.5 and p[2] < 0.5  # one key term changed: a different answer
    assert p[3] >= 0.5  # reworded, same request
    # the cosine alone ranks them the other way round for the first pair (0.65 against 0.89 for the last)
    v = minilm_verifier.embedder.embed_batch(a + b)
    assert float(v[0] @ v[4]) > 0.6


def test_query_pair_verifier_refuses_an_embedder_it_was_not_trained_for():
    from truecost.cache.query_verifier import QueryPairVerifier
    from truecost.errors import TruecostError

    with pytest.raises(TruecostError, match="no head for the embedder 'test/hash-bow'"):
        QueryPairVerifier(HashEmbedder()).probabilities(["a"], ["b"])
    from truecost.cache.panel import make_verifiers

    with pytest.raises(TruecostError, match="no head"):  # a gateway refuses it at start-up, not in a request
        make_verifiers("embedding:0.9+query", HashEmbedder())


def test_artifact_records_its_training_data_and_never_a_benchmark_file():
    from truecost.cache.query_verifier import artifact_metadata

    meta = artifact_metadata()
    data = meta["training_data"]
    assert data["file"] == "qqp_pairs.jsonl" and data["benchmark_files_used"] == []
    text = json.dumps(meta).lower()
    assert "banking" not in text and "clinc" not in text
    assert meta["seed"] == 0 and meta["command"].startswith("python scripts/train_verifier.py")
    for head in meta["heads"].values():
        assert head["test"]["pairs"] > 1000 and 0.5 < head["test"]["roc_auc"] <= 1.0
    # shared/ lies beside the checkout (developers' machines and CI): the artifact came from this very file
    qqp = Path(__file__).resolve().parents[4] / "shared" / "data" / "qqp_gptcache" / "qqp_pairs.jsonl"
    assert hashlib.sha256(qqp.read_bytes()).hexdigest() == data["sha256"]


def test_the_demo_gateway_runs_the_online_policy_on_the_query_verifier_without_calibration():
    from truecost.demo.live import gateway_config
    from truecost.gateway.config import parse_config

    doc = gateway_config("http://127.0.0.1:9/v1", "/tmp/never-opened.db", "m")
    assert doc["cache"]["policy"] == "online" and doc["cache"]["equivalence"] == "query"
    assert parse_config(doc, "demo").cache.equivalence == "query"


def test_gateway_config_names_an_unknown_verifier():
    from truecost.demo.live import gateway_config
    from truecost.errors import ConfigError
    from truecost.gateway.config import parse_config

    doc = gateway_config("http://127.0.0.1:9/v1", "/tmp/never-opened.db", "m")
    doc["cache"]["equivalence"] = "query+oracle"
    with pytest.raises(ConfigError, match="unknown verifier 'oracle'"):
        parse_config(doc, "demo")
