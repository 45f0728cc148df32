"""`truecost audit costs`: where the money goes, per step, model, cost center and feature.

Reads a truecost ledger, or imports traces into an in-memory ledger first: an
OpenTelemetry JSON export (OTLP/JSON ``resourceSpans``; spans priced from their
``truecost.cost_usd`` or, failing that, their ``gen_ai.*`` token counts and the catalog)
or a LiteLLM spend-log CSV (its ``spend`` column, one request per row).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

from truecost.audit import charts
from truecost.audit.html import Figure, Section, figures, page, table, write_report
from truecost.audit.sources import AuditInputError
from truecost.clock import new_id
from truecost.ledger.events import STEP_KINDS, CostEvent
from truecost.ledger.queries import summary
from truecost.ledger.store import LedgerFilter, LedgerStore, MemoryLedgerStore
from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.cost import price_tokens
from truecost.types import Attribution, TokenUsage, to_decimal

CATEGORIES = {
    "generate": "generation",
    "embed": "retrieval",
    "vector_search": "retrieval",
    "context_assembly": "retrieval",
    "sanitize": "guardrails",
    "validate": "guardrails",
    "egress": "data movement",
    "log_storage": "observability",
    "cache_lookup": "caching",
    "cache_write": "caching",
    "cache_judge": "caching",
    "reserved_capacity": "capacity",
    "other": "other",
}
LITELLM_REQUIRED = ("request_id", "model", "spend")


def _attr_value(v: dict) -> Any:
    for k in ("stringValue", "boolValue", "intValue", "doubleValue"):
        if k in v:
            return int(v[k]) if k == "intValue" else v[k]
    return None


def _spans(doc: Any) -> Iterator[dict]:
    for rs in doc.get("resourceSpans", []) if isinstance(doc, dict) else []:
        for ss in rs.get("scopeSpans", []) or rs.get("instrumentationLibrarySpans", []):
            yield from ss.get("spans", [])


def events_from_otel(path: str | Path, catalog: PriceCatalog) -> tuple[list[CostEvent], dict[str, int]]:
    """OTLP/JSON export (one document, or one per line) -> events; spans without cost or tokens are skipped."""
    text = Path(path).read_text(encoding="utf-8")
    docs = (
        [json.loads(text)]
        if text.lstrip().startswith("{") and "\n{" not in text.strip()
        else [json.loads(line) for line in text.splitlines() if line.strip()]
    )
    events, skipped = [], {"no_cost_or_tokens": 0}
    for span in (s for d in docs for s in _spans(d)):
        a = {x["key"]: _attr_value(x.get("value", {})) for x in span.get("attributes", [])}
        step = a.get("truecost.step") or ("generate" if "gen_ai.request.model" in a else None)
        model = a.get("gen_ai.request.model") or a.get("gen_ai.response.model") or a.get("truecost.service")
        cost, unit_price, quantity, unit = None, None, Decimal(0), ""
        details: dict[str, Any] = {}
        if a.get("truecost.cost_usd") is not None:
            cost = to_decimal(a["truecost.cost_usd"], "cost")
        if "gen_ai.usage.input_tokens" in a:
            cached = int(a.get("gen_ai.usage.cache_read.input_tokens") or 0)
            written = int(a.get("gen_ai.usage.cache_creation.input_tokens") or 0)
            reasoning = int(a.get("gen_ai.usage.reasoning.output_tokens") or 0)
            usage = TokenUsage(
                input=max(0, int(a["gen_ai.usage.input_tokens"]) - cached - written),
                cached_input=cached,
                cache_write_5m=written,
                output=max(0, int(a.get("gen_ai.usage.output_tokens") or 0) - reasoning),
                reasoning=reasoning,
            )
            quantity, unit, details = (
                Decimal(usage.prompt_total + usage.completion_total),
                "tokens",
                {"tokens": usage.as_dict()},
            )
            if cost is None:
                version, reason = catalog.price_or_none(model or "?")
                priced = price_tokens(version, usage) if version else None
                cost = priced.cost if priced else None
                if cost is None:
                    details["unknown_reason"] = reason or (priced.unknown_reason if priced else "no price")
        elif cost is None:
            skipped["no_cost_or_tokens"] += 1
            continue
        start = int(span.get("startTimeUnixNano") or 0)
        end = int(span.get("endTimeUnixNano") or start)
        attribution = Attribution(
            **{
                f: a.get(f"truecost.attribution.{f}")
                for f in ("cost_center", "team", "feature", "tenant", "environment", "user")
            },
            tags=(),
        )
        events.append(
            CostEvent(
                id=new_id(),
                request_id=a.get("truecost.request_id") or span.get("traceId"),
                ts=datetime.fromtimestamp(start / 1e9, tz=timezone.utc),
                step=step if step in STEP_KINDS else "other",
                provider=a.get("gen_ai.provider.name") or a.get("gen_ai.system"),
                service=model,
                quantity=quantity,
                unit=unit,
                unit_price=unit_price,
                cost=cost,
                attribution=attribution,
                trace_id=span.get("traceId"),
                span_id=span.get("spanId"),
                name=span.get("name"),
                latency_ms=(end - start) / 1e6,
                details=details,
                source="otlp",
            )
        )
    return events, skipped


def events_from_litellm_csv(path: str | Path) -> tuple[list[CostEvent], dict[str, int]]:
    """LiteLLM's spend logs (``LiteLLM_SpendLogs`` exported as CSV): one generation event per row."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in LITELLM_REQUIRED if c not in cols]
        if missing:
            raise AuditInputError(
                f"{path}: not a LiteLLM spend log: missing column(s) {', '.join(missing)} "
                f"(columns: {', '.join(cols) or 'none'})"
            )
        events, skipped = [], {"bad_spend": 0}
        for rec in reader:
            try:
                cost = to_decimal(rec["spend"], "spend") if rec["spend"] not in ("", None) else None
            except Exception:
                skipped["bad_spend"] += 1
                continue
            meta: dict[str, Any] = {}
            if rec.get("metadata"):
                try:
                    parsed = json.loads(rec["metadata"])
                except json.JSONDecodeError:
                    parsed = None
                meta = parsed if isinstance(parsed, dict) else {}
            tokens = int(float(rec.get("total_tokens") or 0))
            ts = rec.get("startTime") or rec.get("start_time")
            when = datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else datetime.now(timezone.utc)
            events.append(
                CostEvent(
                    id=new_id(),
                    request_id=rec["request_id"],
                    ts=when if when.tzinfo else when.replace(tzinfo=timezone.utc),
                    step="generate",
                    provider=rec.get("custom_llm_provider") or None,
                    service=rec["model"],
                    quantity=Decimal(tokens),
                    unit="tokens",
                    cost=cost,
                    attribution=Attribution(
                        team=rec.get("team_id") or None,
                        user=rec.get("user") or None,
                        cost_center=meta.get("cost_center"),
                        feature=meta.get("feature"),
                    ),
                    details={} if cost is not None else {"unknown_reason": "no spend recorded"},
                    source="litellm",
                )
            )
    return events, skipped


