"""The routing benchmark protocol (``truecost bench router``).

Input: the routing JSON Lines format of shared/data (``prompt``, ``prompt_tokens``,
``models: {name: {quality, output_tokens?, cost_usd?}}``) and its declared schema (which
columns a router may read). Split with the seed; train on the first ``train_frac``, report on
the rest. Costs come from the price catalog (prompt tokens in, output tokens out, one token
when a file has no output length); a file's own ``cost_usd`` is reported beside them as a
check of the catalog. Splitting, features, fitting and calibration are
``truecost.routing.training``'s, the same code `truecost router calibrate` runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from truecost.audit.routing_prices import CatalogPricer
from truecost.cache.embedders import StaticEmbedder
from truecost.pricing.catalog import PriceCatalog
from truecost.routing import training
from truecost.routing.calibrate import (
    CALIBRATION_BLOCKS,
    Curve,
    apgr,
    choose,
    gain_per_dollar,
    point_at_quality,
    quality_range,
    tradeoff_curve,
)
from truecost.routing.data import (
    LabelledRow,
    RoutingSchema,
    attach_responses,
    load_rows,
    resolve_schema,
    schema_path_for,
)
from truecost.routing.scorer import TrainingDataError
from truecost.routing.training import STRATEGIES, Labelled

SCHEMAS = Path(__file__).with_name("routing_schemas.json")


def schema_for(data: Path, schema: str | Path | None = None) -> RoutingSchema:
    """``schema`` if given, else the data file's own, else this folder's declaration of the public
    data set (shared/data cannot hold one), else the routing format's alone."""
    if schema is not None or schema_path_for(data).is_file():
        return resolve_schema(data, schema)
    key = f"{data.parent.name}/{data.name}"
    known = json.loads(SCHEMAS.read_text(encoding="utf-8"))
    return RoutingSchema.parse(known[key], f"{SCHEMAS.name}[{key}]") if key in known else RoutingSchema()


class _Memo:
    """An embedder that remembers the vectors of one run (cross-validation re-embeds nothing)."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id = inner, inner.model_id
        self._seen: dict[str, np.ndarray] = {}

    def embed_batch(self, texts):
        todo = [t for t in dict.fromkeys(texts) if t not in self._seen]
        if todo:
            self._seen.update(zip(todo, self.inner.embed_batch(todo)))
        return np.array([self._seen[t] for t in texts])


@dataclass
class Setup:
    """One run's data: the split, its prices, the features chosen on the training half."""

    path: Path
    weak: str
    strong: str
    seed: int
    rows: list[LabelledRow]
    skipped: int
    schema: RoutingSchema
    train: Labelled
    test: Labelled
    categorical: tuple[str, ...]
    responses: str | None
    extra: dict[bool, np.ndarray]  # cascade? -> expected extra cost of each test request's strong call
    embedder: Any  # as given (latency is measured with it)
    memo: _Memo  # the same, remembering vectors across the run's fits


def prepare(
    path: Path,
    weak: str,
    strong: str,
    train_frac: float,
    seed: int,
    pricer: CatalogPricer,
    embedder,
    schema: RoutingSchema,
) -> Setup:
    rows, skipped, _names = load_rows(path, weak, strong, schema)
    if len(rows) < 20:
        raise TrainingDataError(f"{path}: only {len(rows)} rows have quality for both models; need at least 20")
    responses = attach_responses(rows, path, weak)
    train, test = training.split(rows, train_frac, seed)
    extra = {c: training.expected_extra_cost(pricer, weak, strong, train, test, c) for c in (False, True)}
    return Setup(
        path,
        weak,
        strong,
        seed,
        rows,
        skipped,
        schema,
        Labelled.priced(train, pricer, weak, strong),
        Labelled.priced(test, pricer, weak, strong),
        training.categorical_features(train),
        responses,
        extra,
        embedder,
        _Memo(embedder),
    )


