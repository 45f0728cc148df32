"""`truecost router train|calibrate`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import click
import numpy as np


@click.group("router")
def router() -> None:
    """Train and calibrate model routers on your own labelled traffic."""


def _split(data, weak, strong, train_frac, seed):
    from truecost.audit.routing_bench import attach_responses, load_rows

    rows, skipped, _ = load_rows(data, weak, strong)
    attach_responses(rows, Path(data), weak)
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    cut = int(len(idx) * train_frac)
    return [rows[i] for i in idx[:cut]], [rows[i] for i in idx[cut:]], skipped


@router.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--weak", required=True)
@click.option("--strong", required=True)
@click.option("--kind", type=click.Choice(["trained", "cascade"]), default="trained", show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="artifact path (.npz)")
def train(data, weak, strong, kind, out_path) -> None:
    """Train a scorer on every labelled row of DATA and save it as a versioned artifact."""
    from truecost.audit.routing_bench import _examples, _fit

    rows, _test, skipped = _split(data, weak, strong, 1.0, 0)
    categorical = tuple(sorted({k for r in rows for k in r.metadata
                                if 2 <= len({str(x.metadata.get(k)) for x in rows}) <= 200}))
    from truecost.cache.embedders import StaticEmbedder

    model = _fit(kind, rows, StaticEmbedder() if kind == "trained" else None, categorical)
    path = model.save(out_path if out_path.endswith(".npz") else out_path + ".npz", weak=weak, strong=strong,
                      kind=kind, data=str(data))
    click.echo(json.dumps({"artifact": str(path), "examples": len(_examples(rows)), "skipped_rows": skipped,
                           "kind": kind, "categorical_features": list(categorical)}))


@router.command("calibrate")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--weak", required=True)
@click.option("--strong", required=True)
@click.option("--kind", type=click.Choice(["rules", "trained", "cascade"]), default="trained", show_default=True)
@click.option("--max-strong-share", type=float, help="target: at most this share of strong calls")
@click.option("--min-quality", type=float, help="target: at least this fraction of the strong model's quality")
@click.option("--max-cost-per-1k", type=float, help="target: at most this many USD per 1,000 requests")
@click.option("--train-frac", type=float, default=0.5, show_default=True)
@click.option("--seed", type=int, default=0)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="save the calibrated scorer (with its threshold) for the gateway's `strategy: trained`")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="also write router_calibration.html (the curve, the chosen point, its spread) and .json here")
@click.option("--order", type=click.Choice(["auto", "gap", "gain-per-dollar"]), default="auto", show_default=True,
              help="rank requests by predicted quality gap, or by gap per expected extra dollar of the strong call "
                   "(cheaper for the same quality); auto: gain-per-dollar for cost and quality targets, gap for a "
                   "strong-share target")
def calibrate(data, weak, strong, kind, max_strong_share, min_quality, max_cost_per_1k, train_frac, seed,
              out_path, order, report_dir) -> None:
    """Pick the threshold meeting one target on the train part; report it on the held-out part, with the curve."""
    from truecost.audit.routing_bench import (_costs, _expected_extra_cost, _fit, _scores, cross_val_scores,
                                              mean_output_tokens, route_top_share)
    from truecost.cache.embedders import StaticEmbedder
    from truecost.pricing.catalog import PriceCatalog
    from truecost.routing.calibrate import (CALIBRATION_BLOCKS, choose, gain_per_dollar, quality_range,
                                            tradeoff_curve)

    targets = [t for t in (max_strong_share, min_quality, max_cost_per_1k) if t is not None]
    if len(targets) != 1:
        raise click.UsageError("give exactly one of --max-strong-share, --min-quality, --max-cost-per-1k")
    train, test, _ = _split(data, weak, strong, train_frac, seed)
    categorical = tuple(sorted({k for r in train for k in r.metadata
                                if 2 <= len({str(x.metadata.get(k)) for x in train}) <= 200}))
    emb = StaticEmbedder() if kind == "trained" else None
    catalog = PriceCatalog.bundled()
    cascade = kind == "cascade"

    def curve(rows, scores, smooth=0):
        q_w, q_s = np.array([r.q_weak for r in rows]), np.array([r.q_strong for r in rows])
        return tradeoff_curve(scores, q_w, q_s, _costs(catalog, weak, rows, "weak"),
                              _costs(catalog, strong, rows, "strong"), cascade, smooth), q_s.mean()

    if order == "auto":
        order = "gap" if max_strong_share is not None else "gain-per-dollar"
    per_dollar = order == "gain-per-dollar"
    if per_dollar:  # gains must stay gains (not within-fold ranks) to be divided by dollars
        extra_tr = _expected_extra_cost(catalog, weak, strong, train, train, cascade)
        extra_te = _expected_extra_cost(catalog, weak, strong, train, test, cascade)
        oof = gain_per_dollar(cross_val_scores(kind, train, emb, categorical, weak, strong, ranks=False), extra_tr)
    else:
        oof = cross_val_scores(kind, train, emb, categorical, weak, strong)
    curve_tr, qs_tr = curve(train, oof, CALIBRATION_BLOCKS)
    kw = ({"max_strong_share": max_strong_share} if max_strong_share is not None else
          {"min_quality": min_quality * qs_tr} if min_quality is not None else {"max_cost": max_cost_per_1k / 1000})
    i = choose(curve_tr, **kw)
    if i is None:
        raise click.ClickException("no threshold meets that target on the training part")
    share = float(curve_tr.strong_share[i])
    spread = quality_range(oof, np.array([r.q_weak for r in train]), np.array([r.q_strong for r in train]), share,
                           len(test))
    model = _fit(kind, train, emb, categorical) if kind != "rules" else None
    s_te = _scores(kind, model, test, weak, strong)
    s_tr = _scores(kind, model, train, weak, strong)
    if per_dollar:
        s_te, s_tr = gain_per_dollar(s_te, extra_te), gain_per_dollar(s_tr, extra_tr)
    routed = route_top_share(s_te, share)
    threshold = float(np.quantile(s_tr, 1 - share)) if 0 < share < 1 else (float("inf") if share == 0 else float("-inf"))
    q_w, q_s = np.array([r.q_weak for r in test]), np.array([r.q_strong for r in test])
    c_w, c_s = _costs(catalog, weak, test, "weak"), _costs(catalog, strong, test, "strong")
    cost = (c_w + np.where(routed, c_s if cascade else c_s - c_w, 0.0)).mean()
    curve_te, _ = curve(test, s_te)
    artifact = None
    if out_path:
        if model is None:
            raise click.UsageError("--out saves a trained scorer; the rules router needs no artifact")
        artifact = str(model.save(out_path if out_path.endswith(".npz") else out_path + ".npz", weak=weak,
                                  strong=strong, kind=kind, data=str(data), threshold=threshold, strong_share=share,
                                  target={k: v for k, v in kw.items()},
                                  order=order,
                                  mean_output_tokens=dict(zip(("weak", "strong"), mean_output_tokens(train)))))
    result = {
        "data": str(data), "weak": weak, "strong": strong,
        "kind": kind, "order": order, "strong_share": share, "threshold_on_train_scores": threshold, "artifact": artifact,
        "how_to_route": "send the top strong_share of recent requests' scores to the strong model",
        "target": {k: v for k, v in kw.items()},
        # Sampling alone moves a quality ratio this much on that many new requests.
        "quality_vs_strong_expected_90pct": {"requests": len(test), "low": spread[0], "median": spread[1],
                                             "high": spread[2]},
        "test": {"strong_share": float(routed.mean()),
                 "quality_vs_strong": float(np.where(routed, q_s, q_w).mean() / q_s.mean()),
                 "cost_per_1k_usd": float(cost * 1000)},
        "strong_quality_test": float(q_s.mean()), "strong_quality_train": float(qs_tr),
        "curve_test": _sampled(curve_te),
        "curve_train_out_of_fold": _sampled(curve_tr),
    }
    if report_dir:
        from truecost.audit.routing_audit import write_calibration_report

        result["report"] = [str(p) for p in write_calibration_report(result, report_dir)]
    click.echo(json.dumps(result, indent=2))


def _sampled(curve, points: int = 20) -> list[dict]:
    """The curve at ``points`` + 1 evenly spaced strong-call shares (0%, 5%, ... 100%)."""
    n = len(curve.strong_share) - 1
    idx = sorted({int(round(n * k / points)) for k in range(points + 1)})
    return [{"strong_share": float(curve.strong_share[j]), "quality": float(curve.quality[j]),
             "cost_per_1k_usd": float(curve.cost[j] * 1000)} for j in idx]