def load_source(path: str | Path, fmt: str | None, catalog: PriceCatalog, open_ledger) -> tuple[LedgerStore, dict]:
    p = Path(path)
    if not p.exists():
        raise AuditInputError(f"{p}: no such file")
    fmt = fmt or ("otel" if p.suffix.lower() == ".json" else "litellm" if p.suffix.lower() == ".csv" else "ledger")
    if fmt == "ledger":
        return open_ledger(str(p)), {"format": "ledger"}
    if fmt == "otel":
        events, skipped = events_from_otel(p, catalog)
    elif fmt == "litellm":
        events, skipped = events_from_litellm_csv(p)
    else:
        raise AuditInputError(f"unknown trace format {fmt!r}: ledger, otel or litellm")
    if not events:
        raise AuditInputError(f"{p}: no priced spans or rows found ({fmt}; skipped: {skipped})")
    store = MemoryLedgerStore()
    store.append(events)
    return store, {"format": fmt, "imported_events": len(events), "skipped": skipped}


def _percentiles(values: list[Decimal]) -> dict[str, Decimal | None]:
    if not values:
        return {k: None for k in ("p50", "p90", "p99", "max", "mean")}
    v = sorted(values)

    def q(p: float) -> Decimal:
        return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": v[-1], "mean": sum(v, Decimal(0)) / len(v)}