def run(
    path: str | Path,
    weak: str,
    strong: str,
    strategy: str = "all",
    train_frac: float = 0.5,
    seed: int = 0,
    catalog: PriceCatalog | None = None,
    embedder=None,
    schema: str | Path | None = None,
) -> dict[str, Any]:
    if strategy != "all" and strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)} or all")
    path = Path(path)
    pricer = CatalogPricer(catalog)
    s = prepare(path, weak, strong, train_frac, seed, pricer, embedder or StaticEmbedder(), schema_for(path, schema))
    out = _header(s, train_frac)
    out.update(_baselines(s))
    for name in (k for k in STRATEGIES if strategy in ("all", k)):
        out["strategies"][name] = _evaluate(s, name)
    out.update(_best_strategy(s, out["strategies"], out["reference_logreg_static_embeddings"]))
    out["pricing"] = _pricing_check(s, pricer)
    return out


def _header(s: Setup, train_frac: float) -> dict[str, Any]:
    return {
        "data": str(s.path),
        "weak": s.weak,
        "strong": s.strong,
        "seed": s.seed,
        "train_frac": train_frac,
        "rows": len(s.rows),
        "skipped_rows_missing_quality": s.skipped,
        "train": len(s.train.rows),
        "test": len(s.test.rows),
        "weak_quality": float(s.test.q_weak.mean()),
        "strong_quality": float(s.test.q_strong.mean()),
        "categorical_features": list(s.categorical),
        "schema": {"source": s.schema.source, **s.schema.as_dict()},
        "weak_answers": s.responses,
        "strategies": {},
    }


def _metrics(curve: Curve, part: Labelled) -> dict:
    qs, always_strong_cost = part.q_strong.mean(), float(part.c_strong.mean())
    i = point_at_quality(curve, 0.95 * qs)
    return {
        "apgr": apgr(curve, part.q_weak.mean(), qs),
        "strong_share_at_95": float(curve.strong_share[i]) if i is not None else None,
        "quality_at_95": float(curve.quality[i]) if i is not None else None,
        "cost_per_1k_at_95": float(curve.cost[i] * 1000) if i is not None else None,
        "cost_saving_at_95": float(1 - curve.cost[i] / always_strong_cost) if i is not None else None,
    }


def _baselines(s: Setup) -> dict[str, Any]:
    """Random routing (20 draws), the oracle (by the true gap, and per dollar), the reference scorer."""
    test, rng = s.test, np.random.default_rng(s.seed)
    runs = [_metrics(test.curve(rng.random(len(test.rows))), test) for _ in range(20)]
    random_ = {
        k: (float(np.mean([m[k] for m in runs if m[k] is not None])) if any(m[k] is not None for m in runs) else None)
        for k in runs[0]
    }
    gap = test.q_strong - test.q_weak
    oracle = _metrics(test.curve(gap), test)
    oracle["cost_aware"] = _metrics(test.curve(gain_per_dollar(gap, s.extra[False])), test)
    return {
        "random": random_,
        "oracle": oracle,
        "embedder": s.memo.model_id,
        "reference_logreg_static_embeddings": _reference(s.train, s.test, StaticEmbedder()),
    }


def _evaluate(s: Setup, strategy: str) -> dict[str, Any]:
    cascade = strategy == "cascade"
    if cascade and s.responses is None:
        return {
            "available": False,
            "why": "no weak-model answers for this file (inline 'response' or raw/<name>_responses.csv)",
        }
    model = training.fit(strategy, s.train.rows, s.memo, s.categorical)
    scores = training.scores(strategy, model, s.test.rows, s.weak, s.strong)
    m = _metrics(s.test.curve(scores, cascade), s.test)
    # For a cost target: rank by predicted gain per expected extra dollar (the greedy
    # knapsack order), prices known before the call (prompt tokens, mean output lengths).
    m["cost_aware"] = {
        **_metrics(s.test.curve(gain_per_dollar(scores, s.extra[cascade]), cascade), s.test),
        "ranking": "predicted quality gain / expected extra cost of the strong call",
    }
    m["latency_ms_p50"] = _latency(strategy, model, s)
    if model is not None and model.w is not None:
        m["scorer"] = {"ridge_l2": model.l2, "embed_weight": model.embed_weight, "features": len(model.w) - 1}
    m["calibration"] = _calibration_check(s, strategy, model)
    return m


