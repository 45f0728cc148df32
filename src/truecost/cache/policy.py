"""Decision policies: is the nearest cached answer correct for this request?

* ``FixedThreshold``: hit when cosine similarity >= t (one documented scale: cosine in
  [-1, 1]; GPTCache's "0.8" is cosine 0.6, RedisVL's distance 0.1 is cosine 0.9).
* ``CalibratedThreshold``: the smallest t whose precision on labelled pairs meets a target.
* ``OnlineErrorBounded``: learns, from the feedback a production cache really has, where
  the threshold lies in each neighbourhood, and keeps the false-hit rate under a bound.
* ``VerifierOnly``: no feedback at all; hits on the lookup-time verifiers' P(same) under the
  same expected-error budget (the bound is only as good as their calibration).

The online policy, in short. Entries are grouped into *equivalence classes*: after a miss,
the fresh request is checked (the ``Verifier`` sources of ``truecost.cache.verifier``, pooled by
their measured reliability) against the nearest candidate classes, and the new entry joins the
first class judged the same; the verifiers' pooled P(same) for the first class is the (soft)
label the policy learns from. Each
lookup is described by features of its neighbourhood (similarity to the nearest entry and
to its class centroid, margins over the best other class, the class's share of the
neighbours, how often that class's matches were verified correct, and the similarity
relative to that class's typical correct match) and, when a verifier can judge requests at
lookup time (the query-pair verifier), by its P(same) for the class's best member, the
class's mean and the margin over other classes. A logistic model, refitted as
verifications arrive, turns them into P(correct). The threshold on P is the lowest whose
expected false hits over a window of recent lookups stay under ``target_error x safety``.
A small share ``explore`` of would-be hits is served as misses and verified, so the model
also sees the region it answers in. Among the verified lookups near and above the
threshold, observed errors are compared with predicted ones: an upper confidence bound on
that ratio scales the budget (tighter when the model under-predicts errors or has seen few
samples; at most ``max_boost`` x looser when many samples show it over-predicts).
Client reports on served hits (``report``) are one-sided, so they are not training samples:
they count against the reported class's served hits, and cap that class's P(correct).
Memory is bounded for a gateway that runs for weeks: the model is refitted on the last
``max_samples`` verifications (a sliding window, so a refit costs the same on day 30 as on day 1
and the model follows drifting traffic), and per-class records live in a ``ClassBook`` of at most
``max_classes`` classes (``truecost.cache.policy_state``).
This is our own construction after the idea of vCache (Schroeder
et al., ICLR 2026: per-neighbourhood thresholds learned online under an error bound).
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from truecost.cache.policy_state import ClassBook, Logistic, best_member, class_order, pair_features


@dataclass(slots=True)
class Candidate:
    entry_id: int
    similarity: float
    class_id: int
    pair_p: float | None = None  # the lookup-time verifiers' P(same answer) for this candidate, if any


@dataclass(slots=True)
class Decision:
    hit: bool
    entry_id: int | None
    score: float  # similarity (threshold policies) or P(correct) (online policy)
    reason: str
    predicted_class: int | None = None
    check_classes: list[tuple[int, int]] = field(default_factory=list)  # (class, representative entry) to verify
    features: np.ndarray | None = None
    explored: bool = False


class Policy(Protocol):
    name: str
    learns: bool  # declared: whether ``learn`` changes anything (client feedback reports it)

    def decide(self, vector: np.ndarray, candidates: Sequence[Candidate]) -> Decision: ...

    def learn(self, decision: Decision, first_check_correct: bool | float | None) -> None:
        """Feedback on ``decision``: True/False, or P(correct) from verifiers that are not certain."""

    def report(self, decision: Decision, correct: bool) -> None:
        """A client's verdict on a hit the policy served (one-sided: clients mostly report what was wrong)."""

    def add_member(self, class_id: int, vector: np.ndarray) -> None: ...


class FixedThreshold:
    learns = False

    def __init__(self, threshold: float, checks: int = 0) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold is a cosine similarity in [-1, 1]")
        self.threshold = threshold
        self.checks = checks
        self.name = f"fixed(cos>={threshold:.3f})"

    def decide(self, vector: np.ndarray, candidates: Sequence[Candidate]) -> Decision:
        if not candidates:
            return Decision(False, None, 0.0, "no candidates")
        top = candidates[0]
        if top.similarity >= self.threshold:
            return Decision(
                True,
                top.entry_id,
                top.similarity,
                f"similarity {top.similarity:.3f} >= {self.threshold}",
                predicted_class=top.class_id,
            )
        return Decision(
            False,
            None,
            top.similarity,
            f"similarity {top.similarity:.3f} < {self.threshold}",
            predicted_class=top.class_id,
            check_classes=class_order(candidates)[: self.checks],
        )

    def learn(self, decision: Decision, first_check_correct: bool | float | None) -> None:
        pass

    def report(self, decision: Decision, correct: bool) -> None:
        pass

    def add_member(self, class_id: int, vector: np.ndarray) -> None:
        pass


