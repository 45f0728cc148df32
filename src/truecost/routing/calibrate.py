"""Pick the threshold that meets one target on labelled traffic, and show the whole curve.

Targets: a strong-call share <= X, quality >= Y x the strong model's, or cost <= $Z per
1,000 requests. Scores are "higher means send to the strong model" (for a cascade:
"higher means escalate").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


CALIBRATION_BLOCKS = 20  # the calibration curve is read at 5% steps of traffic, linear in between


@dataclass
class Curve:
    strong_share: np.ndarray  # at each point
    quality: np.ndarray  # mean quality
    cost: np.ndarray  # mean cost per request
    thresholds: np.ndarray  # score threshold at each point (route strong if score >= threshold)


def _block_means(x: np.ndarray, blocks: int) -> np.ndarray:
    """Each value replaced by the mean of its block (``blocks`` consecutive, near-equal runs)."""
    out = np.empty_like(x, dtype=np.float64)
    for part in np.array_split(np.arange(len(x)), min(blocks, len(x))):
        out[part] = x[part].mean()
    return out


def tradeoff_curve(
    scores: np.ndarray,
    q_weak: np.ndarray,
    q_strong: np.ndarray,
    c_weak: np.ndarray,
    c_strong: np.ndarray,
    cascade: bool = False,
    smooth: int = 0,
) -> Curve:
    """Send the top-k scores to the strong model, for k = 0..n. A cascade pays the weak call always.

    ``smooth=B`` (for calibration): the per-request gains, in score order, are averaged over
    B blocks of equal size. Inside a block the order of the scores carries little signal,
    and the raw curve shows how lucky that order happened to be on this sample; a threshold
    chosen on the lucky curve misses its target on new traffic.
    """
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    gains = (q_strong - q_weak)[order].astype(np.float64)
    extra = (c_strong if cascade else c_strong - c_weak)[order].astype(np.float64)
    if smooth:
        gains, extra = _block_means(gains, smooth), _block_means(extra, smooth)
    gain_q = np.concatenate([[0.0], np.cumsum(gains)])
    extra_c = np.cumsum(extra)
    cost = (c_weak.sum() + np.concatenate([[0.0], extra_c])) / n
    thresholds = np.concatenate([[np.inf], scores[order]])
    return Curve(np.arange(n + 1) / n, (q_weak.sum() + gain_q) / n, cost, thresholds)


def apgr(curve: Curve, q_weak_mean: float, q_strong_mean: float) -> float:
    """Area under the performance-gap-recovered curve over the strong share (RouteLLM's APGR)."""
    span = q_strong_mean - q_weak_mean
    if span == 0:
        return float("nan")
    return float(np.trapezoid((curve.quality - q_weak_mean) / span, curve.strong_share))


def point_at_quality(curve: Curve, target_quality: float) -> int | None:
    ok = np.nonzero(curve.quality >= target_quality - 1e-12)[0]
    return int(ok[0]) if len(ok) else None


def choose(
    curve: Curve,
    *,
    max_strong_share: float | None = None,
    min_quality: float | None = None,
    max_cost: float | None = None,
) -> int | None:
    """Index of the curve point meeting the target (cheapest or best, as the target implies)."""
    if max_strong_share is not None:  # use the whole allowance: the last point within it
        ok = np.nonzero(curve.strong_share <= max_strong_share + 1e-12)[0]
        return int(ok[-1]) if len(ok) else None
    if min_quality is not None:
        # Not the first point that touches the target: on a noisy calibration sample the
        # curve wanders around the target before it settles, and its first touch is an
        # optimistic draw. The point from which the curve stays at or above the target is
        # what a threshold on new traffic can keep.
        below = np.nonzero(curve.quality < min_quality - 1e-12)[0]
        if not len(below):
            return 0
        return int(below[-1]) + 1 if below[-1] + 1 < len(curve.quality) else None
    if max_cost is not None:
        ok = np.nonzero(curve.cost <= max_cost + 1e-15)[0]
        return int(ok[np.argmax(curve.quality[ok])]) if len(ok) else None
    raise ValueError("give one target: max_strong_share, min_quality or max_cost")


def quality_range(
    scores: np.ndarray, q_weak: np.ndarray, q_strong: np.ndarray, share: float, n: int, rounds: int = 300, seed: int = 0
) -> tuple[float, float, float]:
    """5th, 50th and 95th percentile of quality / strong quality on ``n`` new requests.

    The calibration sample is resampled ``rounds`` times at the size of the traffic the
    threshold will meet; each time its top ``share`` of scores goes to the strong model.
    How far a met target can land from its aim is mostly this sampling spread: a few hundred
    requests cannot pin a quality ratio to a percentage point, whatever the router.
    """
    rng = np.random.default_rng(seed)
    ratios = []
    k = int(round(share * n))
    for _ in range(rounds):
        i = rng.integers(0, len(scores), n)
        strong_mean = q_strong[i].mean()
        if strong_mean == 0:
            continue
        routed = np.zeros(n, dtype=bool)
        routed[np.argsort(-scores[i], kind="stable")[:k]] = True
        ratios.append(np.where(routed, q_strong[i], q_weak[i]).mean() / strong_mean)
    if not ratios:
        return (float("nan"),) * 3
    lo, mid, hi = np.percentile(ratios, [5, 50, 95])
    return float(lo), float(mid), float(hi)


def gain_per_dollar(scores: np.ndarray, extra_cost: np.ndarray) -> np.ndarray:
    """The greedy knapsack order for a cost target: predicted quality gain per expected extra dollar.

    Positive predicted gains, divided by what the strong call is expected to add, come first;
    requests with no predicted gain follow in their own order (their raw, non-positive scores).
    """
    s = np.asarray(scores, dtype=np.float64)
    extra = np.maximum(np.asarray(extra_cost, dtype=np.float64), 1e-12)
    return np.where(s > 0, s / np.where(s > 0, extra, 1.0), s)
