"""Trained scorers: predict how much better the strong model would do than the weak one.

A ``GapScorer`` is ridge regression on standardised features, trained on the quality gap
(strong - weak) of labelled examples; a higher score means "send it to the strong model".
Features: prompt text statistics and multiple-choice structure, optional prompt embeddings
(a fast static embedder, so that scoring stays under a millisecond), optional smoothed
target encodings of categorical metadata (a benchmark subject, a product feature), and for
cascades the weak answer's features. The ridge penalty, and with enough rows the embedding
block's weight against the named features, are chosen by leave-one-out error. Saved as
versioned artifacts by ``routing.artifacts``.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from truecost.errors import TruecostError
from truecost.routing.calibrate import gain_per_dollar
from truecost.routing.decision import RouteDecision, forced_decision
from truecost.routing.features import ANSWER_FEATURES, PROMPT_FEATURES, answer_matrix, prompt_matrix

# The embedding block's weight against the few named features: one shared ridge penalty lets
# hundreds of embedding dimensions drown a handful of informative features (or the reverse).
# Searched by leave-one-out only with enough rows for a second hyperparameter to be measured.
EMBED_WEIGHTS = (0.1, 0.3, 1.0)
MIN_ROWS_FOR_EMBED_WEIGHT = 200


class TrainingDataError(TruecostError, ValueError):
    """The labelled examples cannot train a scorer (empty, degenerate labels, missing values)."""


@dataclass
class Example:
    text: str
    gap: float  # quality(strong) - quality(weak)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    weak_answer: str | None = None


@dataclass
class FeatureSpec:
    embed: bool = True
    categorical: tuple[str, ...] = ()
    answer: bool = False
    smoothing: float = 10.0
    # The request's own question sits at the end of a prompt; a long shared preamble (a
    # system prompt, few-shot examples) is the same for every request and only costs time.
    embed_tail_chars: int | None = 1000


L2_GRID = tuple(float(10 ** (k / 2)) for k in range(0, 12))  # 1 ... 316,228


def loo_ridge_l2(z: np.ndarray, y: np.ndarray, grid: Sequence[float] = L2_GRID) -> tuple[float, dict[float, float]]:
    """The ridge penalty with the lowest leave-one-out squared error, and every penalty's error."""
    errors = {l2: float(e.mean()) for l2, e in _loo_squared_errors(z, y, grid).items()}
    return min(errors, key=errors.__getitem__), errors


def _loo_squared_errors(z: np.ndarray, y: np.ndarray, grid: Sequence[float]) -> dict[float, np.ndarray]:
    """Each row's leave-one-out squared error under each penalty on the grid, in closed form.

    ``z`` is standardised, ``y`` centred. With z = U S V', the fit for penalty l is
    U diag(s^2/(s^2+l)) U'y, the hat diagonal is sum_j U_ij^2 s_j^2/(s_j^2+l) (+1/n for the
    intercept), and the leave-one-out residual is r_i / (1 - h_ii): one SVD prices every
    penalty on the grid. Weak signal -> a large penalty (a cautious, nearly univariate
    scorer); strong signal -> a small one.
    """
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    uy = u.T @ y
    errors = {}
    for l2 in grid:
        shrink = s**2 / (s**2 + l2)
        h = np.minimum((u**2) @ shrink + 1.0 / len(y), 1 - 1e-9)
        errors[l2] = ((y - u @ (shrink * uy)) / (1 - h)) ** 2
    return errors


def choose_embed_weight(
    z: np.ndarray, y: np.ndarray, embed_cols: slice, weights: Sequence[float] = EMBED_WEIGHTS
) -> tuple[float, float]:
    """(weight, penalty): the embedding block's weight and the ridge penalty, by leave-one-out.

    Equal weight (1.0) stays unless another weight's leave-one-out error is lower by more
    than one standard error of the paired per-row difference: a second hyperparameter
    chosen on a small sample mostly fits its noise.
    """
    per_weight = {}
    for a in weights:
        za = z.copy()
        za[:, embed_cols] *= a
        by_l2 = _loo_squared_errors(za, y, L2_GRID)
        l2 = min(by_l2, key=lambda k: by_l2[k].mean())
        per_weight[a] = (l2, by_l2[l2])
    best = min(per_weight, key=lambda a: per_weight[a][1].mean())
    diff = per_weight[1.0][1] - per_weight[best][1]
    if best != 1.0 and diff.mean() > diff.std() / np.sqrt(len(diff)):
        return best, per_weight[best][0]
    return 1.0, per_weight[1.0][0]