def _best_strategy(s: Setup, strategies: dict[str, dict], reference: dict) -> dict[str, Any]:
    """Chosen on the training half (out-of-fold APGR), never on the test half it is reported on."""
    usable = {k: v for k, v in strategies.items() if v.get("apgr") is not None}
    if not usable:
        return {}
    tr = s.train
    oof = {k: training.cross_val_scores(k, tr.rows, s.memo, s.categorical, s.weak, s.strong) for k in usable}
    cv = {k: apgr(tr.curve(v, k == "cascade"), tr.q_weak.mean(), tr.q_strong.mean()) for k, v in oof.items()}
    top = max(cv, key=cv.__getitem__)
    se = _bootstrap_se(oof[top], tr.q_weak, tr.q_strong, top == "cascade", s.seed)
    # The one-standard-error rule: the simplest strategy (rules, then trained, then the
    # cascade that pays a weak call every time) within one bootstrap SE of the best.
    best = next(k for k in STRATEGIES if k in cv and cv[k] >= cv[top] - se)
    out: dict[str, Any] = {
        "best_strategy_selected_by": {
            "train_out_of_fold_apgr": cv,
            "bootstrap_se_of_best": se,
            "rule": "simplest strategy within one SE of the best",
        },
        # Random routing scores 0.5 in expectation: a best that cannot clear it by one SE
        # out of fold has found no signal in these prompts, whatever the test half shows.
        "signal_out_of_fold": bool(cv[top] > 0.5 + se),
    }
    if not out["signal_out_of_fold"]:
        out["warning"] = (
            f"no strategy beats random routing out of fold on the training half (best "
            f"{cv[top]:.3f}, SE {se:.3f}): these prompts do not tell weak-good from strong-needed; "
            "route by budget rules, or cascade on the weak answer where you can"
        )
    b = usable[best]
    out.update(
        {
            "best_strategy": best,
            "apgr": b["apgr"],
            "strong_share_at_95": b["strong_share_at_95"],
            "cost_saving_at_95": b["cost_aware"]["cost_saving_at_95"],
            "cost_saving_at_95_share_ranked": b["cost_saving_at_95"],
        }
    )
    out["beats_reference"] = out["apgr"] > reference["apgr"]
    return out


def _bootstrap_se(
    scores: np.ndarray, qw: np.ndarray, qs: np.ndarray, cascade: bool, seed: int, rounds: int = 200
) -> float:
    """Bootstrap standard error of an APGR measured on ``len(scores)`` labelled rows."""
    rng = np.random.default_rng(seed)
    ones = np.ones(len(scores))
    values = []
    for _ in range(rounds):
        i = rng.integers(0, len(scores), len(scores))
        if qs[i].mean() != qw[i].mean():
            values.append(
                apgr(tradeoff_curve(scores[i], qw[i], qs[i], ones[i], ones[i], cascade), qw[i].mean(), qs[i].mean())
            )
    return float(np.std(values)) if len(values) > 1 else float("inf")


