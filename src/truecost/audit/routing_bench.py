"""The routing benchmark protocol (``truecost bench router``).

Input: the routing JSON Lines format of shared/data (``prompt``, ``prompt_tokens``,
``models: {name: {quality, output_tokens?, cost_usd?}}``). Split with the seed; train on
the first ``train_frac``, report on the rest. Costs come from the price catalog (prompt
tokens in, output tokens out, one token when a file has no output length); a file's own
``cost_usd`` is reported beside them as a check of the catalog.
"""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from truecost.errors import UnknownModelError
from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.cost import price_tokens, strong_call_premium
from truecost.routing.calibrate import (CALIBRATION_BLOCKS, Curve, apgr, choose, gain_per_dollar, point_at_quality,
                                        quality_range, tradeoff_curve)
from truecost.routing.decision import RouteRequest
from truecost.routing.rules import RulesRouter
from truecost.routing.scorer import Example, FeatureSpec, GapScorer, TrainingDataError
from truecost.types import TokenUsage

_NOT_FEATURES = ("oracle", "gold", "answer", "label", "split", "id", "quality", "prompt", "turns")
STRATEGIES = ("rules", "trained", "cascade")


@dataclass
class Row:
    prompt: str
    prompt_tokens: int
    q_weak: float
    q_strong: float
    out_weak: int
    out_strong: int
    metadata: dict
    file_cost_weak: float | None
    file_cost_strong: float | None
    weak_answer: str | None = None


def _model_entry(models: dict, name: str) -> dict | None:
    for k, v in models.items():
        if k == name or k.lower() == name.lower():
            return v
    return None


