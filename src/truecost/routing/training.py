"""Training a router: the one place that splits labelled rows, chooses features, fits, scores and calibrates.

`truecost router train|calibrate`, the routing benchmark (bench/truecost_bench/routing.py) and,
through the artifacts these write (``routing.artifacts``), the gateway all use it. Rows and their
declared schema come from ``routing.data``. Prices come in through a ``Pricer``: the routing
room decides, it does not read the price catalog itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from truecost.routing.calibrate import CALIBRATION_BLOCKS, Curve, choose, gain_per_dollar, quality_range, tradeoff_curve
from truecost.routing.data import LabelledRow
from truecost.routing.decision import RouteRequest
from truecost.routing.rules import RulesRouter
from truecost.routing.scorer import Example, FeatureSpec, GapScorer

STRATEGIES = ("rules", "trained", "cascade")
MAX_CATEGORY_LEVELS = 200  # a metadata field with more distinct values is an id, not a category


class Pricer(Protocol):
    """Dollar costs of calls, from prices in force (``audit.routing_prices.CatalogPricer``)."""

    def call_costs(self, model: str, input_tokens: Sequence[int], output_tokens: Sequence[int]) -> np.ndarray: ...

    def strong_premiums(
        self, weak: str, strong: str, input_tokens: Sequence[int], out_weak: int, out_strong: int, cascade: bool
    ) -> np.ndarray: ...


# -- split and features ---------------------------------------------------------------------
def split_indices(n: int, train_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded shuffle of ``range(n)``: the first ``train_frac`` trains, the rest is held out."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    cut = int(len(idx) * train_frac)
    return idx[:cut], idx[cut:]


def split(rows: Sequence[LabelledRow], train_frac: float, seed: int) -> tuple[list[LabelledRow], list[LabelledRow]]:
    tr, te = split_indices(len(rows), train_frac, seed)
    return [rows[i] for i in tr], [rows[i] for i in te]


def categorical_features(rows: Sequence[LabelledRow]) -> tuple[str, ...]:
    """The declared metadata fields worth target-encoding on these rows: 2 to 200 distinct values."""
    return tuple(
        sorted(
            {
                k
                for r in rows
                for k in r.metadata
                if 2 <= len({str(x.metadata.get(k)) for x in rows}) <= MAX_CATEGORY_LEVELS
            }
        )
    )


def examples(rows: Sequence[LabelledRow]) -> list[Example]:
    return [Example(r.prompt, r.q_strong - r.q_weak, r.metadata, r.weak_answer) for r in rows]


# -- fit and score --------------------------------------------------------------------------
def fit(strategy: str, train: Sequence[LabelledRow], embedder, categorical: tuple[str, ...]) -> GapScorer | None:
    """The scorer a strategy trains, None for rules (which trains nothing)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    return None if strategy == "rules" else fit_scorer(strategy, train, embedder, categorical)


def fit_scorer(strategy: str, train: Sequence[LabelledRow], embedder, categorical: tuple[str, ...]) -> GapScorer:
    """Prompt features, embeddings and metadata for ``trained``; the weak answer's features for ``cascade``."""
    if strategy not in ("trained", "cascade"):
        raise ValueError(f"{strategy!r} trains no scorer; trained or cascade do")
    spec = (
        FeatureSpec(embed=True, categorical=categorical)
        if strategy == "trained"
        else FeatureSpec(embed=False, answer=True)
    )
    return GapScorer(spec, embedder if spec.embed else None).fit(examples(train))


def scores(strategy: str, model: GapScorer | None, rows: Sequence[LabelledRow], weak: str, strong: str) -> np.ndarray:
    if strategy == "rules":
        rr = RulesRouter(weak, strong)
        return np.array([rr.score(RouteRequest(r.prompt, r.prompt_tokens, r.metadata)) for r in rows])
    if model is None:
        raise ValueError(f"the {strategy} strategy scores with a fitted scorer")
    return model.score(examples(rows))


