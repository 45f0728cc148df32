"""`truecost whatif SCENARIO.yaml`: the monthly bill of a pipeline at a given volume, by step,
and which knob moves it most.

Every unit price comes from the catalog (the scenario names models, network paths,
storage tiers and instances); a name the catalog does not know is an error naming it.
The model is deliberately plain arithmetic so a reader can redo any line by hand.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import yaml

from truecost.audit import charts
from truecost.audit.html import Figure, Section, figures, page, table, write_report
from truecost.errors import TruecostError
from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.cost import price_quantity, price_tokens
from truecost.types import TokenUsage

GB = Decimal(10**9)
SECONDS_PER_DAY = 86_400


class ScenarioError(TruecostError):
    """The scenario file is malformed or names something the catalog does not know."""


def _get(d: dict, path: str, default: Any = None) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _set(d: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    cur = d
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def load_scenario(path: str | Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: cannot read the scenario ({exc})") from None
    if not isinstance(doc, dict) or "requests_per_day" not in doc or "generation" not in doc:
        raise ScenarioError(f"{path}: a scenario needs at least 'requests_per_day' and 'generation'")
    return doc


@dataclass(slots=True)
class _Pricer:
    catalog: PriceCatalog

    def tokens(self, model: str, input_tokens: float, output_tokens: float, cached_share: float = 0.0) -> Decimal:
        version, reason = self.catalog.price_or_none(model)
        if version is None:
            raise ScenarioError(f"no price for model {model!r}: {reason}")
        cached = int(round(input_tokens * cached_share))
        priced = price_tokens(
            version,
            TokenUsage(input=int(round(input_tokens)) - cached, cached_input=cached, output=int(round(output_tokens))),
        )
        if priced.cost is None:
            raise ScenarioError(f"{model}: {priced.unknown_reason}")
        return priced.cost

    def quantity(self, name: str, component: str, qty: float | Decimal, free: Decimal = Decimal(0)) -> Decimal:
        version, reason = self.catalog.price_or_none(name)
        if version is None:
            raise ScenarioError(f"no price for {name!r}: {reason}")
        priced = price_quantity(version, component, Decimal(str(qty)), free=free)
        if priced.cost is None:
            raise ScenarioError(f"{name}: {priced.unknown_reason}")
        return priced.cost

    def free(self, name: str) -> Decimal:
        version, _ = self.catalog.price_or_none(name)
        return version.free_per_month or Decimal(0) if version else Decimal(0)


def monthly_stack(sc: dict[str, Any], catalog: PriceCatalog) -> dict[str, Decimal]:
    """Monthly cost by step for one scenario."""
    p = _Pricer(catalog)
    days = Decimal(str(sc.get("days_per_month", 30)))
    req = Decimal(str(sc["requests_per_day"])) * days
    hit = float(_get(sc, "cache.hit_rate", 0.0))
    if not 0 <= hit <= 1:
        raise ScenarioError(f"cache.hit_rate must be within 0..1, got {hit}")
    served = req * Decimal(str(1 - hit))  # requests that reach the models
    g = sc["generation"]
    share_weak = float(g.get("routing_share", 0.0))
    stack: dict[str, Decimal] = {}

    def add(step: str, amount: Decimal) -> None:
        stack[step] = stack.get(step, Decimal(0)) + amount

    gen_in, gen_out, cached = g.get("input_tokens", 1000), g.get("output_tokens", 300), g.get("cached_input_share", 0.0)
    serve = g.get("serve", "api")
    if serve == "api":
        strong = p.tokens(g["model"], gen_in, gen_out, cached)
        weak = p.tokens(g["weak_model"], gen_in, gen_out, cached) if g.get("weak_model") else strong
        add("generate", served * (Decimal(str(share_weak)) * weak + Decimal(str(1 - share_weak)) * strong))
    elif serve == "self_hosted":
        if "self_hosted_gpu" not in sc:
            raise ScenarioError("generation.serve is self_hosted but the scenario has no self_hosted_gpu block")
        add("generate", capacity_cost(sc, sc["self_hosted_gpu"], p, days))
    else:
        raise ScenarioError(f"generation.serve must be api or self_hosted, got {serve!r}")
    for extra in sc.get("steps", []) or []:
        per = p.tokens(extra["model"], extra.get("input_tokens", 0), extra.get("output_tokens", 0))
        add(extra.get("step", "validate"), served * per)
    if "embedding" in sc:
        e = sc["embedding"]
        add("embed", req * p.tokens(e["model"], e.get("tokens_per_request", 50), 0))
    if "vector_db" in sc:
        v = sc["vector_db"]
        add(
            "vector_search",
            p.quantity(
                v["service"], v.get("component", "read_unit"), req * Decimal(str(v.get("units_per_request", 1)))
            ),
        )
    if "cache" in sc and sc["cache"].get("lookup_embedding_model"):
        add(
            "cache_lookup",
            req * p.tokens(sc["cache"]["lookup_embedding_model"], sc["cache"].get("lookup_tokens", 30), 0),
        )
    if "logging" in sc:
        lg = sc["logging"]
        gb_month = req * Decimal(str(lg["bytes_per_request"])) / GB * Decimal(str(lg.get("replicas", 1)))
        retained = gb_month / days * Decimal(str(lg.get("retention_days", 30)))  # steady-state stored volume
        cost = p.quantity(lg.get("storage", "s3-standard"), "storage", retained)
        if lg.get("ingest"):
            cost += p.quantity(lg["ingest"], "ingest", gb_month)
        add("log_storage", cost)
    for eg in sc.get("egress", []) or []:
        gb = req * Decimal(str(eg["bytes_per_request"])) / GB
        add("egress", p.quantity(eg["path"], "transfer", gb, free=p.free(eg["path"])))
    if "capacity" in sc:
        add("reserved_capacity", capacity_cost(sc, sc["capacity"], p, days))
    return dict(sorted(stack.items(), key=lambda kv: -kv[1]))


def capacity_cost(sc: dict[str, Any], c: dict[str, Any], p: _Pricer, days: Decimal) -> Decimal:
    """Instances for ``multiple_of_average`` x the average load (requests that reach the models).

    A cold start longer than ``scale_out_window_minutes`` (default 1) means capacity cannot
    follow the load, so the headroom is kept warm around the clock; otherwise it is paid
    only for the share of the day the average load needs.
    """
    avg_rps = float(sc["requests_per_day"]) * (1 - float(_get(sc, "cache.hit_rate", 0.0))) / SECONDS_PER_DAY
    multiple = float(c.get("multiple_of_average", 3.0))
    if multiple < 1:
        raise ScenarioError(f"multiple_of_average must be >= 1, got {multiple}")
    always_warm = float(c.get("cold_start_minutes", 5)) > float(c.get("scale_out_window_minutes", 1))
    warm_hours = 24.0 if always_warm else 24.0 / multiple
    instances = max(
        int(c.get("min_instances", 1)), math.ceil(avg_rps * multiple / float(c["requests_per_second_per_instance"]))
    )
    return p.quantity(c["instance"], "instance", Decimal(str(instances)) * Decimal(str(warm_hours)) * days)


DEFAULT_KNOBS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "requests_per_day": (lambda v: v * 0.5, lambda v: v * 2),
    "generation.input_tokens": (lambda v: v * 0.5, lambda v: v * 2),
    "generation.output_tokens": (lambda v: v * 0.5, lambda v: v * 2),
    "generation.routing_share": (lambda v: min(1.0, v + 0.3), lambda v: max(0.0, v - 0.3)),
    "cache.hit_rate": (lambda v: min(0.95, v + 0.2), lambda v: max(0.0, v - 0.2)),
    "logging.bytes_per_request": (lambda v: v * 0.5, lambda v: v * 2),
    "logging.retention_days": (lambda v: v * 0.5, lambda v: v * 2),
    "logging.replicas": (lambda v: max(1, v - 1), lambda v: v + 1),
    "capacity.multiple_of_average": (lambda v: max(1.0, v - 1), lambda v: v + 1),
}


def sensitivity(sc: dict[str, Any], catalog: PriceCatalog) -> tuple[Decimal, list[dict]]:
    base = sum(monthly_stack(sc, catalog).values(), Decimal(0))
    out = []
    for knob, (low_fn, high_fn) in DEFAULT_KNOBS.items():
        value = _get(sc, knob)
        if value is None:
            continue
        totals = []
        for fn in (low_fn, high_fn):
            variant = copy.deepcopy(sc)
            _set(variant, knob, fn(value))
            totals.append(sum(monthly_stack(variant, catalog).values(), Decimal(0)))
        out.append(
            {
                "knob": knob,
                "base_value": value,
                "low_value": low_fn(value),
                "high_value": high_fn(value),
                "low_total_usd": totals[0],
                "high_total_usd": totals[1],
                "swing_usd": abs(totals[1] - totals[0]),
            }
        )
    return base, sorted(out, key=lambda r: -r["swing_usd"])


def run_whatif(sc: dict[str, Any], catalog: PriceCatalog | None = None, source: str = "") -> dict[str, Any]:
    catalog = catalog or PriceCatalog.bundled()
    stack = monthly_stack(sc, catalog)
    total, sens = sensitivity(sc, catalog)
    gen = stack.get("generate", Decimal(0))
    monthly_req = Decimal(str(sc["requests_per_day"])) * Decimal(str(sc.get("days_per_month", 30)))
    alt = None
    if "self_hosted_gpu" in sc:  # the same pipeline with generation served the other way
        other = copy.deepcopy(sc)
        other["generation"]["serve"] = "api" if sc["generation"].get("serve", "api") == "self_hosted" else "self_hosted"
        alt = {
            "serve": other["generation"]["serve"],
            "total_usd": sum(monthly_stack(other, catalog).values(), Decimal(0)),
        }
    cents = Decimal("0.01")
    return {
        "kind": "whatif",
        "source": source,
        "name": sc.get("name", ""),
        "requests_per_day": sc["requests_per_day"],
        "monthly_total_usd": total.quantize(cents),
        "cost_per_request_usd": total / monthly_req if monthly_req else None,
        "generation_share": float(gen / total) if total else None,
        "stack": [
            {"step": k, "monthly_usd": v.quantize(cents), "share": float(v / total) if total else None}
            for k, v in stack.items()
        ],
        "sensitivity": [
            {
                **r,
                "low_total_usd": r["low_total_usd"].quantize(cents),
                "high_total_usd": r["high_total_usd"].quantize(cents),
                "swing_usd": r["swing_usd"].quantize(cents),
            }
            for r in sens
        ],
        "alternative": None if alt is None else {**alt, "total_usd": alt["total_usd"].quantize(cents)},
        "scenario": sc,
    }


def render_whatif_html(r: dict[str, Any]) -> str:
    st = r["stack"]
    figs = [
        Figure("monthly_total_usd", "monthly total", r["monthly_total_usd"], lambda v: charts.usd(float(v))),
        Figure("cost_per_request_usd", "cost per request", r["cost_per_request_usd"], lambda v: f"${float(v):.6f}"),
        Figure("generation_share", "generation share", r["generation_share"], charts.pct),
    ]
    if r["alternative"]:
        label = (
            "generation self-hosted instead"
            if r["alternative"]["serve"] == "self_hosted"
            else "generation via API instead"
        )
        figs.append(
            Figure("alternative_total_usd", label, r["alternative"]["total_usd"], lambda v: charts.usd(float(v)))
        )
    sens = r["sensitivity"]
    sections = [
        Section(
            "Monthly cost stack",
            [
                figures(figs),
                charts.waterfall(
                    [s["step"] for s in st], [float(s["monthly_usd"]) for s in st], "Monthly cost by step"
                ),
                table(
                    ["step", "per month", "share"],
                    [[s["step"], charts.usd(float(s["monthly_usd"])), charts.pct(s["share"] or 0)] for s in st],
                    numeric=(1, 2),
                ),
            ],
        ),
        Section(
            "Which knob moves the bill most",
            [
                charts.tornado(
                    [(f"{s['knob']}", float(s["low_total_usd"]), float(s["high_total_usd"])) for s in sens],
                    float(r["monthly_total_usd"]),
                    "Sensitivity: monthly total at each knob's low and high setting",
                ),
                table(
                    ["knob", "base", "low → total", "high → total", "swing"],
                    [
                        [
                            s["knob"],
                            s["base_value"],
                            f"{s['low_value']:g} → {charts.usd(float(s['low_total_usd']))}",
                            f"{s['high_value']:g} → {charts.usd(float(s['high_total_usd']))}",
                            charts.usd(float(s["swing_usd"])),
                        ]
                        for s in sens
                    ],
                    numeric=(4,),
                ),
            ],
        ),
    ]
    return page("truecost · what if", f"{r['name']} · {r['requests_per_day']:,} requests/day", sections, data=r)


def write_whatif_report(r: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    return write_report(out_dir, "whatif", r, render_whatif_html(r))