def run_cost_audit(
    store: LedgerStore, flt: LedgerFilter = LedgerFilter(), source: str = "", top: int = 10
) -> dict[str, Any]:
    by_step = store.aggregate(["step"], flt)
    s = summary(store, flt, by_step)
    if s.events == 0:
        raise AuditInputError(f"{source or 'the ledger'}: no cost events in the chosen period")
    total = s.total
    cats: dict[str, Decimal] = {}
    for r in by_step:
        cats[CATEGORIES.get(r.keys[0], "other")] = cats.get(CATEGORIES.get(r.keys[0], "other"), Decimal(0)) + r.cost

    def rows(group: list[str]) -> list[dict]:
        return [
            {
                "key": " / ".join("-" if k is None else str(k) for k in r.keys),
                "cost_usd": r.cost,
                "share": float(r.cost / total) if total else None,
                "events": r.events,
                "unknown": r.unknown,
                "requests": r.request_count,
            }
            for r in store.aggregate(group, flt)
        ]

    per_request = store.aggregate(["request_id"], flt, count_requests=False)
    unknown_requests = sorted({r.keys[0] for r in per_request if r.unknown and r.keys[0] is not None})
    return {
        "kind": "cost_audit",
        "source": source,
        "events": s.events,
        "requests": s.requests,
        "total_usd": total,
        "avoided_usd": s.avoided,
        "generation_share": s.generation_share,
        "cost_per_request_usd": s.cost_per_request,
        "unknown_events": s.unknown,
        "unknown_requests": len(unknown_requests),
        "unknown_request_ids": unknown_requests[:50],
        "categories": [
            {"category": k, "cost_usd": v, "share": float(v / total) if total else None}
            for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
        ],
        "by_step": rows(["step"]),
        "by_model": rows(["step", "service"])[: top * 2],
        "by_cost_center": rows(["cost_center"]),
        "by_feature": rows(["feature"]),
        "by_source": rows(["source"]),
        "top_drivers": rows(["step", "service"])[:top],
        "per_request_percentiles": _percentiles([r.cost for r in per_request if r.keys[0] is not None]),
    }


def render_costs_html(r: dict[str, Any]) -> str:
    figs = [
        Figure("total_usd", "total spend", r["total_usd"], lambda v: charts.usd(float(v))),
        Figure("requests", "requests", r["requests"], lambda v: f"{v:,}"),
        Figure("cost_per_request_usd", "cost per request", r["cost_per_request_usd"], lambda v: f"${float(v):.6f}"),
        Figure("generation_share", "generation share", r["generation_share"], charts.pct),
        Figure("unknown_requests", "requests with unknown prices", r["unknown_requests"]),
    ]
    steps = r["by_step"]
    pct = r["per_request_percentiles"]

    def grid(rows: list[dict], title: str) -> str:
        return table(
            [title, "cost", "share", "events", "unknown"],
            [
                [x["key"], f"${float(x['cost_usd']):,.6f}", charts.pct(x["share"] or 0), x["events"], x["unknown"]]
                for x in rows
            ],
            numeric=(1, 2, 3, 4),
        )

    sections = [
        Section(
            "Where the money goes",
            [
                figures(figs),
                charts.waterfall(
                    [x["key"] for x in steps], [float(x["cost_usd"]) for x in steps], "Cost waterfall by step"
                ),
            ],
        ),
        Section(
            "Generation vs everything else",
            [
                charts.hbar(
                    [c["category"] for c in r["categories"]],
                    [float(c["cost_usd"]) for c in r["categories"]],
                    "Spend by category",
                    fmt=charts.usd,
                )
            ],
        ),
        Section("By step", [grid(steps, "step")]),
        Section("Top cost drivers (step / service)", [grid(r["top_drivers"], "driver")]),
        Section("By cost center", [grid(r["by_cost_center"], "cost center")]),
        Section("By feature", [grid(r["by_feature"], "feature")]),
        Section("By source (where each event was recorded)", [grid(r["by_source"], "source")]),
        Section(
            "Cost per request",
            [
                table(
                    ["percentile", "cost"],
                    [[k, "n/a" if v is None else f"${float(v):.6f}"] for k, v in pct.items()],
                    numeric=(1,),
                )
            ],
        ),
    ]
    return page("truecost · where the money goes", f"{r['source']} · {r['events']:,} events", sections, data=r)


def write_costs_report(r: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    return write_report(out_dir, "cost_audit", r, render_costs_html(r))