def percentile_ranks(x: np.ndarray) -> np.ndarray:
    """Scores as percentile ranks in [0, 1] (ties share a rank): comparable across models."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse] / max(len(x) - 1, 1)


def cross_val_scores(
    strategy: str,
    train: Sequence[LabelledRow],
    embedder,
    categorical,
    weak: str,
    strong: str,
    folds: int = 5,
    seed: int = 0,
    ranks: bool = True,
) -> np.ndarray:
    """Out-of-fold scores on the training rows, as within-fold percentile ranks.

    Each fold's model scores on its own scale; ranking within the fold makes the folds
    comparable, so one curve over all training rows is honest. ``ranks=False`` keeps each
    fold's predicted gaps, for an order that weighs them against dollars.
    """
    rank = percentile_ranks if ranks else np.asarray
    if strategy == "rules":
        return rank(scores(strategy, None, train, weak, strong))
    order = np.random.default_rng(seed).permutation(len(train))
    out = np.zeros(len(train))
    for k in range(folds):
        held = order[k::folds]
        model = fit(strategy, [train[i] for i in np.setdiff1d(order, held)], embedder, categorical)
        out[held] = rank(scores(strategy, model, [train[i] for i in held], weak, strong))
    return out


def route_top_share(scores: np.ndarray, share: float) -> np.ndarray:
    """Send the top ``share`` of the traffic's scores to the strong model (exactly, ties broken by order).

    In production the quantile comes from a window of recent requests' scores; here the
    held-out prompts are that traffic (their scores only, never their labels).
    """
    k = int(round(share * len(scores)))
    routed = np.zeros(len(scores), dtype=bool)
    routed[np.argsort(-scores, kind="stable")[:k]] = True
    return routed


def threshold_for_share(scores: np.ndarray, share: float) -> float:
    """The score above which ``share`` of these scores lie."""
    if 0 < share < 1:
        return float(np.quantile(scores, 1 - share))
    return float("inf") if share == 0 else float("-inf")


# -- prices -----------------------------------------------------------------------------------
def mean_output_tokens(rows: Sequence[LabelledRow]) -> tuple[int, int]:
    """(weak, strong) mean output lengths of labelled rows: the expected output of a new request."""
    return (int(round(np.mean([r.out_weak for r in rows]))), int(round(np.mean([r.out_strong for r in rows]))))


def row_costs(pricer: Pricer, model: str, rows: Sequence[LabelledRow], which: str) -> np.ndarray:
    """What each row's call to ``model`` cost: its prompt in, the ``which`` model's output out."""
    outputs = [r.out_weak if which == "weak" else r.out_strong for r in rows]
    return pricer.call_costs(model, [r.prompt_tokens for r in rows], outputs)


def expected_extra_cost(
    pricer: Pricer, weak: str, strong: str, train: Sequence[LabelledRow], rows: Sequence[LabelledRow], cascade: bool
) -> np.ndarray:
    """What sending each request to the strong model is expected to add, known before any call:
    its prompt tokens at both prices, output at the training set's mean output lengths."""
    ow, os_ = mean_output_tokens(train)
    return pricer.strong_premiums(weak, strong, [r.prompt_tokens for r in rows], ow, os_, cascade)


@dataclass(frozen=True)
class Labelled:
    """Rows with their qualities and call costs, ready to draw trade-off curves on."""

    rows: list[LabelledRow]
    q_weak: np.ndarray
    q_strong: np.ndarray
    c_weak: np.ndarray
    c_strong: np.ndarray

    @classmethod
    def priced(cls, rows: Sequence[LabelledRow], pricer: Pricer, weak: str, strong: str) -> "Labelled":
        return cls(
            list(rows),
            np.array([r.q_weak for r in rows]),
            np.array([r.q_strong for r in rows]),
            row_costs(pricer, weak, rows, "weak"),
            row_costs(pricer, strong, rows, "strong"),
        )

    def curve(self, scores: np.ndarray, cascade: bool = False, smooth: int = 0) -> Curve:
        return tradeoff_curve(scores, self.q_weak, self.q_strong, self.c_weak, self.c_strong, cascade, smooth)