class CalibratedThreshold(FixedThreshold):
    """A fixed threshold chosen offline from labelled pairs to meet a precision target."""

    @classmethod
    def from_pairs(
        cls, similarities: Sequence[float], same: Sequence[bool], target_error: float, min_accepted: int = 20
    ) -> "CalibratedThreshold":
        s = np.asarray(similarities, dtype=np.float64)
        y = np.asarray(same, dtype=bool)
        if len(s) == 0 or len(s) != len(y):
            raise ValueError("need as many labels as similarities, and at least one pair")
        if y.all() or not y.any():
            raise ValueError("labelled pairs must contain both equivalent and non-equivalent pairs")
        order = np.argsort(-s)
        wrong = np.cumsum(~y[order])
        accepted = np.arange(1, len(s) + 1)
        ok = np.nonzero((wrong / accepted <= target_error) & (accepted >= min_accepted))[0]
        threshold = float(s[order][ok.max()]) if len(ok) else 1.0
        policy = cls(threshold)
        policy.name = f"calibrated(cos>={threshold:.3f}, precision>={1 - target_error:.3f} on {len(s)} pairs)"
        return policy


class OnlineErrorBounded:
    """Learns per-neighbourhood thresholds online and keeps false hits / lookups <= target_error."""

    n_features = 13
    learns = True

    def __init__(
        self,
        target_error: float = 0.01,
        *,
        safety: float = 0.85,
        explore: float = 0.03,
        checks: int = 3,
        k: int = 10,
        window: int = 2000,
        refit_every: int = 25,
        min_observations: int = 50,
        floor: float = 0.85,
        max_boost: float = 1.5,
        explore_min: float | None = None,
        ucb_z: float = 0.5,
        seed: int = 0,
        max_samples: int = 20_000,
        max_classes: int = 100_000,
    ) -> None:
        if not 0 < target_error < 1:
            raise ValueError("target_error must be in (0, 1)")
        if max_samples < min_observations:
            raise ValueError("max_samples must be at least min_observations")
        self.target_error, self.safety, self.explore, self.checks, self.k = target_error, safety, explore, checks, k
        self.window, self.refit_every, self.min_observations, self.floor = window, refit_every, min_observations, floor
        self.ucb_z = ucb_z
        self.max_boost = max_boost  # how far the budget may grow when verified hits err less than predicted
        self.explore_min = explore if explore_min is None else explore_min
        self.name = f"online-error-bounded(target={target_error})"
        # per-class records (centroids, verifications, served hits), at most max_classes of them
        self.classes = ClassBook(max_classes)
        # the training samples: the last max_samples verifications (a refit's cost and memory stay flat)
        self._x: deque[np.ndarray] = deque(maxlen=max_samples)
        self._y: deque[float] = deque(maxlen=max_samples)
        self.observations = 0  # every verification learnt from, ever
        self._recent: deque[np.ndarray] = deque(maxlen=window)
        self._explored = [0, 0.0]  # would-be hits served as misses and verified: count, sum of their errors
        self._reports = [0, 0]  # client reports on served hits: wrong, right
        self._near: deque[tuple[float, float]] = deque(maxlen=window)
        self._model: Logistic | None = None
        self.tau = 1.01
        self._rng = random.Random(seed)

    # -- features ---------------------------------------------------------------------
    def _features(self, vector: np.ndarray, candidates: Sequence[Candidate]) -> tuple[np.ndarray, int, list]:
        top = candidates[: self.k]
        c1 = top[0].class_id
        sims = np.array([c.similarity for c in top])
        s1 = float(sims[0])
        other = [c.similarity for c in top if c.class_id != c1]
        s2 = other[0] if other else float(sims[-1]) - 0.05
        support = sum(1 for c in top if c.class_id == c1)
        weights = np.exp((sims - s1) / 0.02)
        vote = float(sum(w for w, c in zip(weights, top) if c.class_id == c1) / weights.sum())
        order = class_order(top)
        classes = [c for c, _ in order]
        csims = self.classes.centroid_sims(classes, vector, top)
        others = [s for c, s in zip(classes, csims) if c != c1]
        cs1 = float(csims[classes.index(c1)])
        cs2 = max(others) if others else cs1 - 0.1
        ok, tot, sim_sum = self.classes.stats.get(c1, (0.0, 0.0, 0.0))
        rel = s1 - sim_sum / ok if ok else 0.0
        x = np.array(
            [
                s1,
                s1 - s2,
                support / self.k,
                vote,
                (ok + 1) / (tot + 2),
                math.log1p(tot),
                rel,
                cs1,
                cs1 - cs2,
                math.log1p(self.classes.sizes.get(c1, 1)),
                *pair_features(top, c1),
            ]
        )
        by_centroid = [order[i] for i in np.argsort(-csims)]
        checks = [order[0]] + [c for c in by_centroid if c[0] != c1]
        return x, c1, checks[: self.checks]

    # -- decisions ----------------------------------------------------------------------
    def decide(self, vector: np.ndarray, candidates: Sequence[Candidate]) -> Decision:
        if not candidates:
            return Decision(False, None, 0.0, "no candidates")
        x, c1, checks = self._features(vector, candidates)
        if c1 in self.classes.sizes:
            self.classes.touch(c1)  # a class still asked about is not the one to forget
        self._recent.append(x)
        p = float(self._model.predict(x)[0]) if self._model is not None else 0.0
        p = min(p, self._served_accuracy(c1))
        best = best_member(candidates[: self.k], c1)
        if p >= self.tau:
            # Exploration decays as verified would-be hits accumulate (~1/sqrt(n)), never below explore_min.
            eps = max(self.explore_min, self.explore * min(1.0, math.sqrt(100.0 / (self._explored[0] + 1))))
            if self._rng.random() >= eps:
                self.classes.touch(c1)
                self.classes.served.setdefault(c1, [0, 0, 0, 0])[0] += 1
                return Decision(True, best, p, f"P(correct) {p:.3f} >= {self.tau:.3f}", c1, [], x)
            return Decision(
                False,
                None,
                p,
                "exploration: a would-be hit served as a miss and verified",
                c1,
                checks,
                x,
                explored=True,
            )
        reason = "learning (no model yet)" if self._model is None else f"P(correct) {p:.3f} < {self.tau:.3f}"
        return Decision(False, None, p, reason, c1, checks, x)

    def learn(self, decision: Decision, first_check_correct: bool | float | None) -> None:
        """``first_check_correct``: True/False, or the verifiers' P(correct) (a soft label)."""
        if decision.features is None or first_check_correct is None:
            return
        y = min(1.0, max(0.0, float(first_check_correct)))
        x = decision.features
        c1 = decision.predicted_class if decision.predicted_class is not None else -1
        self._x.append(x)
        self._y.append(y)
        self.observations += 1
        self.classes.touch(c1)
        st = self.classes.stats.setdefault(c1, [0.0, 0.0, 0.0])
        st[1] += 1
        st[0] += y
        st[2] += y * float(x[0])
        served = self.classes.served.get(c1)
        if served is not None and served[2]:  # a reported class recovers as verifications find it right again
            served[0] += 1
            served[1] += 1 - y
        if decision.explored:
            self._explored[0] += 1
            self._explored[1] += 1 - y
        if decision.score >= self.floor:  # verified lookups near or above the threshold: calibration data
            self._near.append((decision.score, y))
        n = self.observations
        if n >= self.min_observations and n % self.refit_every == 0 and 0 < sum(self._y) < len(self._y):
            self._refit()

    def report(self, decision: Decision, correct: bool) -> None:
        """A client's verdict on a served hit: evidence about that hit's class, not a training sample.

        Reports arrive one-sided (clients say when an answer was wrong, rarely when it was right),
        so they never enter the logistic model (whose samples come from verifications, explored
        would-be hits included, which see both outcomes) and never loosen the global threshold.
        They are counted against the class's served hits: a class whose hits are reported wrong
        more often than the policy's bound allows stops being answered (``_served_accuracy``),
        and the other classes keep their hits. A client can only report on hits it was served.
        """
        if decision.predicted_class is None or not decision.hit:
            return
        c = decision.predicted_class
        self.classes.touch(c)
        served = self.classes.served.setdefault(c, [1, 0, 0, 0])
        served[0] = max(served[0], served[2] + served[3] + 1)  # a reported hit was served, whatever we counted
        served[3 if correct else 2] += 1
        self._reports[0 if not correct else 1] += 1
        if not correct:
            served[1] += 1
            self.classes.mark_reported(c)

    def _served_accuracy(self, class_id: int) -> float:
        """The share of this class's answers that were right, once a client reported one wrong (1.0 before).

        (n - wrong + 1) / (n + 2) over its served hits and, after the first wrong report, its later
        verifications (misses checked against it): a class stopped by reports is answered again once
        enough verifications find it right, and a single report weighs little on a class that served many.
        """
        served = self.classes.served.get(class_id)
        if served is None or not served[2]:
            return 1.0
        return (served[0] - served[1] + 1) / (served[0] + 2)

    def _refit(self) -> None:
        model = Logistic(self.n_features)
        model.fit(np.array(self._x), np.array(self._y))
        self._model = model
        budget = self.target_error * self.safety
        if self._near:  # observed vs predicted errors among verified lookups near and above the threshold
            expected = sum(1 - p for p, _ in self._near)
            observed = sum(1 - ok for _, ok in self._near)
            # an upper confidence bound on observed/predicted errors: few samples -> a tight budget
            ratio = (observed + 1 + self.ucb_z * math.sqrt(observed + 1)) / (expected + 1)
            budget = self.target_error * min(self.max_boost, self.safety / max(ratio, 0.5))
        p = np.sort(model.predict(np.array(self._recent)))[::-1]
        expected_rate = np.cumsum(1 - p) / len(p)
        ok = np.nonzero((expected_rate <= budget) & (p >= self.floor))[0]
        self.tau = float(p[ok.max()]) if len(ok) else 1.01

    def add_member(self, class_id: int, vector: np.ndarray) -> None:
        self.classes.add(class_id, vector)

    def state(self) -> dict:
        return {
            "tau": self.tau,
            "observations": self.observations,
            "training_samples": len(self._y),
            "explored": self._explored[0],
            "explored_errors": round(self._explored[1], 2),
            "classes": len(self.classes.sizes),
            "classes_forgotten": self.classes.forgotten,
            "reported_wrong": self._reports[0],
            "reported_right": self._reports[1],
        }


