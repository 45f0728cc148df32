"""`truecost router train|calibrate`: thin commands over ``truecost.routing.training``."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from truecost.errors import TruecostError


@click.group("router")
def router() -> None:
    """Train and calibrate model routers on your own labelled traffic."""


def _clean_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, TruecostError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _load(data: str, weak: str, strong: str, schema: str | None):
    """DATA's labelled rows (declared columns only), with the weak model's answers where they are found."""
    from truecost.routing.data import attach_responses, load_rows, resolve_schema

    declared = resolve_schema(data, schema)
    rows, skipped, _ = load_rows(data, weak, strong, declared)
    attach_responses(rows, Path(data), weak)
    return rows, skipped, declared


_schema_option = click.option(
    "--schema",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help='JSON naming DATA\'s columns: {"features": [...], "labels": [...], "ignore": [...]} (default: '
    "DATA's <name>.schema.json beside it; without one, a column the routing format does not define is refused)",
)


@router.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--weak", required=True)
@click.option("--strong", required=True)
@click.option("--kind", type=click.Choice(["trained", "cascade"]), default="trained", show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="artifact path (.npz)")
@_schema_option
@_clean_errors
def train(data, weak, strong, kind, out_path, schema) -> None:
    """Train a scorer on every labelled row of DATA and save it as a versioned artifact."""
    from truecost.cache.embedders import StaticEmbedder
    from truecost.routing.artifacts import write_artifact
    from truecost.routing.training import categorical_features, fit_scorer, split

    rows, skipped, declared = _load(data, weak, strong, schema)
    rows, _ = split(rows, 1.0, 0)  # every row, in the seeded order calibrate's split would give
    categorical = categorical_features(rows)
    model = fit_scorer(kind, rows, StaticEmbedder() if kind == "trained" else None, categorical)
    path = write_artifact(
        model, out_path, weak=weak, strong=strong, kind=kind, data=str(data), schema=declared.as_dict()
    )
    click.echo(
        json.dumps(
            {
                "artifact": str(path),
                "examples": len(rows),
                "skipped_rows": skipped,
                "kind": kind,
                "categorical_features": list(categorical),
            }
        )
    )


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
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="save the calibrated scorer (with its threshold) for the gateway's `strategy: trained`",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="also write router_calibration.html (the curve, the chosen point, its spread) and .json here",
)
@click.option(
    "--order",
    type=click.Choice(["auto", "gap", "gain-per-dollar"]),
    default="auto",
    show_default=True,
    help="rank requests by predicted quality gap, or by gap per expected extra dollar of the strong call "
    "(cheaper for the same quality); auto: gain-per-dollar for cost and quality targets, gap for a "
    "strong-share target",
)
@_schema_option
@_clean_errors
def calibrate(
    data,
    weak,
    strong,
    kind,
    max_strong_share,
    min_quality,
    max_cost_per_1k,
    train_frac,
    seed,
    out_path,
    order,
    report_dir,
    schema,
) -> None:
    """Pick the threshold meeting one target on the train part; report it on the held-out part, with the curve."""
    from truecost.audit.routing_prices import CatalogPricer
    from truecost.cache.embedders import StaticEmbedder
    from truecost.routing import training

    try:
        target = training.Target(max_strong_share, min_quality, max_cost_per_1k)
    except ValueError:
        raise click.UsageError("give exactly one of --max-strong-share, --min-quality, --max-cost-per-1k") from None
    if out_path and kind == "rules":
        raise click.UsageError("--out saves a trained scorer; the rules router needs no artifact")
    rows, _skipped, declared = _load(data, weak, strong, schema)
    train_rows, test_rows = training.split(rows, train_frac, seed)
    cal = training.calibrate(
        train_rows,
        test_rows,
        weak,
        strong,
        kind,
        target,
        CatalogPricer(),
        StaticEmbedder() if kind == "trained" else None,
        order,
    )
    artifact = _save(cal, out_path, data, weak, strong, train_rows, declared) if out_path else None
    result = _result(cal, data, weak, strong, artifact)
    if report_dir:
        from truecost.audit.calibration_report import write_calibration_report

        result["report"] = [str(p) for p in write_calibration_report(result, report_dir)]
    click.echo(json.dumps(result, indent=2))


def _save(cal, out_path: str, data: str, weak: str, strong: str, train_rows, declared) -> str:
    """The calibrated scorer with everything the gateway reads: threshold, share, order, output lengths."""
    from truecost.routing.artifacts import write_artifact
    from truecost.routing.training import mean_output_tokens

    return str(
        write_artifact(
            cal.model,
            out_path,
            weak=weak,
            strong=strong,
            kind=cal.kind,
            data=str(data),
            threshold=cal.threshold,
            strong_share=cal.strong_share,
            target=dict(cal.target),
            order=cal.order,
            mean_output_tokens=dict(zip(("weak", "strong"), mean_output_tokens(train_rows))),
            schema=declared.as_dict(),
        )
    )


def _result(cal, data: str, weak: str, strong: str, artifact: str | None) -> dict:
    lo, mid, hi = cal.spread
    return {
        "data": str(data),
        "weak": weak,
        "strong": strong,
        "kind": cal.kind,
        "order": cal.order,
        "strong_share": cal.strong_share,
        "threshold_on_train_scores": cal.threshold,
        "artifact": artifact,
        "how_to_route": "send the top strong_share of recent requests' scores to the strong model",
        "target": dict(cal.target),
        # Sampling alone moves a quality ratio this much on that many new requests.
        "quality_vs_strong_expected_90pct": {"requests": len(cal.test.rows), "low": lo, "median": mid, "high": hi},
        "test": cal.test_result(),
        "strong_quality_test": float(cal.test.q_strong.mean()),
        "strong_quality_train": float(cal.train.q_strong.mean()),
        "curve_test": _sampled(cal.curve_test),
        "curve_train_out_of_fold": _sampled(cal.curve_train),
    }


def _sampled(curve, points: int = 20) -> list[dict]:
    """The curve at ``points`` + 1 evenly spaced strong-call shares (0%, 5%, ... 100%)."""
    n = len(curve.strong_share) - 1
    idx = sorted({int(round(n * k / points)) for k in range(points + 1)})
    return [
        {
            "strong_share": float(curve.strong_share[j]),
            "quality": float(curve.quality[j]),
            "cost_per_1k_usd": float(curve.cost[j] * 1000),
        }
        for j in idx
    ]