# -- calibration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One calibration target: a strong-call share, a quality relative to the strong model, or a cost."""

    max_strong_share: float | None = None
    min_quality: float | None = None  # a fraction of the strong model's quality
    max_cost_per_1k: float | None = None  # USD per 1,000 requests

    def __post_init__(self) -> None:
        if sum(t is not None for t in (self.max_strong_share, self.min_quality, self.max_cost_per_1k)) != 1:
            raise ValueError("give exactly one target: a strong-call share, a quality or a cost")

    def default_order(self) -> str:
        """A share target ranks by the predicted gap; quality and cost targets by gain per dollar."""
        return "gap" if self.max_strong_share is not None else "gain-per-dollar"

    def on_curve(self, strong_quality: float) -> dict[str, float]:
        """The target in the terms of ``calibrate.choose``: quality in absolute terms, cost per request."""
        if self.max_strong_share is not None:
            return {"max_strong_share": self.max_strong_share}
        if self.min_quality is not None:
            return {"min_quality": self.min_quality * strong_quality}
        assert self.max_cost_per_1k is not None  # exactly one target, checked when made
        return {"max_cost": self.max_cost_per_1k / 1000}


class TargetNotMet(ValueError):
    """No threshold meets the target on the training part."""


@dataclass
class Calibration:
    kind: str
    order: str
    target: dict[str, float]
    strong_share: float
    threshold: float  # on the training rows' scores (in the calibrated order)
    spread: tuple[float, float, float]  # 5th, 50th, 95th percentile of quality / strong on the held-out size
    model: GapScorer | None
    train: Labelled
    test: Labelled
    curve_train: Curve  # out of fold, block-smoothed: where the share was chosen
    curve_test: Curve
    routed_test: np.ndarray  # which held-out requests the chosen share sends to the strong model

    def test_result(self) -> dict[str, float]:
        t, routed = self.test, self.routed_test
        extra = t.c_strong if self.kind == "cascade" else t.c_strong - t.c_weak
        cost = (t.c_weak + np.where(routed, extra, 0.0)).mean()
        return {
            "strong_share": float(routed.mean()),
            "quality_vs_strong": float(np.where(routed, t.q_strong, t.q_weak).mean() / t.q_strong.mean()),
            "cost_per_1k_usd": float(cost * 1000),
        }


def calibrate(
    train: Sequence[LabelledRow],
    test: Sequence[LabelledRow],
    weak: str,
    strong: str,
    kind: str,
    target: Target,
    pricer: Pricer,
    embedder=None,
    order: str = "auto",
) -> Calibration:
    """The strong-call share meeting ``target`` on out-of-fold training scores, the scorer fitted on
    every training row, its threshold, and what that share does on the held-out rows."""
    order = target.default_order() if order == "auto" else order
    cascade, categorical = kind == "cascade", categorical_features(train)
    tr, te = Labelled.priced(train, pricer, weak, strong), Labelled.priced(test, pricer, weak, strong)
    extra_tr = extra_te = None
    if order == "gain-per-dollar":  # gains must stay gains (not within-fold ranks) to be divided by dollars
        extra_tr = expected_extra_cost(pricer, weak, strong, train, train, cascade)
        extra_te = expected_extra_cost(pricer, weak, strong, train, test, cascade)
    oof = _in_order(
        cross_val_scores(kind, train, embedder, categorical, weak, strong, ranks=extra_tr is None), extra_tr
    )
    curve_tr = tr.curve(oof, cascade, CALIBRATION_BLOCKS)
    aim = target.on_curve(float(tr.q_strong.mean()))
    i = choose(curve_tr, **aim)
    if i is None:
        raise TargetNotMet("no threshold meets that target on the training part")
    share = float(curve_tr.strong_share[i])
    spread = quality_range(oof, tr.q_weak, tr.q_strong, share, len(test))
    model = fit(kind, train, embedder, categorical)
    s_te = _in_order(scores(kind, model, test, weak, strong), extra_te)
    s_tr = _in_order(scores(kind, model, train, weak, strong), extra_tr)
    return Calibration(
        kind,
        order,
        aim,
        share,
        threshold_for_share(s_tr, share),
        spread,
        model,
        tr,
        te,
        curve_tr,
        te.curve(s_te, cascade),
        route_top_share(s_te, share),
    )


def _in_order(s: np.ndarray, extra_cost: np.ndarray | None) -> np.ndarray:
    """Scores in the calibrated order: as they are, or per expected extra dollar of the strong call."""
    return s if extra_cost is None else gain_per_dollar(s, extra_cost)
