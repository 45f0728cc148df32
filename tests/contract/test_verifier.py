"""The Verifier contract, run against every implementation (truecost.cache.verifier's seam)."""

from decimal import Decimal

import numpy as np
import pytest

from truecost.cache.verifier import (
    ANSWERS,
    BUDGETED,
    CAPABILITIES,
    FEEDBACK,
    QUERIES,
    Budgeted,
    ClientFeedback,
    EmbeddingMatch,
    JudgeMatch,
    KnownClassVerifier,
    NormalisedMatch,
    PairView,
    Verdict,
    Verifier,
)


class HashEmbedder:
    model_id, dims = "test/hash-bow", 64

    def embed_batch(self, texts):
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, hash(w) % self.dims] += 1.0
            out[i] /= max(np.linalg.norm(out[i]), 1e-9)
        return out


CLASSES = {
    "cancel my order": "cancel_order",
    "please cancel my order": "cancel_order",
    "cancel my subscription": "cancel_subscription",
    "what's the refund policy?": "refund",
    "how do i get my money back?": "refund",
    "tell me a joke": "oos",
    "sing a song": "oos",
}


def _query_pair():
    from truecost.cache.embedders import MiniLMEmbedder
    from truecost.cache.query_verifier import QueryPairVerifier

    return QueryPairVerifier(MiniLMEmbedder())


def _llm_judge():
    """The LLM judge over a scripted model that reads the two quoted requests from the prompt and says yes when
    their known classes match (the prompt's format is what it parses)."""
    import json
    import re

    from truecost.cache.judge import LLMJudge

    def complete(messages):
        quoted = re.findall(
            r'(?:New request|Stored request|Request A|Request B): ("(?:[^"\\]|\\.)*")', messages[-1]["content"]
        )
        a, b = (CLASSES.get(json.loads(q)) for q in quoted[:2])
        return (
            ("Yes." if a is not None and a == b and a != "oos" else "No"),
            {"prompt_tokens": 60, "completion_tokens": 1},
            "m",
        )

    return LLMJudge(complete)


FACTORIES = {
    "normalised": NormalisedMatch,
    "embedding": lambda: EmbeddingMatch(HashEmbedder(), 0.9),
    "judge": lambda: JudgeMatch(lambda a, b: a.strip() == b.strip()),
    "known-class": lambda: KnownClassVerifier(CLASSES, never_same=("oos",)),
    "client-feedback": ClientFeedback,
    "budgeted": lambda: Budgeted(KnownClassVerifier(CLASSES), requests_per_hour=100),
    "query-pair": _query_pair,
    "llm-judge": _llm_judge,
}


@pytest.fixture(params=sorted(FACTORIES), scope="module")
def verifier(request):
    return FACTORIES[request.param]()


def pair(q, o, answer=None, other_answer=None):
    return PairView(q, o, answer=answer, other_answer=other_answer)


def test_declares_a_name_and_known_capabilities(verifier):
    assert isinstance(verifier, Verifier)
    assert isinstance(verifier.name, str) and verifier.name
    assert verifier.capabilities and set(verifier.capabilities) <= CAPABILITIES


def test_one_verdict_or_abstention_per_pair_in_order(verifier):
    assert verifier.verify([]) == []
    pairs = [
        pair("cancel my order", "cancel my order", "done", "done"),
        pair("cancel my order", "cancel my subscription", "done", "a different answer"),
        pair("tell me a joke", "sing a song", "ha", "la"),
    ]
    out = verifier.verify(pairs)
    assert len(out) == len(pairs)
    for v in out:
        assert v is None or (isinstance(v, Verdict) and 0.0 <= v.p_same <= 1.0 and v.source == verifier.name)


def test_verdicts_are_symmetric(verifier):
    a = pair("what's the refund policy?", "how do i get my money back?", "30 days", "within 30 days")
    b = pair("how do i get my money back?", "what's the refund policy?", "within 30 days", "30 days")
    va, vb = verifier.verify([a])[0], verifier.verify([b])[0]
    assert (va is None) == (vb is None)
    if va is not None:
        assert va.p_same == pytest.approx(vb.p_same, abs=1e-6)


def test_identical_requests_with_identical_answers_are_the_same(verifier):
    v = verifier.verify([pair("please cancel my order", "please cancel my order", "done", "done")])[0]
    if FEEDBACK in verifier.capabilities and not verifier.capabilities - {FEEDBACK}:
        assert v is None  # reports on served hits only: never judges a pair
    else:
        assert v is not None and v.same


def test_a_verifier_that_needs_answers_abstains_without_them(verifier):
    v = verifier.verify([pair("cancel my order", "cancel my order")])[0]
    if QUERIES in verifier.capabilities:
        assert v is not None and v.same
    else:
        assert v is None


def test_different_requests_are_told_apart(verifier):
    v = verifier.verify(
        [
            pair(
                "cancel my order",
                "cancel my subscription",
                "Your order is cancelled.",
                "Your subscription is cancelled.",
            )
        ]
    )[0]
    if FEEDBACK in verifier.capabilities and not verifier.capabilities - {FEEDBACK}:
        assert v is None
    else:
        assert v is not None and not v.same


def test_budgeted_verifier_abstains_when_the_budget_is_spent():
    now = [1000.0]
    b = Budgeted(KnownClassVerifier(CLASSES), requests_per_hour=2, clock=lambda: now[0])
    assert BUDGETED in b.capabilities and QUERIES in b.capabilities
    same = pair("cancel my order", "please cancel my order")
    assert [v is not None for v in b.verify([same, same, same])] == [True, True, False]
    now[0] += 3601
    assert b.verify([same])[0] is not None and b.calls == 3 and b.refused == 1


def test_budgeted_verifier_keeps_to_dollars_and_refuses_an_unknown_price():
    same = pair("cancel my order", "please cancel my order")
    b = Budgeted(KnownClassVerifier(CLASSES), dollars_per_day=Decimal("0.05"), cost_per_call=Decimal("0.02"))
    assert [v is not None for v in b.verify([same, same, same])] == [True, True, False]
    assert b.spent_usd == Decimal("0.04")
    unpriced = Budgeted(KnownClassVerifier(CLASSES), dollars_per_day=Decimal("1"))
    assert unpriced.verify([same]) == [None] and unpriced.refused_unpriced == 1


def test_answer_verifiers_compare_answers_only():
    for v in (NormalisedMatch(), EmbeddingMatch(HashEmbedder(), 0.99)):
        assert ANSWERS in v.capabilities and QUERIES not in v.capabilities
        assert v.verify([pair("a", "b", "Thirty days", "thirty  DAYS")])[0].same
        assert not v.verify([pair("a", "a", "thirty days", "no refunds")])[0].same
