"""The dashboard: server-rendered HTML with inline SVG charts (no JavaScript, works offline).

Mounted by the gateway at ``/ui``, or served alone by ``truecost dashboard --db``.
Pages: ``/`` the overview (filters: since, until, cost center, feature, tenant, model) and
``/request/{id}`` one request. Every figure carries ``data-key``/``data-value`` with the
raw number from the ledger, so tests compare the page with the ledger.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal
from html import escape
from typing import Any, Sequence
from urllib.parse import urlencode

from truecost.audit import charts
from truecost.audit.html import Figure, Section, figures, page, table
from truecost.audit.overview import Budget, LedgerStore, make_filter, overview, request_detail


FILTERS = ("since", "until", "cost_center", "feature", "tenant", "model")
SERIES = ("cost_center", "feature", "step", "model")


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _usd(v: Any) -> str:
    return "n/a" if v is None else f"${float(v):,.6f}" if abs(float(v)) < 1 else f"${float(v):,.2f}"


def _nav(base: str, on: str) -> str:
    return (f'<nav><a href="{base}/" class="{"on" if on == "overview" else ""}">overview</a>'
            f'<a href="{base}/requests" class="{"on" if on == "requests" else ""}">requests</a></nav>')


def _filter_form(base: str, params: dict[str, str]) -> str:
    fields = "".join(f'<label>{f.replace("_", " ")}<input name="{f}" value="{escape(params.get(f, ""))}" '
                     f'placeholder="{"2026-11-28" if f in ("since", "until") else "any"}"></label>' for f in FILTERS)
    options = "".join(f'<option value="{o}"{" selected" if params.get("by") == o else ""}>{o.replace("_", " ")}</option>'
                      for o in SERIES)
    fields += f'<label>spend over time by<select name="by">{options}</select></label>'
    return (f'<form class="filters" method="get" action="{base}/">{fields}<button type="submit">apply</button>'
            f'<a href="{base}/">clear</a></form>')


def render_overview(base: str, data: dict[str, Any], params: dict[str, str], title: str) -> str:
    c, r = data["cache"], data["routing"]
    figs = [Figure("total_usd", "spend", data["total_usd"], _usd),
            Figure("requests", "requests", data["requests"], lambda v: f"{v:,}"),
            Figure("cost_per_request_usd", "cost per request", data["cost_per_request_usd"], _usd),
            Figure("generation_share", "generation share", data["generation_share"], charts.pct),
            Figure("cache_hit_rate", "cache hit rate", c["hit_rate"], charts.pct),
            Figure("cache_false_hit_bound", "false hits (policy bound)", c["false_hit_bound"], lambda v: f"≤ {v:,.1f}"),
            Figure("cache_net_savings_usd", "cache net savings", c["net_savings_usd"], _usd),
            Figure("routing_avoided_usd", "routing savings", r["avoided_usd"], _usd),
            Figure("unknown_requests", "requests with unknown prices", data["unknown_requests"])]
    sot = data["spend_over_time"]
    labels = list(range(len(sot["buckets"])))
    over_time = charts.lines(labels, {k: [float(x) for x in v] for k, v in list(sot["series"].items())[:6]},
                             f"Spend per {data['bucket']} by {sot['by'].replace('_', ' ')}", f"{data['bucket']} "
                             f"({sot['buckets'][0] if sot['buckets'] else ''} → {sot['buckets'][-1] if sot['buckets'] else ''})",
                             "USD", fmt_x=lambda v: sot["buckets"][int(v)][-5:] if sot["buckets"] else "", fmt_y=charts.usd) \
        if sot["buckets"] else "<p class='note'>no spend in this period</p>"
    bars = lambda rows, t: charts.hbar([x["key"] for x in rows[:12]], [float(x["cost_usd"]) for x in rows[:12]], t, fmt=charts.usd)
    mix = r["mix"]
    qs = urlencode({k: v for k, v in params.items() if v})
    sections = [
        Section("Filters", [_filter_form(base, params)]),
        Section("Overview", [figures(figs), over_time]),
        Section("Where the money goes", [bars(data["by_step"], "Spend by step"), bars(data["by_cost_center"], "Spend by cost center"),
                                         bars(data["by_feature"], "Spend by feature")]),
        Section("Cache", [table(["lookups", "hits", "hit rate", "avoided", "lookup cost", "net savings"],
                                [[c["lookups"], c["hits"], charts.pct(c["hit_rate"]) if c["hit_rate"] is not None else "n/a",
                                  _usd(c["avoided_usd"]), _usd(c["lookup_cost_usd"]), _usd(c["net_savings_usd"])]], numeric=(0, 1, 2, 3, 4, 5)),
                          "<p class='note'>False hits are bounded by the cache policy's target error; "
                          "the demo measures them against known intents.</p>"]),
        Section("Routing mix", [charts.hbar(list(mix), [float(v) for v in mix.values()], "Generations by model served")
                                if mix else "<p class='note'>no generations</p>"]),
        Section("Budgets", [table(["budget", "period", "limit", "spent", "used"],
                                  [[b["budget"], b["period"], _usd(b["limit_usd"]), _usd(b["spent_usd"]),
                                    charts.pct(b["used"]) if b["used"] is not None else "n/a"] for b in data["budgets"]],
                                  numeric=(2, 3, 4)) if data["budgets"] else "<p class='note'>no budgets configured</p>"]),
        Section("Most expensive requests", [
            "<table><thead><tr><th>request</th><th class='n'>cost</th><th class='n'>steps</th></tr></thead><tbody>" + "".join(
                f'<tr><td><a href="{base}/request/{escape(x["request_id"])}{"?" + qs if qs else ""}">{escape(x["request_id"])}</a></td>'
                f'<td class="n">{_usd(x["cost_usd"])}</td><td class="n">{x["events"]}</td></tr>' for x in data["expensive_requests"])
            + "</tbody></table>"]),
    ]
    return page(title, "spend, cache and routing from the ledger", sections, nav=_nav(base, "overview"))


def render_request(base: str, d: dict[str, Any], title: str) -> str:
    steps = d["steps"]
    figs = [Figure("request_total_usd", "request total", d["total_usd"], _usd),
            Figure("served_by", "served by", d["served_by"] or "-"),
            Figure("latency_ms", "latency (sum of steps, ms)", round(d["latency_ms"], 2)),
            Figure("unknown", "steps with unknown price", d["unknown"])]
    label = [f'{s["step"]}' + (f' ({s["service"]})' if s["service"] else "") for s in steps]
    decisions = [["cache", "-" if d["cache"] is None else f'{d["cache"]["status"]} (similarity {d["cache"]["similarity"]})'],
                 ["route", d["route"] or "-"], ["attribution", ", ".join(f"{k}={v}" for k, v in d["attribution"].items() if v and k != "tags")]]
    sections = [
        Section(f"Request {d['request_id']}", [figures(figs), charts.waterfall(label, [float(s["cost_usd"] or 0) for s in steps],
                                                                                "Cost waterfall by step", fmt=_usd)]),
        Section("Steps", [table(["step", "service", "quantity", "unit", "unit price", "cost", "ms", "outcome"],
                                [[s["step"], s["service"] or "", f'{s["quantity"]:.6g}', s["unit"],
                                  "" if s["unit_price"] is None else f'${s["unit_price"]:.10f}'.rstrip("0"),
                                  _usd(s["cost_usd"]) if s["cost_usd"] is not None else f'unknown: {s["unknown_reason"]}',
                                  "" if s["latency_ms"] is None else f'{s["latency_ms"]:.2f}', s["outcome"]] for s in steps],
                                numeric=(2, 4, 5, 6))]),
        Section("Decisions", [table(["what", "decision"], decisions)]),
    ]
    return page(title, f"one request, {d['ts']}", sections, nav=_nav(base, "requests"))


def create_dashboard(store: LedgerStore, budgets: Sequence[Budget] = (), title: str = "truecost", base: str = "/ui",
                     cache_target_error: float | None = None):
    """A Starlette app (mount it at ``base``) reading ``store``; nothing here writes."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, RedirectResponse
    from starlette.routing import Route

    def params_of(request) -> dict[str, str]:
        params = {f: request.query_params.get(f, "").strip() for f in FILTERS}
        by = request.query_params.get("by", "cost_center")
        params["by"] = by if by in SERIES else "cost_center"
        return params

    async def home(request):
        params = params_of(request)
        try:
            flt = make_filter(_when(params["since"]), _when(params["until"]), params["model"],
                              cost_center=params["cost_center"], feature=params["feature"], tenant=params["tenant"])
        except ValueError as exc:
            return HTMLResponse(page(title, "bad filter", [Section("Bad filter", [f"<p>{escape(str(exc))}</p>"])]), status_code=400)
        data = await asyncio.to_thread(overview, store, flt, budgets, None, 10, params["by"], cache_target_error)
        return HTMLResponse(render_overview(base, data, params, title))

    async def one(request):
        d = await asyncio.to_thread(request_detail, store, request.path_params["request_id"])
        if d is None:
            return HTMLResponse(page(title, "not found", [Section("Not found", [
                f"<p>no request {escape(request.path_params['request_id'])} in the ledger</p>"])]), status_code=404)
        return HTMLResponse(render_request(base, d, title))

    async def requests_page(request):
        return RedirectResponse(f"{base}/#expensive", status_code=307)

    return Starlette(routes=[Route("/", home), Route("/requests", requests_page), Route("/request/{request_id}", one)])


