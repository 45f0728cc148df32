"""`truecost router calibrate --report`: the chosen point on the cost-quality curve, and its spread."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from truecost.audit import charts
from truecost.audit.html import Figure, Section, figures, page, table, write_report


def _calibration_figures(r: dict[str, Any]) -> list[Figure]:
    test, band = r["test"], r["quality_vs_strong_expected_90pct"]
    return [
        Figure("strong_share", "strong-call share chosen", r["strong_share"], charts.pct),
        Figure("quality_vs_strong", "quality vs strong (held out)", test["quality_vs_strong"], charts.pct),
        Figure("cost_per_1k", "USD per 1,000 requests (held out)", test["cost_per_1k_usd"], lambda v: f"${v:.4f}"),
        Figure("band_low", f"90% range low, {band['requests']} requests", band["low"], charts.pct),
        Figure("band_high", "90% range high", band["high"], charts.pct),
    ]


def _quality_ratios(r: dict[str, Any]) -> dict[str, Sequence[float | None]]:
    """Quality / strong on the held-out curve's strong shares: held out, and train out of fold (interpolated)."""
    curve = r["curve_test"]
    shares = [p["strong_share"] for p in curve]
    train_q = r["strong_quality_train"]
    train = r["curve_train_out_of_fold"]
    return {
        "held-out half": [p["quality"] / r["strong_quality_test"] for p in curve],
        "train, out of fold": np.interp(
            shares, [p["strong_share"] for p in train], [p["quality"] / train_q for p in train]
        ).tolist(),
    }


def _target_aim(r: dict[str, Any]) -> str:
    """The calibration target in words."""
    target = r["target"]
    if "max_strong_share" in target:
        return f"strong share <= {target['max_strong_share']:.0%}"
    if "min_quality" in target:
        return f"quality >= {target['min_quality'] / r['strong_quality_train']:.0%} of strong"
    return f"cost <= ${target['max_cost'] * 1000:.4f} per 1,000"


def _curve_section(r: dict[str, Any], quality: dict[str, Sequence[float | None]]) -> Section:
    curve = r["curve_test"]
    strong_q = r["strong_quality_test"]
    floor = math.floor(min(v for series in quality.values() for v in series if v is not None) * 20) / 20
    return Section(
        "Cost-quality curve",
        [
            charts.lines(
                [p["strong_share"] for p in curve],
                quality,
                "Quality vs the strong model, by strong-call share",
                "share of requests sent to the strong model",
                "quality / strong",
                fmt_x=charts.pct,
                fmt_y=charts.pct,
                y_max=1.02,
                y_min=floor,
                marker=r["strong_share"],
            ),
            charts.lines(
                [p["cost_per_1k_usd"] for p in curve],
                {"held-out half": quality["held-out half"]},
                "Quality vs cost (held-out half)",
                "USD per 1,000 requests",
                "quality / strong",
                fmt_x=lambda v: f"${v:.3f}",
                fmt_y=charts.pct,
                y_max=1.02,
                y_min=floor,
                marker=r["test"]["cost_per_1k_usd"],
            ),
            table(
                ["strong share", "quality / strong", "USD per 1,000"],
                [
                    [charts.pct(p["strong_share"]), charts.pct(p["quality"] / strong_q), f"${p['cost_per_1k_usd']:.4f}"]
                    for p in curve
                ],
                numeric=(0, 1, 2),
            ),
        ],
    )


def render_calibration_html(r: dict[str, Any]) -> str:
    headline = f"Target: {_target_aim(r)}; ranked by {r['order']}"
    chosen = Section(
        "Chosen threshold",
        [
            f'<p class="rec">{escape(headline)}; '
            f"threshold {r['threshold_on_train_scores']:.6g} on the scorer's scale.</p>"
            '<p class="note">The 90% range is what sampling alone does to the quality ratio on '
            "that many new requests.</p>",
            figures(_calibration_figures(r)),
        ],
    )
    sections = [chosen, _curve_section(r, _quality_ratios(r))]
    return page(
        "truecost · router calibration", f"{r['data']} · {r['kind']} · {r['weak']} vs {r['strong']}", sections, data=r
    )


def write_calibration_report(r: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    return write_report(out_dir, "router_calibration", r, render_calibration_html(r))
