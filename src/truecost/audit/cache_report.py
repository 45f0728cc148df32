"""`truecost audit cache`: the figures, the projected savings, the JSON and the HTML report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from truecost.audit import charts
from truecost.audit.cache_feasibility import (
    CURVE,
    Neighbours,
    borderline_pairs,
    figures_at,
    nearest_earlier,
    recommend,
    size_distribution,
    top_clusters,
    write_pairs_csv,
)
from truecost.audit.html import Figure, Section, figures, page, table, write_report
from truecost.audit.sources import QueryRow, ReadStats
from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.cost import price_quantity, price_tokens
from truecost.types import TokenUsage

DAYS_PER_MONTH = 30


@dataclass(slots=True)
class SavingsInputs:
    model: str = "gpt-4o-mini"
    requests_per_day: int = 10_000
    input_tokens: int | None = None  # default: the log's mean query length in tokens (chars / 4)
    output_tokens: int = 300
    embedding_model: str | None = None  # None: a local embedder, no per-call price


def estimate_tokens(rows: Sequence[QueryRow]) -> int:
    return max(1, round(sum(len(r.text) for r in rows) / max(1, len(rows)) / 4))


def projected_savings(catalog: PriceCatalog, s: SavingsInputs, hit_rate: float, query_tokens: int) -> dict[str, Any]:
    input_tokens = s.input_tokens if s.input_tokens is not None else query_tokens
    version, reason = catalog.price_or_none(s.model, kind="chat")
    per_request = (
        price_tokens(version, TokenUsage(input=input_tokens, output=s.output_tokens)).cost if version else None
    )
    lookup: Decimal | None = Decimal(0)
    lookup_reason: str | None = "local embedder: no per-call price"
    if s.embedding_model:
        ev, lookup_reason = catalog.price_or_none(s.embedding_model, kind="embedding")
        priced = price_quantity(ev, "input", query_tokens) if ev else None
        lookup = priced.cost if priced is not None and priced.cost is not None else None
    monthly = s.requests_per_day * DAYS_PER_MONTH
    avoided = None if per_request is None else per_request * Decimal(monthly) * Decimal(str(round(hit_rate, 6)))
    lookups = None if lookup is None else lookup * monthly
    net = None if avoided is None or lookups is None else avoided - lookups
    cents = Decimal("0.01")
    avoided, lookups, net = (None if v is None else v.quantize(cents) for v in (avoided, lookups, net))
    return {
        "model": s.model,
        "requests_per_day": s.requests_per_day,
        "input_tokens": input_tokens,
        "output_tokens": s.output_tokens,
        "cost_per_request_usd": per_request,
        "monthly_requests": monthly,
        "monthly_avoided_usd": avoided,
        "monthly_lookup_usd": lookups,
        "monthly_net_savings_usd": net,
        "unknown_price": reason if version is None else None,
        "lookup_pricing": lookup_reason if s.embedding_model is None or lookup is None else s.embedding_model,
    }


def run_cache_audit(
    rows: Sequence[QueryRow],
    read_stats: ReadStats,
    embed: Callable[[list[str]], np.ndarray],
    embedder_id: str,
    thresholds: Sequence[float] = (0.85,),
    savings: SavingsInputs = SavingsInputs(),
    catalog: PriceCatalog | None = None,
    progress=None,
    out_dir: str | Path | None = None,
    source: str = "",
) -> dict[str, Any]:
    catalog = catalog or PriceCatalog.bundled()
    t0 = time.perf_counter()
    nb: Neighbours = nearest_earlier(rows, embed, progress=progress)
    embed_s = time.perf_counter() - t0
    labels = [r.label for r in rows] if all(r.label is not None for r in rows) else None
    primary = thresholds[0]
    at = [figures_at(nb, t, labels).as_dict() for t in thresholds]
    curve = [figures_at(nb, t, labels).as_dict() for t in sorted(set(CURVE) | set(thresholds))]
    head = at[0]
    result: dict[str, Any] = {
        "kind": "cache_audit",
        "source": source,
        "queries": len(rows),
        "input": read_stats.as_dict(),
        "embedder": embedder_id,
        "labelled": labels is not None,
        "primary_threshold": primary,
        "thresholds": at,
        "curve": curve,
        "size_distribution": size_distribution(nb, primary),
        "top_clusters": top_clusters(rows, nb, primary),
        "savings": projected_savings(catalog, savings, head["hit_rate"], estimate_tokens(rows)),
        "recommendation": recommend(head["clustered_share"], primary, head["false_hit_rate"]),
        "seconds": {"embed_and_search": round(embed_s, 3)},
    }
    if labels is None and out_dir is not None:
        pairs = borderline_pairs(rows, nb, primary)
        path = Path(out_dir) / "borderline_pairs.csv"
        write_pairs_csv(pairs, path)
        result["borderline_pairs"] = {"file": str(path), "count": len(pairs)}
    result["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    return result


def _headline_figures(r: dict[str, Any]) -> list[Figure]:
    head = r["thresholds"][0]
    s = r["savings"]
    return [
        Figure("queries", "queries", r["queries"], lambda v: f"{v:,}"),
        Figure(
            "clustered_share",
            f"volume in clusters (cos >= {r['primary_threshold']:g})",
            head["clustered_share"],
            charts.pct,
        ),
        Figure("hit_rate", "projected hit rate", head["hit_rate"], charts.pct),
        Figure("false_hit_rate", "false-hit rate (labelled)", head["false_hit_rate"], charts.pct),
        Figure(
            "monthly_net_savings_usd",
            "projected net savings / month",
            s["monthly_net_savings_usd"],
            lambda v: charts.usd(float(v)),
        ),
    ]


def _verdict_section(r: dict[str, Any]) -> Section:
    rec = r["recommendation"]
    return Section(
        "Verdict",
        [f'<p class="rec">{rec["recommendation"]}</p><p class="note">{rec["rule"]}</p>', figures(_headline_figures(r))],
    )


def _threshold_section(r: dict[str, Any]) -> Section:
    curve = r["curve"]
    series: dict[str, Sequence[float | None]] = {
        "projected hit rate": [c["hit_rate"] for c in curve],
        "volume in clusters": [c["clustered_share"] for c in curve],
    }
    if r["labelled"]:
        series["false-hit rate"] = [c["false_hit_rate"] for c in curve]
    return Section(
        "Hit rate vs threshold",
        [
            charts.lines(
                [c["threshold"] for c in curve],
                series,
                "Projected hit rate and false hits by cosine threshold",
                "cosine threshold",
                "share of queries",
                fmt_x=lambda v: f"{v:.2f}",
                fmt_y=charts.pct,
                y_max=1.0,
                marker=r["primary_threshold"],
            ),
            table(
                ["threshold", "hit rate", "in clusters", "clusters", "false hits"],
                [
                    [
                        t["threshold"],
                        charts.pct(t["hit_rate"]),
                        charts.pct(t["clustered_share"]),
                        f"{t['clusters']:,}",
                        "n/a" if t["false_hit_rate"] is None else charts.pct(t["false_hit_rate"]),
                    ]
                    for t in r["thresholds"]
                ],
                numeric=(1, 2, 3, 4),
            ),
        ],
    )


def _cluster_sections(r: dict[str, Any]) -> list[Section]:
    dist = r["size_distribution"]
    sizes = Section(
        "Cluster sizes",
        [
            charts.histogram(
                [d["size"] for d in dist],
                [d["clusters"] for d in dist],
                f"Clusters by size at cos >= {r['primary_threshold']:g}",
            ),
            table(
                ["size", "clusters", "queries", "share of volume"],
                [[d["size"], d["clusters"], d["queries"], charts.pct(d["volume_share"])] for d in dist],
                numeric=(1, 2, 3),
            ),
        ],
    )
    top = Section(
        "Top clusters",
        [
            table(
                ["size", "share", "label (purity)", "examples"],
                [
                    [
                        c["size"],
                        charts.pct(c["volume_share"]),
                        f"{c.get('majority_label', '')} ({charts.pct(c['purity'])})" if "purity" in c else "",
                        " | ".join(c["examples"]),
                    ]
                    for c in r["top_clusters"]
                ],
                numeric=(0, 1),
            )
        ],
    )
    return [sizes, top]


def _savings_section(s: dict[str, Any]) -> Section:
    return Section(
        "Projected savings",
        [
            table(
                ["item", "value"],
                [
                    ["model", s["model"]],
                    ["requests per day", f"{s['requests_per_day']:,}"],
                    ["tokens per request (in / out)", f"{s['input_tokens']} / {s['output_tokens']}"],
                    [
                        "cost per request",
                        s["cost_per_request_usd"]
                        if s["cost_per_request_usd"] is not None
                        else f"unknown: {s['unknown_price']}",
                    ],
                    ["avoided per month", s["monthly_avoided_usd"]],
                    ["lookup cost per month", s["monthly_lookup_usd"]],
                    ["net savings per month", s["monthly_net_savings_usd"]],
                    ["lookup pricing", s["lookup_pricing"]],
                ],
            )
        ],
    )


def _input_section(i: dict[str, Any]) -> Section:
    return Section(
        "Input",
        [
            table(
                ["read", "kept", "skipped", "altered"],
                [[i["rows"], i["kept"], i["skipped"] or "none", i["notes"] or "none"]],
            )
        ],
    )


def render_cache_html(r: dict[str, Any]) -> str:
    sections = [
        _verdict_section(r),
        _threshold_section(r),
        *_cluster_sections(r),
        _savings_section(r["savings"]),
        _input_section(r["input"]),
    ]
    return page(
        "truecost · cache feasibility",
        f"{r['source']} · embedder {r['embedder']} · {r['queries']:,} queries",
        sections,
        data=r,
    )


def write_cache_report(r: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    return write_report(out_dir, "cache_audit", r, render_cache_html(r))
