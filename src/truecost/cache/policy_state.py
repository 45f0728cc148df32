"""What the online policy remembers, bounded: per-class records, its logistic model, neighbourhood helpers.

A gateway runs for weeks. Everything here has a ceiling, so memory and the cost of a refit stay flat
however long it runs (the policy's training samples are a sliding window, see ``policy.py``):

* ``ClassBook`` keeps, per equivalence class, its centroid (running sum), its size, its verification
  record and its served-hit record, for at most ``max_classes`` classes; past that the class touched
  least recently is forgotten whole. A forgotten class that still has live entries is handled as a new
  one: its centroid is its nearest member (``centroid_sims`` falls back to that member's similarity),
  its records start again. Classes a client reported wrong are forgotten only after every unreported
  one, so a report keeps its effect while anything else can give way (when every kept class was
  reported, the oldest report gives way to a new class: the ceiling holds).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Protocol, Sequence

import numpy as np


class _Scored(Protocol):
    entry_id: int
    similarity: float
    class_id: int
    pair_p: float | None


class ClassBook:
    """Per-class centroids, sizes, verification and served-hit records, least recently touched forgotten first."""

    def __init__(self, max_classes: int = 100_000) -> None:
        if max_classes < 1:
            raise ValueError("max_classes must be at least 1")
        self.max_classes = max_classes
        self.sums: dict[int, np.ndarray] = {}
        self.sizes: dict[int, int] = {}
        # class -> [verified correct, verified total, sum of the similarities of correct matches]
        self.stats: dict[int, list[float]] = {}
        # class -> [opportunities, errors, reported wrong, reported right]: its served hits and (once a hit of it
        # was reported wrong) its later verifications, and how many of them were wrong
        self.served: dict[int, list[float]] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()  # least recently touched first
        self._reported: OrderedDict[int, None] = OrderedDict()  # classes with a wrong report, kept longest
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self._recent) + len(self._reported)

    def touch(self, class_id: int) -> None:
        """Mark ``class_id`` as in use (every read or write that should keep it), forgetting the stalest if full."""
        book = self._reported if class_id in self._reported else self._recent
        if class_id in book:
            book.move_to_end(class_id)
            return
        self._recent[class_id] = None
        while len(self) > self.max_classes:  # never the class just touched: its records are about to be written
            victim_book = self._recent if len(self._recent) > 1 else self._reported
            victim, _ = victim_book.popitem(last=False)
            for table in (self.sums, self.sizes, self.stats, self.served):
                table.pop(victim, None)
            self.forgotten += 1

    def mark_reported(self, class_id: int) -> None:
        """A client reported a hit of this class wrong: keep its record past the unreported classes."""
        self.touch(class_id)
        if class_id in self._recent:
            del self._recent[class_id]
            self._reported[class_id] = None

    def add(self, class_id: int, vector: np.ndarray) -> None:
        self.touch(class_id)
        if class_id in self.sums:
            self.sums[class_id] += vector
        else:
            self.sums[class_id] = vector.astype(np.float32).copy()
        self.sizes[class_id] = self.sizes.get(class_id, 0) + 1

    def centroid_sims(self, classes: Sequence[int], vector: np.ndarray, candidates: Sequence[_Scored]) -> np.ndarray:
        """Cosine of ``vector`` to each class's centroid; for a class not kept, its nearest candidate's similarity."""
        nearest: dict[int, float] = {}
        for c in candidates:  # most similar first
            nearest.setdefault(c.class_id, c.similarity)
        out = np.array([nearest[c] for c in classes], dtype=np.float64)
        known = [i for i, c in enumerate(classes) if c in self.sums]
        if known:
            mat = np.stack([self.sums[classes[i]] for i in known])
            mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
            out[known] = mat @ vector
        return out


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


class Logistic:
    """L2-regularised logistic regression fitted by Newton steps (soft labels in [0, 1] allowed)."""

    def __init__(self, dims: int, l2: float = 1e-2) -> None:
        self.w = np.zeros(dims + 1)
        self.l2 = l2

    def fit(self, x: np.ndarray, y: np.ndarray, iters: int = 25) -> None:
        xb = np.hstack([x, np.ones((len(x), 1))])
        w = self.w.copy()
        eye = self.l2 * np.eye(len(w))
        for _ in range(iters):
            p = sigmoid(xb @ w)
            grad = xb.T @ (p - y) + self.l2 * w
            hess = (xb * (p * (1 - p))[:, None]).T @ xb + eye
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-6:
                break
        self.w = w

    def predict(self, x: np.ndarray) -> np.ndarray:
        return sigmoid(np.atleast_2d(x) @ self.w[:-1] + self.w[-1])


def pair_logit(p: float | None) -> float:
    """A verifier's P(same) on a log-odds scale / 5 (0 when no verifier scored the pair)."""
    if p is None:
        return 0.0
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p)) / 5.0


def best_member(candidates: Sequence[_Scored], class_id: int) -> int:
    """The member of ``class_id`` to serve: the verifiers' most likely match, else the most similar."""
    members = [c for c in candidates if c.class_id == class_id]
    if any(c.pair_p is not None for c in members):
        return max(members, key=lambda c: (c.pair_p or 0.0, c.similarity)).entry_id
    return members[0].entry_id


def pair_features(top: Sequence[_Scored], c1: int) -> list[float]:
    """The verifiers' view: best P(same) within the chosen class, its mean, and the margin over other classes."""
    mine = [c.pair_p for c in top if c.class_id == c1 and c.pair_p is not None]
    rest = [c.pair_p for c in top if c.class_id != c1 and c.pair_p is not None]
    if not mine:
        return [0.0, 0.0, 0.0]
    best = pair_logit(max(mine))
    return [best, float(np.mean([pair_logit(p) for p in mine])), best - (pair_logit(max(rest)) if rest else -2.0)]


def class_order(candidates: Sequence[_Scored]) -> list[tuple[int, int]]:
    """Distinct classes of the candidates with their best entry, most similar first."""
    seen: dict[int, int] = {}
    for c in candidates:
        seen.setdefault(c.class_id, c.entry_id)
    return list(seen.items())