def _reference(train: Labelled, test: Labelled, emb) -> dict:
    """The issue's reference: logistic regression on static embeddings of the prompt (label: strong better)."""
    x_tr = emb.embed_batch([r.prompt for r in train.rows]).astype(np.float64)
    x_te = emb.embed_batch([r.prompt for r in test.rows]).astype(np.float64)
    y = np.array([1.0 if r.q_strong > r.q_weak else 0.0 for r in train.rows])
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    z = np.hstack([(x_tr - mu) / sd, np.ones((len(x_tr), 1))])
    w = np.zeros(z.shape[1])
    for _ in range(25):
        p = 1 / (1 + np.exp(-np.clip(z @ w, -40, 40)))
        w -= np.linalg.solve((z * (p * (1 - p))[:, None]).T @ z + np.eye(len(w)), z.T @ (p - y) + w)
    scores = np.hstack([(x_te - mu) / sd, np.ones((len(x_te), 1))]) @ w
    return _metrics(test.curve(scores), test)


def _latency(strategy: str, model, s: Setup) -> float:
    """Scorer p50 per request, embedding included (the embedder as given, unmemoised)."""
    memo = model.embedder if model is not None else None
    if memo is not None:
        model.embedder = s.embedder
    times = []
    try:
        for r in s.test.rows[:200]:
            t0 = time.perf_counter()
            training.scores(strategy, model, [r], s.weak, s.strong)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        if memo is not None:
            model.embedder = memo
    return float(np.percentile(times, 50))


def _calibration_check(s: Setup, strategy: str, model) -> list[dict]:
    """For each kind of target: the strong share chosen on out-of-fold train scores; what the test half got."""
    tr, te = s.train, s.test
    s_tr = training.cross_val_scores(strategy, tr.rows, s.memo, s.categorical, s.weak, s.strong)
    s_te = training.scores(strategy, model, te.rows, s.weak, s.strong)
    curve_tr = tr.curve(s_tr, strategy == "cascade", CALIBRATION_BLOCKS)
    checks = []
    for label, kw in (
        ("strong_share<=0.30", {"max_strong_share": 0.30}),
        ("quality>=0.95*strong", {"min_quality": 0.95 * tr.q_strong.mean()}),
    ):
        i = choose(curve_tr, **kw)
        if i is None:
            checks.append({"target": label, "met_on_train": False})
            continue
        share = float(curve_tr.strong_share[i])
        routed = training.route_top_share(s_te, share)
        if "max_strong_share" in kw:
            achieved, target = float(routed.mean()), 0.30
        else:
            quality = np.where(routed, te.q_strong, te.q_weak).mean()
            achieved, target = float(quality / te.q_strong.mean()), 0.95
        check = {
            "target": label,
            "strong_share_chosen_on_train": share,
            "achieved_on_test": achieved,
            "error_pp": round((achieved - target) * 100, 2),
        }
        if "min_quality" in kw:
            # What sampling alone does to a quality ratio on traffic the size of the test half.
            lo, _mid, hi = quality_range(s_tr, tr.q_weak, tr.q_strong, share, len(te.rows))
            check["expected_error_pp_90pct"] = [round((lo - target) * 100, 2), round((hi - target) * 100, 2)]
        checks.append(check)
    return checks


def _pricing_check(s: Setup, pricer: CatalogPricer) -> dict | None:
    fw = [r.file_cost_weak for r in s.rows if r.file_cost_weak is not None]
    fs = [r.file_cost_strong for r in s.rows if r.file_cost_strong is not None]
    if len(fw) < len(s.rows) or len(fs) < len(s.rows):  # a file without its own costs has nothing to check
        return None
    cw, cs = (training.row_costs(pricer, m, s.rows, w) for m, w in ((s.weak, "weak"), (s.strong, "strong")))
    return {
        s.weak: {
            "file_cost_usd": float(sum(fw)),
            "catalog_cost_usd": float(cw.sum()),
            "ratio_catalog_vs_file": float(cw.sum() / sum(fw)) if sum(fw) else None,
        },
        s.strong: {
            "file_cost_usd": float(sum(fs)),
            "catalog_cost_usd": float(cs.sum()),
            "ratio_catalog_vs_file": float(cs.sum() / sum(fs)) if sum(fs) else None,
        },
    }