def load_rows(path: str | Path, weak: str, strong: str) -> tuple[list[Row], int, list[str]]:
    rows, skipped, names = [], 0, set()
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                models = d["models"]
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path} line {n}: not a routing row ({exc})") from None
            names.update(models)
            w, s = _model_entry(models, weak), _model_entry(models, strong)
            if w is None or s is None or w.get("quality") is None or s.get("quality") is None:
                skipped += 1
                continue
            meta = {k: v for k, v in d.items() if isinstance(v, str) and not any(x in k.lower() for x in _NOT_FEATURES)}
            rows.append(Row(d["prompt"], int(d.get("prompt_tokens") or max(len(d["prompt"]) // 4, 1)),
                            float(w["quality"]), float(s["quality"]), int(w.get("output_tokens") or 1),
                            int(s.get("output_tokens") or 1), meta, w.get("cost_usd"), s.get("cost_usd"),
                            w.get("response") or w.get("output")))
    for name in (weak, strong):
        if not any(name.lower() == m.lower() for m in names):
            raise ValueError(f"model {name!r} is not in {path}; it has: {', '.join(sorted(names))}")
    return rows, skipped, sorted(names)


def attach_responses(rows: list[Row], data_path: Path, weak: str) -> str | None:
    """Find the weak model's answers in raw/<stem>_responses.csv beside the data file, if any."""
    csv_path = data_path.parent / "raw" / f"{data_path.stem}_responses.csv"
    if not csv_path.exists() or all(r.weak_answer is not None for r in rows):
        return None if not all(r.weak_answer is not None for r in rows) else "inline"
    csv.field_size_limit(1 << 30)
    with open(csv_path, encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        col = next((c for c in reader.fieldnames or [] if c.lower().endswith(f"{weak.lower()}_response")
                    or c.lower().split("/")[-1] == f"{weak.lower()}_response"), None)
        if col is None:
            return None
        answers = {r["prompt"].strip(): r[col] for r in reader}
    for r in rows:
        r.weak_answer = answers.get(r.prompt.strip(), r.weak_answer)
    return str(csv_path) if all(r.weak_answer is not None for r in rows) else None


class _Memo:
    """An embedder that remembers the vectors of one run (cross-validation re-embeds nothing)."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id, self._seen = inner, getattr(inner, "model_id", None), {}

    def embed_batch(self, texts):
        todo = [t for t in dict.fromkeys(texts) if t not in self._seen]
        if todo:
            self._seen.update(zip(todo, self.inner.embed_batch(todo)))
        return np.array([self._seen[t] for t in texts])


def _costs(catalog: PriceCatalog, model: str, rows: list[Row], which: str) -> np.ndarray:
    version = catalog.price_for(model, datetime.now(timezone.utc))
    if version is None:
        raise UnknownModelError(f"no price in force for {model!r}")
    out = []
    for r in rows:
        usage = TokenUsage(input=r.prompt_tokens, output=r.out_weak if which == "weak" else r.out_strong)
        out.append(float(price_tokens(version, usage).cost))
    return np.array(out)


def _examples(rows: list[Row]) -> list[Example]:
    return [Example(r.prompt, r.q_strong - r.q_weak, r.metadata, r.weak_answer) for r in rows]


def _metrics(curve: Curve, qw: float, qs: float, always_strong_cost: float) -> dict:
    i = point_at_quality(curve, 0.95 * qs)
    return {"apgr": apgr(curve, qw, qs),
            "strong_share_at_95": float(curve.strong_share[i]) if i is not None else None,
            "quality_at_95": float(curve.quality[i]) if i is not None else None,
            "cost_per_1k_at_95": float(curve.cost[i] * 1000) if i is not None else None,
            "cost_saving_at_95": float(1 - curve.cost[i] / always_strong_cost) if i is not None else None}


def _fit(strategy: str, train: list[Row], embedder, categorical: tuple[str, ...]):
    if strategy == "rules":
        return None
    spec = (FeatureSpec(embed=True, categorical=categorical) if strategy == "trained"
            else FeatureSpec(embed=False, answer=True))
    return GapScorer(spec, embedder if spec.embed else None).fit(_examples(train))


def _scores(strategy: str, model, rows: list[Row], weak: str, strong: str) -> np.ndarray:
    if strategy == "rules":
        rr = RulesRouter(weak, strong)
        return np.array([rr.score(RouteRequest(r.prompt, r.prompt_tokens, r.metadata)) for r in rows])
    return model.score(_examples(rows))


def run(path: str | Path, weak: str, strong: str, strategy: str = "all", train_frac: float = 0.5, seed: int = 0,
        catalog: PriceCatalog | None = None, embedder=None) -> dict[str, Any]:
    path = Path(path)
    catalog = catalog or PriceCatalog.bundled()
    rows, skipped, names = load_rows(path, weak, strong)
    if len(rows) < 20:
        raise TrainingDataError(f"{path}: only {len(rows)} rows have quality for both models; need at least 20")
    responses = attach_responses(rows, path, weak)
    c_weak_all, c_strong_all = _costs(catalog, weak, rows, "weak"), _costs(catalog, strong, rows, "strong")
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    cut = int(len(idx) * train_frac)
    tr, te = idx[:cut], idx[cut:]
    train, test = [rows[i] for i in tr], [rows[i] for i in te]
    qw, qs = np.array([r.q_weak for r in test]), np.array([r.q_strong for r in test])
    cw, cs = c_weak_all[te], c_strong_all[te]
    strong_cost = float(cs.mean())
    categorical = tuple(sorted({k for r in train for k in r.metadata
                                if 2 <= len({str(x.metadata.get(k)) for x in train}) <= 200}))
    wanted = [s for s in STRATEGIES if strategy in ("all", s)]
    if strategy != "all" and strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)} or all")
    out: dict[str, Any] = {"data": str(path), "weak": weak, "strong": strong, "seed": seed, "train_frac": train_frac,
                           "rows": len(rows), "skipped_rows_missing_quality": skipped, "train": len(train),
                           "test": len(test), "weak_quality": float(qw.mean()), "strong_quality": float(qs.mean()),
                           "categorical_features": list(categorical), "weak_answers": responses, "strategies": {}}
    rng = np.random.default_rng(seed)
    random_runs = [_metrics(tradeoff_curve(rng.random(len(test)), qw, qs, cw, cs), qw.mean(), qs.mean(), strong_cost)
                   for _ in range(20)]
    out["random"] = {k: (float(np.mean([m[k] for m in random_runs if m[k] is not None]))
                         if any(m[k] is not None for m in random_runs) else None) for k in random_runs[0]}
    gap = qs - qw
    out["oracle"] = _metrics(tradeoff_curve(gap, qw, qs, cw, cs), qw.mean(), qs.mean(), strong_cost)
    extra = {c: _expected_extra_cost(catalog, weak, strong, train, test, c) for c in (False, True)}
    out["oracle"]["cost_aware"] = _metrics(tradeoff_curve(gain_per_dollar(gap, extra[False]), qw, qs, cw, cs),
                                           qw.mean(), qs.mean(), strong_cost)
    from truecost.cache.embedders import StaticEmbedder

    static = StaticEmbedder()
    emb = _Memo(embedder or static)
    out["embedder"] = emb.model_id
    out["reference_logreg_static_embeddings"] = _reference(train, test, static, qw, qs, cw, cs, strong_cost)
    for s in wanted:
        cascade = s == "cascade"
        if cascade and responses is None:
            out["strategies"][s] = {"available": False, "why": "no weak-model answers for this file "
                                                               "(inline 'response' or raw/<name>_responses.csv)"}
            continue
        model = _fit(s, train, emb, categorical)
        scores = _scores(s, model, test, weak, strong)
        curve = tradeoff_curve(scores, qw, qs, cw, cs, cascade=cascade)
        m = _metrics(curve, qw.mean(), qs.mean(), strong_cost)
        # For a cost target: rank by predicted gain per expected extra dollar (the greedy
        # knapsack order), prices known before the call (prompt tokens, mean output lengths).
        m["cost_aware"] = {**_metrics(tradeoff_curve(gain_per_dollar(scores, extra[cascade]), qw, qs, cw, cs,
                                                     cascade=cascade), qw.mean(), qs.mean(), strong_cost),
                           "ranking": "predicted quality gain / expected extra cost of the strong call"}
        m["latency_ms_p50"] = _latency(s, model, test, weak, strong, embedder or static)
        if model is not None:
            m["scorer"] = {"ridge_l2": model.l2, "embed_weight": model.embed_weight, "features": len(model.w) - 1}
            m.update(_calibration_check(model, s, train, test, weak, strong, c_weak_all[tr], c_strong_all[tr], cw, cs,
                                        emb, categorical))
        else:
            m.update(_calibration_check(None, s, train, test, weak, strong, c_weak_all[tr], c_strong_all[tr], cw, cs))
        out["strategies"][s] = m
    usable = {k: v for k, v in out["strategies"].items() if v.get("apgr") is not None}
    if usable:
        # Chosen on the training half (out-of-fold APGR), never on the test half it is reported on.
        qw_tr, qs_tr = np.array([r.q_weak for r in train]), np.array([r.q_strong for r in train])
        oof = {k: cross_val_scores(k, train, emb, categorical, weak, strong) for k in usable}
        cv = {k: apgr(tradeoff_curve(v, qw_tr, qs_tr, c_weak_all[tr], c_strong_all[tr], k == "cascade"),
                      qw_tr.mean(), qs_tr.mean()) for k, v in oof.items()}
        top = max(cv, key=cv.get)
        se = _bootstrap_se(oof[top], qw_tr, qs_tr, top == "cascade", seed)
        # The one-standard-error rule: the simplest strategy (rules, then trained, then the
        # cascade that pays a weak call every time) within one bootstrap SE of the best.
        best = next(k for k in STRATEGIES if k in cv and cv[k] >= cv[top] - se)
        out["best_strategy_selected_by"] = {"train_out_of_fold_apgr": cv, "bootstrap_se_of_best": se,
                                            "rule": "simplest strategy within one SE of the best"}
        # Random routing scores 0.5 in expectation: a best that cannot clear it by one SE out of
        # fold has found no signal in these prompts, whatever the test half happens to show.
        out["signal_out_of_fold"] = bool(cv[top] > 0.5 + se)
        if not out["signal_out_of_fold"]:
            out["warning"] = (f"no strategy beats random routing out of fold on the training half (best "
                              f"{cv[top]:.3f}, SE {se:.3f}): these prompts do not tell weak-good from strong-needed; "
                              "route by budget rules, or cascade on the weak answer where you can")
        out["best_strategy"] = best
        out["apgr"] = usable[best]["apgr"]
        out["strong_share_at_95"] = usable[best]["strong_share_at_95"]
        out["cost_saving_at_95"] = usable[best]["cost_aware"]["cost_saving_at_95"]
        out["cost_saving_at_95_share_ranked"] = usable[best]["cost_saving_at_95"]
        out["beats_reference"] = out["apgr"] > out["reference_logreg_static_embeddings"]["apgr"]
    out["pricing"] = _pricing_check(rows, c_weak_all, c_strong_all, weak, strong)
    return out


def _expected_extra_cost(catalog: PriceCatalog, weak: str, strong: str, train: list[Row], rows: list[Row],
                         cascade: bool) -> np.ndarray:
    """What sending each request to the strong model is expected to add, known before any call:
    its prompt tokens at both prices, output at the training set's mean output lengths."""
    when = datetime.now(timezone.utc)
    vw, vs = catalog.price_for(weak, when), catalog.price_for(strong, when)
    for model, version in ((weak, vw), (strong, vs)):
        if version is None:
            raise UnknownModelError(f"no price in force for {model!r}")
    ow, os_ = mean_output_tokens(train)
    return np.array([float(strong_call_premium(vw, vs, r.prompt_tokens, ow, os_, cascade=cascade)) for r in rows])


def mean_output_tokens(rows: list[Row]) -> tuple[int, int]:
    """(weak, strong) mean output lengths of labelled rows: the expected output of a new request."""
    return tuple(int(round(np.mean([getattr(r, k) for r in rows]))) for k in ("out_weak", "out_strong"))


def _bootstrap_se(scores: np.ndarray, qw: np.ndarray, qs: np.ndarray, cascade: bool, seed: int,
                  rounds: int = 200) -> float:
    """Bootstrap standard error of an APGR measured on ``len(scores)`` labelled rows."""
    rng = np.random.default_rng(seed)
    ones = np.ones(len(scores))
    values = []
    for _ in range(rounds):
        i = rng.integers(0, len(scores), len(scores))
        if qs[i].mean() != qw[i].mean():
            values.append(apgr(tradeoff_curve(scores[i], qw[i], qs[i], ones[i], ones[i], cascade), qw[i].mean(),
                               qs[i].mean()))
    return float(np.std(values)) if len(values) > 1 else float("inf")


def _reference(train, test, emb, qw, qs, cw, cs, strong_cost) -> dict:
    """The issue's reference: logistic regression on static embeddings of the prompt (label: strong better)."""
    x_tr = emb.embed_batch([r.prompt for r in train]).astype(np.float64)
    x_te = emb.embed_batch([r.prompt for r in test]).astype(np.float64)
    y = np.array([1.0 if r.q_strong > r.q_weak else 0.0 for r in train])
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    z = np.hstack([(x_tr - mu) / sd, np.ones((len(x_tr), 1))])
    w = np.zeros(z.shape[1])
    for _ in range(25):
        p = 1 / (1 + np.exp(-np.clip(z @ w, -40, 40)))
        w -= np.linalg.solve((z * (p * (1 - p))[:, None]).T @ z + np.eye(len(w)), z.T @ (p - y) + w)
    scores = np.hstack([(x_te - mu) / sd, np.ones((len(x_te), 1))]) @ w
    return _metrics(tradeoff_curve(scores, qw, qs, cw, cs), qw.mean(), qs.mean(), strong_cost)


def _latency(strategy: str, model, test: list[Row], weak: str, strong: str, embedder=None) -> float:
    """Scorer p50 per request, embedding included (a fresh, unmemoised embedder)."""
    memo = getattr(model, "embedder", None)
    if memo is not None:
        model.embedder = embedder
    times = []
    try:
        for r in test[:200]:
            t0 = time.perf_counter()
            _scores(strategy, model, [r], weak, strong)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        if memo is not None:
            model.embedder = memo
    return float(np.percentile(times, 50))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Scores as percentile ranks in [0, 1] (ties share a rank): comparable across models."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse] / max(len(x) - 1, 1)


def cross_val_scores(strategy: str, train: list[Row], embedder, categorical, weak, strong, folds: int = 5,
                     seed: int = 0, ranks: bool = True) -> np.ndarray:
    """Out-of-fold scores on the training rows, as within-fold percentile ranks.

    Each fold's model scores on its own scale; ranking within the fold makes the folds
    comparable, so one curve over all training rows is honest. ``ranks=False`` keeps each
    fold's predicted gaps, for an order that weighs them against dollars.
    """
    rank = _ranks if ranks else np.asarray
    if strategy == "rules":
        return rank(_scores(strategy, None, train, weak, strong))
    order = np.random.default_rng(seed).permutation(len(train))
    out = np.zeros(len(train))
    for k in range(folds):
        held = order[k::folds]
        fit_rows = [train[i] for i in np.setdiff1d(order, held)]
        model = _fit(strategy, fit_rows, embedder, categorical)
        out[held] = rank(_scores(strategy, model, [train[i] for i in held], weak, strong))
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


def _calibration_check(model, strategy, train, test, weak, strong, cw_tr, cs_tr, cw, cs, embedder=None,
                       categorical=()) -> dict:
    """For each kind of target: the strong share chosen on out-of-fold train scores; what the test half got."""
    cascade = strategy == "cascade"
    s_tr = cross_val_scores(strategy, train, embedder, categorical, weak, strong)
    s_te = _scores(strategy, model, test, weak, strong)
    qw_tr, qs_tr = np.array([r.q_weak for r in train]), np.array([r.q_strong for r in train])
    qw_te, qs_te = np.array([r.q_weak for r in test]), np.array([r.q_strong for r in test])
    curve_tr = tradeoff_curve(s_tr, qw_tr, qs_tr, cw_tr, cs_tr, cascade, CALIBRATION_BLOCKS)
    curve_te = tradeoff_curve(s_te, qw_te, qs_te, cw, cs, cascade)
    checks = []
    for label, kw in (("strong_share<=0.30", {"max_strong_share": 0.30}),
                      ("quality>=0.95*strong", {"min_quality": 0.95 * qs_tr.mean()})):
        i = choose(curve_tr, **kw)
        if i is None:
            checks.append({"target": label, "met_on_train": False})
            continue
        share = float(curve_tr.strong_share[i])
        routed = route_top_share(s_te, share)
        if "max_strong_share" in kw:
            achieved, target = float(routed.mean()), 0.30
        else:
            quality = np.where(routed, qs_te, qw_te).mean()
            achieved, target = float(quality / qs_te.mean()), 0.95
        check = {"target": label, "strong_share_chosen_on_train": share, "achieved_on_test": achieved,
                 "error_pp": round((achieved - target) * 100, 2)}
        if "min_quality" in kw:
            # What sampling alone does to a quality ratio on traffic the size of the test half.
            lo, _mid, hi = quality_range(s_tr, qw_tr, qs_tr, share, len(test))
            check["expected_error_pp_90pct"] = [round((lo - target) * 100, 2), round((hi - target) * 100, 2)]
        checks.append(check)
    return {"calibration": checks}


def _pricing_check(rows: list[Row], cw: np.ndarray, cs: np.ndarray, weak: str, strong: str) -> dict | None:
    fw = [r.file_cost_weak for r in rows]
    fs = [r.file_cost_strong for r in rows]
    if any(x is None for x in fw + fs):
        return None
    return {weak: {"file_cost_usd": float(sum(fw)), "catalog_cost_usd": float(cw.sum()),
                   "ratio_catalog_vs_file": float(cw.sum() / sum(fw)) if sum(fw) else None},
            strong: {"file_cost_usd": float(sum(fs)), "catalog_cost_usd": float(cs.sum()),
                     "ratio_catalog_vs_file": float(cs.sum() / sum(fs)) if sum(fs) else None}}