class GapScorer:
    """Ridge regression on the quality gap; ``l2=None`` picks the penalty by leave-one-out error."""

    def __init__(self, spec: FeatureSpec, embedder=None, l2: float | None = None) -> None:
        self.spec, self.embedder, self.l2 = spec, embedder, l2
        self._choose_l2 = l2 is None  # chosen again on every fit
        self.mu: np.ndarray | None = None
        self.sd: np.ndarray | None = None
        self.w: np.ndarray | None = None
        self.prompt_features: tuple[str, ...] = PROMPT_FEATURES
        self.embed_weight = 1.0
        self.encodings: dict[str, dict[str, float]] = {}
        self.prior = 0.0
        self.meta: dict[str, Any] = {}

    # -- features -----------------------------------------------------------------------
    def _matrix(self, examples: Sequence[Example]) -> np.ndarray:
        texts = [e.text for e in examples]
        parts = [prompt_matrix(texts, self.prompt_features)]
        if self.spec.embed:
            if self.embedder is None:
                raise TrainingDataError("this scorer needs an embedder")
            tail = self.spec.embed_tail_chars
            parts.append(self.embedder.embed_batch([t[-tail:] if tail else t for t in texts]).astype(np.float64))
        for f in self.spec.categorical:
            enc = self.encodings.get(f, {})
            parts.append(np.array([[enc.get(str(e.metadata.get(f)), self.prior)] for e in examples]))
        if self.spec.answer:
            if any(e.weak_answer is None for e in examples):
                raise TrainingDataError("the answer-aware scorer needs the weak model's answer for every example")
            parts.append(answer_matrix(texts, [e.weak_answer for e in examples if e.weak_answer is not None]))
        return np.hstack(parts)

    # -- training -----------------------------------------------------------------------
    def fit(self, examples: Sequence[Example]) -> "GapScorer":
        if len(examples) < 10:
            raise TrainingDataError(f"need at least 10 labelled examples, got {len(examples)}")
        y = np.array([e.gap for e in examples], dtype=np.float64)
        if not np.isfinite(y).all():
            raise TrainingDataError("quality gaps must be finite numbers")
        if np.all(y == y[0]):
            raise TrainingDataError(
                f"degenerate labels: every example has the same quality gap ({y[0]}); "
                "nothing tells easy from hard requests"
            )
        self.prior = float(y.mean())
        for f in self.spec.categorical:
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for e, g in zip(examples, y):
                k = str(e.metadata.get(f))
                sums[k] = sums.get(k, 0.0) + g
                counts[k] = counts.get(k, 0) + 1
            a = self.spec.smoothing
            self.encodings[f] = {k: (sums[k] + a * self.prior) / (counts[k] + a) for k in sums}
        x = self._matrix(examples)
        self.mu, self.sd = mu, sd = x.mean(0), x.std(0) + 1e-6
        standardised = (x - mu) / sd
        self.embed_weight = 1.0
        if self._choose_l2:
            if self.spec.embed and len(y) >= MIN_ROWS_FOR_EMBED_WEIGHT:
                cols = slice(len(self.prompt_features), len(self.prompt_features) + self._embed_dims(x))
                self.embed_weight, self.l2 = choose_embed_weight(standardised, y - y.mean(), cols)
                # The weight lives in the scale: scoring (and a saved artifact) needs nothing new.
                sd[cols] /= self.embed_weight
                standardised[:, cols] *= self.embed_weight
            else:
                self.l2, _errors = loo_ridge_l2(standardised, y - y.mean())
        if self.l2 is None:
            raise TrainingDataError("no ridge penalty given or chosen")
        z = np.hstack([standardised, np.ones((len(x), 1))])
        reg = self.l2 * np.eye(z.shape[1])
        reg[-1, -1] = 0.0
        self.w = np.linalg.solve(z.T @ z + reg, z.T @ y)
        self.meta = {
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "examples": len(examples),
            "mean_gap": self.prior,
            "l2": self.l2,
            "embed_weight": self.embed_weight,
            "l2_chosen_by": "leave-one-out" if self._choose_l2 else "given",
        }
        return self

    def _embed_dims(self, x: np.ndarray) -> int:
        """Columns of ``x`` that are embedding dimensions (after the prompt features)."""
        return (
            x.shape[1]
            - len(self.prompt_features)
            - len(self.spec.categorical)
            - (len(ANSWER_FEATURES) if self.spec.answer else 0)
        )

    def score(self, examples: Sequence[Example]) -> np.ndarray:
        if self.w is None:
            raise TruecostError("scorer is not trained")
        x = self._matrix(examples)
        return np.hstack([(x - self.mu) / self.sd, np.ones((len(x), 1))]) @ self.w


