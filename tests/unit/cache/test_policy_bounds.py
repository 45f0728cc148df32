"""The online policy's memory has a ceiling: a gateway that runs for weeks keeps a flat footprint and refit cost."""

import numpy as np
import pytest

from truecost.cache.policy import Candidate, OnlineErrorBounded
from truecost.cache.policy_state import ClassBook, Logistic


def _vec(i: int, dims: int = 16) -> np.ndarray:
    v = np.zeros(dims, np.float32)
    v[i % dims] = 1.0
    return v


def _verify(pol: OnlineErrorBounded, class_id: int, correct: bool) -> None:
    v = _vec(class_id)
    pol.add_member(class_id, v)
    d = pol.decide(v, [Candidate(entry_id=class_id, similarity=0.9, class_id=class_id)])
    pol.learn(d, correct)


def test_training_samples_are_a_sliding_window_and_refits_continue():
    pol = OnlineErrorBounded(0.05, max_samples=200, min_observations=50, refit_every=25, max_classes=50)
    for i in range(1000):
        _verify(pol, i, correct=i % 3 != 0)
    st = pol.state()
    assert st["observations"] == 1000 and st["training_samples"] == 200
    assert pol._model is not None  # refits kept happening after the window filled (the count is not stuck)
    first = pol._model.w.copy()
    for i in range(1000, 1100):  # the traffic turns: every match is wrong now
        _verify(pol, i, correct=False if i % 10 else True)
    assert not np.allclose(first, pol._model.w)  # the window follows it


def test_classes_past_the_ceiling_are_forgotten_least_recent_first():
    book = ClassBook(max_classes=3)
    for c in (1, 2, 3):
        book.add(c, _vec(c))
    book.touch(1)  # 1 is in use again: 2 is now the stalest
    book.add(4, _vec(4))
    assert set(book.sums) == {1, 3, 4} and book.forgotten == 1
    for c in range(5, 100):
        book.add(c, _vec(c))
        book.stats[c] = [1.0, 1.0, 0.9]
    assert len(book) == 3 and len(book.sums) == 3 and len(book.stats) <= 3


def test_a_reported_class_outlives_unreported_ones():
    book = ClassBook(max_classes=3)
    book.add(7, _vec(7))
    book.served[7] = [5, 3, 3, 0]
    book.mark_reported(7)
    for c in range(100, 130):  # a flood of new classes does not wash out the report
        book.add(c, _vec(c))
    assert book.served[7] == [5, 3, 3, 0] and 7 in book.sums


def test_a_forgotten_class_with_live_entries_is_scored_from_its_nearest_member():
    book = ClassBook(max_classes=2)
    book.add(1, _vec(1))
    sims = book.centroid_sims([1, 99], _vec(1), [Candidate(10, 0.8, 1), Candidate(20, 0.42, 99)])
    assert sims[0] == pytest.approx(1.0) and sims[1] == pytest.approx(0.42)
    pol = OnlineErrorBounded(0.05, max_classes=2)
    pol._model = Logistic(pol.n_features)
    pol.tau = 0.5
    for c in (1, 2, 3):
        pol.add_member(c, _vec(c))
    d = pol.decide(_vec(1), [Candidate(10, 0.97, 1), Candidate(20, 0.5, 2)])  # class 1 was forgotten
    assert d.predicted_class == 1 and d.features is not None and np.isfinite(d.features).all()


def test_reports_survive_as_counts_when_their_class_is_forgotten():
    pol = OnlineErrorBounded(0.05, explore=0.0, max_classes=2)
    pol._model = Logistic(pol.n_features)
    pol.tau = 0.5
    pol.add_member(1, _vec(1))
    hit = pol.decide(_vec(1), [Candidate(10, 0.95, 1)])
    assert hit.hit
    pol.report(hit, correct=False)
    for c in range(2, 10):
        pol.add_member(c, _vec(c))
    assert pol.state()["reported_wrong"] == 1 and pol.state()["classes"] <= 2


def test_bad_bounds():
    with pytest.raises(ValueError):
        ClassBook(0)
    with pytest.raises(ValueError):
        OnlineErrorBounded(0.01, max_samples=10, min_observations=50)


def test_the_ceiling_holds_when_every_kept_class_was_reported_wrong():
    # every slot holds a reported class: a new class used to evict itself at once, and its centroid, size,
    # verification and served records were then written outside the book, never to be forgotten (unbounded)
    book = ClassBook(max_classes=3)
    for c in (1, 2, 3):
        book.add(c, _vec(c))
        book.mark_reported(c)
    for c in range(4, 200):
        book.add(c, _vec(c))
        book.stats[c] = [1.0, 1.0, 0.9]
        book.served[c] = [1, 0, 0, 0]
    assert len(book) == 3
    assert len(book.sums) <= 3 and len(book.sizes) <= 3 and len(book.stats) <= 3 and len(book.served) <= 3
    assert 199 in book.sums and book.sizes[199] == 1  # the class in use is the one kept
