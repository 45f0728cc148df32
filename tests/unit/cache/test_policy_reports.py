"""Client reports in the online policy: evidence about the reported class, never a training sample."""

import numpy as np

from truecost.cache.policy import Candidate, OnlineErrorBounded
from truecost.cache.policy_state import Logistic


def _policy():
    pol = OnlineErrorBounded(0.05, explore=0.0)
    pol._model = Logistic(pol.n_features)  # untrained: P(correct) 0.5 everywhere
    pol.tau = 0.5
    return pol


def _lookup(pol, class_id):
    v = np.zeros(8, np.float32)
    v[class_id % 8] = 1.0
    pol.add_member(class_id, v)
    return pol.decide(v, [Candidate(entry_id=class_id * 10, similarity=0.95, class_id=class_id)])


def test_wrong_reports_stop_the_reported_class_and_only_it():
    pol = _policy()
    hits = [_lookup(pol, 1) for _ in range(10)] + [_lookup(pol, 2) for _ in range(10)]
    assert all(d.hit for d in hits)
    tau, samples = pol.tau, pol.state()["training_samples"]
    for d in hits[:6]:  # six of class 1's ten hits reported wrong
        pol.report(d, correct=False)
    assert pol.tau == tau and pol.state()["training_samples"] == samples  # no global move, no one-sided training sample
    again = _lookup(pol, 1)
    assert not again.hit and again.score == (10 - 6 + 1) / (10 + 2)  # capped by the class's served record
    assert _lookup(pol, 2).hit
    assert pol.state()["reported_wrong"] == 6


def test_right_reports_never_loosen_anything():
    pol = _policy()
    hits = [_lookup(pol, 3) for _ in range(4)]
    pol.report(hits[0], correct=False)
    before = pol._served_accuracy(3)
    for d in hits[1:]:
        pol.report(d, correct=True)
    assert pol._served_accuracy(3) == before and pol.state()["reported_right"] == 3
    fresh = _policy()
    d = _lookup(fresh, 4)
    fresh.report(d, correct=True)
    assert fresh._served_accuracy(4) == 1.0 and fresh.tau == 0.5


def test_a_miss_or_an_unknown_class_is_not_reported():
    pol = _policy()
    pol.tau = 0.9
    miss = _lookup(pol, 5)
    assert not miss.hit
    pol.report(miss, correct=False)
    assert pol.state()["reported_wrong"] == 0


def test_a_stopped_class_is_answered_again_when_verifications_find_it_right():
    pol = _policy()
    hits = [_lookup(pol, 6) for _ in range(10)]
    for d in hits[:6]:
        pol.report(d, correct=False)
    assert not _lookup(pol, 6).hit
    for _ in range(20):  # misses checked against the class, found the same
        miss = _lookup(pol, 6)
        pol.learn(miss, True)
    assert pol._served_accuracy(6) > 0.5 and _lookup(pol, 6).hit
    assert pol.state()["training_samples"] == 20 and pol.state()["reported_wrong"] == 6