class ShareHolder:
    """Hold a strong-call share on live traffic instead of a fixed threshold.

    A threshold calibrated on last month's traffic sends more requests to the strong model
    when this month's are harder (quality holds, spend grows); holding the share keeps spend
    where it was calibrated, and quality moves instead. The threshold is read from the last
    ``window`` scores: the smallest score among the top ``share`` of them. Until ``warmup``
    scores have been seen, the calibrated threshold stands in. Each gateway replica holds its
    own window.
    """

    def __init__(self, share: float, fallback: float, window: int = 1000, warmup: int = 100) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"a strong-call share is between 0 and 1, got {share}")
        self.share, self.fallback, self.window, self.warmup = share, fallback, window, max(1, min(warmup, window))
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []
        self._random = random.Random(0)

    def threshold(self) -> float:
        n = len(self._sorted)
        if n < self.warmup:
            return self.fallback
        k = int(round(self.share * n))
        return float("inf") if k == 0 else self._sorted[n - k]

    def strong(self, score: float) -> bool:
        """Whether ``score`` goes to the strong model; scores tied at the threshold share out the
        remaining room at random (a scorer with few features gives many requests one score)."""
        threshold = self.threshold()
        if score != threshold or len(self._sorted) < self.warmup:
            return score >= threshold
        n = len(self._sorted)
        above = n - bisect.bisect_right(self._sorted, threshold)
        tied = bisect.bisect_right(self._sorted, threshold) - bisect.bisect_left(self._sorted, threshold)
        room = int(round(self.share * n)) - above
        return self._random.random() < room / tied

    def add(self, score: float) -> None:
        self._recent.append(score)
        bisect.insort(self._sorted, score)
        if len(self._recent) > self.window:
            old = self._recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]


class ScoredRouter:
    """A scorer behind a threshold: score >= threshold -> strong first, else weak first.

    With ``extra_cost`` (request -> expected extra dollars of the strong call, from prices
    and the prompt's length) the score is the predicted gain per extra dollar, the order a
    cost target is calibrated in; its threshold must come from a calibration in that order.
    """

    def __init__(
        self,
        scorer: GapScorer,
        weak: str,
        strong: str,
        threshold: float,
        force_header: str = "x-truecost-route",
        extra_cost: Callable[[Any], float | None] | None = None,
        hold: ShareHolder | None = None,
    ) -> None:
        self.scorer, self.weak, self.strong, self.threshold = scorer, weak, strong, threshold
        self.force_header, self.extra_cost, self.hold = force_header, extra_cost, hold

    def route(self, request) -> RouteDecision:
        forced = forced_decision(request, self.force_header, self.weak, self.strong, "trained")
        if forced is not None:
            return forced
        s = float(self.scorer.score([Example(request.text, 0.0, request.metadata)])[0])
        what = f"predicted gap {s:.3f}"
        if self.extra_cost is not None:
            extra = self.extra_cost(request)
            if extra is None:  # a price went missing: never save money blind
                return RouteDecision(
                    (self.strong, self.weak),
                    f"{what}; the strong call's extra cost is unknown "
                    "(no price in force), so the strong model keeps it",
                    s,
                    "trained",
                )
            s = float(gain_per_dollar(np.array([s]), np.array([extra]))[0])
            what = f"{what}, per expected extra ${extra:.6f}: {s:.4g}"
        threshold, strong = self.threshold, s >= self.threshold
        if self.hold is not None:
            threshold, strong = self.hold.threshold(), self.hold.strong(s)
            self.hold.add(s)
            what = f"{what} (threshold holding a {self.hold.share:.0%} strong share)"
        if strong:
            return RouteDecision((self.strong, self.weak), f"{what} >= {threshold:.4g}", s, "trained")
        return RouteDecision((self.weak, self.strong), f"{what} < {threshold:.4g}", s, "trained")