class VerifierOnly:
    """Hits on the lookup-time verifiers' opinion alone: no feedback, no learning, no labels.

    The candidate with the highest P(same) (from ``Candidate.pair_p``) is served when that P
    is at or above ``tau``; ``tau`` is the lowest value whose expected false hits over a window
    of recent lookups, sum(1 - P) / lookups, stay under ``target_error x safety``. The bound
    holds as far as the verifiers' probabilities are calibrated on this traffic: nothing here
    can check that, which is why the online policy with feedback is the default.
    """

    learns = False

    def __init__(
        self,
        target_error: float = 0.01,
        *,
        safety: float = 0.85,
        window: int = 2000,
        min_lookups: int = 50,
        floor: float = 0.5,
    ) -> None:
        if not 0 < target_error < 1:
            raise ValueError("target_error must be in (0, 1)")
        self.target_error, self.safety, self.floor, self.min_lookups = target_error, safety, floor, min_lookups
        self.name = f"verifier-only(target={target_error})"
        self._recent: deque[float] = deque(maxlen=window)
        self.tau = 1.01

    def decide(self, vector: np.ndarray, candidates: Sequence[Candidate]) -> Decision:
        scored = [c for c in candidates if c.pair_p is not None]
        if not scored:
            return Decision(False, None, 0.0, "no candidates scored by a lookup-time verifier")
        best = max(scored, key=lambda c: (c.pair_p, c.similarity))
        p = best.pair_p if best.pair_p is not None else 0.0
        self._recent.append(p)
        if len(self._recent) >= self.min_lookups and len(self._recent) % 25 == 0:
            self._retune()
        if p >= self.tau:
            return Decision(True, best.entry_id, p, f"verifier P(same) {p:.3f} >= {self.tau:.3f}", best.class_id)
        return Decision(False, None, p, f"verifier P(same) {p:.3f} < {self.tau:.3f}", best.class_id)

    def _retune(self) -> None:
        p = np.sort(np.array(self._recent))[::-1]
        expected_rate = np.cumsum(1 - p) / len(p)
        ok = np.nonzero((expected_rate <= self.target_error * self.safety) & (p >= self.floor))[0]
        self.tau = float(p[ok.max()]) if len(ok) else 1.01

    def learn(self, decision: Decision, first_check_correct: bool | float | None) -> None:
        pass

    def report(self, decision: Decision, correct: bool) -> None:
        pass

    def add_member(self, class_id: int, vector: np.ndarray) -> None:
        pass

    def state(self) -> dict:
        return {"tau": self.tau, "lookups_in_window": len(self._recent)}


POLICIES = ("online", "verifier-only", "fixed:<cosine>")


def make_policy(name: str, target_error: float = 0.01, seed: int = 0) -> Policy:
    """'online', 'verifier-only' or 'fixed:<cosine>' (calibrated thresholds are built from labelled pairs)."""
    if name == "online":
        return OnlineErrorBounded(target_error, seed=seed)
    if name == "verifier-only":
        return VerifierOnly(target_error)
    if name.startswith("fixed:"):
        try:
            return FixedThreshold(float(name.split(":", 1)[1]))
        except ValueError as exc:
            raise ValueError(f"bad policy {name!r}: {exc}") from None
    raise ValueError(f"unknown policy {name!r}: one of {', '.join(POLICIES)}")
