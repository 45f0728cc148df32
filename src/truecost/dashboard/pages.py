"""The dashboard's pages as HTML: the overview, the requests list, one request and the login form.

Every figure carries ``data-key``/``data-value`` with the raw number from the ledger, so tests compare
the page with the ledger. Nothing here reads the ledger or handles a request: ``app`` does.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import Any, Sequence
from urllib.parse import quote, urlencode

from truecost.audit import charts
from truecost.audit.html import Figure, Section, figures, page, table
from truecost.dashboard.auth import Principal

FILTERS = ("since", "until", "cost_center", "feature", "tenant", "model", "source")
SCOPED = ("tenant", "cost_center")  # forced for a principal that is not an admin
SERIES = ("cost_center", "feature", "step", "model", "source")
REQUESTS_SHOWN = 100
_usd = charts.usd


def nav(base: str, on: str, who: Principal | None = None) -> str:
    out = ""
    if who is not None:
        scope = "all data" if who.admin else f"tenant {who.tenant}, cost center {who.cost_center}"
        out = (
            f'<form class="who" method="post" action="{base}/logout"><span>{escape(who.name)} · {escape(scope)}</span>'
            f'<button type="submit">log out</button></form>'
        )
    return (
        f'<nav><a href="{base}/" class="{"on" if on == "overview" else ""}">overview</a>'
        f'<a href="{base}/requests" class="{"on" if on == "requests" else ""}">requests</a>{out}</nav>'
    )


def _cost_cell(cost: Any, unknown: int) -> str:
    """A known cost, and how many steps had no price: '$0.42', '$0.42 + 2 unpriced', 'unknown (3 unpriced)'."""
    if not unknown:
        return _usd(cost)
    flag = f"<span class='unknown'>{unknown:,} unpriced</span>"
    return f"unknown ({flag})" if not cost else f"{_usd(cost)} + {flag}"


def _requests_table(base: str, rows: Sequence[dict[str, Any]], params: dict[str, str]) -> str:
    qs = urlencode({k: v for k, v in params.items() if v})
    head = "<th>request</th><th>source</th><th class='n'>cost</th><th class='n'>steps</th>"
    return (
        (
            f"<table><thead><tr>{head}</tr></thead><tbody>"
            + "".join(
                f'<tr><td><a href="{base}/request/{escape(quote(x["request_id"], safe=""))}{"?" + escape(qs) if qs else ""}">'
                f'{escape(x["request_id"])}</a></td><td class="source">{escape(", ".join(x["sources"]))}</td>'
                f'<td class="n" data-unpriced="{x["unknown"]}">{_cost_cell(x["cost_usd"], x["unknown"])}</td>'
                f'<td class="n">{x["events"]}</td></tr>'
                for x in rows
            )
            + "</tbody></table>"
        )
        if rows
        else "<p class='note'>no requests in this period</p>"
    )


def _by_source(rows: Sequence[dict[str, Any]]) -> str:
    """Requests and spend per source: where each event was recorded (each row carries the raw numbers)."""
    if not rows:
        return "<p class='note'>no events in this period</p>"
    body = "".join(
        f'<tr data-source="{escape(x["key"])}" data-requests="{x["requests"]}" data-events="{x["events"]}" '
        f'data-cost-usd="{x["cost_usd"]}" data-unpriced="{x["unknown"]}"><td>{escape(x["key"])}</td>'
        f'<td class="n">{x["requests"]:,}</td><td class="n">{x["events"]:,}</td>'
        f'<td class="n">{_cost_cell(x["cost_usd"], x["unknown"])}</td>'
        f'<td class="n">{charts.pct(x["share"]) if x["share"] is not None else "n/a"}</td></tr>'
        for x in rows
    )
    return (
        "<table id='by-source'><thead><tr><th>source</th><th class='n'>requests</th><th class='n'>events</th>"
        f"<th class='n'>cost</th><th class='n'>share</th></tr></thead><tbody>{body}</tbody></table>"
        "<p class='note'>A request recorded by two sources (an SDK step joined to a gateway call by its "
        "request id) counts once in each.</p>"
    )


def _filter_form(base: str, params: dict[str, str], fixed: Sequence[str] = (), action: str = "/") -> str:
    fields = "".join(
        f'<label>{f.replace("_", " ")}<input name="{f}" value="{escape(params.get(f, ""))}" '
        f'placeholder="{"2026-11-28" if f in ("since", "until") else "any"}"{" readonly" if f in fixed else ""}>'
        f"</label>"
        for f in FILTERS
    )
    options = "".join(
        f'<option value="{o}"{" selected" if params.get("by") == o else ""}>{o.replace("_", " ")}</option>'
        for o in SERIES
    )
    fields += f'<label>spend over time by<select name="by">{options}</select></label>'
    return (
        f'<form class="filters" method="get" action="{base}{action}">{fields}<button type="submit">apply</button>'
        f'<a href="{base}{action}">clear</a></form>'
    )


def _over_time(data: dict[str, Any]) -> str:
    sot = data["spend_over_time"]
    buckets, by = sot["buckets"], sot["by"].replace("_", " ")
    top = list(sot["series"].items())[:6]
    if not buckets:
        return "<p class='note'>no spend in this period</p>"
    if len(buckets) == 1:  # a line needs two points: all the data sits in one bucket, so show its bars
        return charts.hbar(
            [k for k, _ in top],
            [float(v[0]) for _, v in top],
            f"Spend in the {data['bucket']} {buckets[0]} by {by}",
            fmt=charts.usd,
        )
    return charts.lines(
        list(range(len(buckets))),
        {k: [float(x) for x in v] for k, v in top},
        f"Spend per {data['bucket']} by {by}",
        f"{data['bucket']} ({buckets[0]} → {buckets[-1]})",
        "USD",
        fmt_x=lambda v: buckets[int(v)][-5:],
        fmt_y=charts.usd,
    )


def _overview_figures(data: dict[str, Any]) -> list[Figure]:
    c, r = data["cache"], data["routing"]
    # with unpriced steps the sums are lower bounds: the labels say so (the unknown count is a figure of its own)
    known = " (priced steps only)" if data["unknown_requests"] else ""
    return [
        Figure("total_usd", "spend" + known, data["total_usd"], _usd),
        Figure("requests", "requests", data["requests"], lambda v: f"{v:,}"),
        Figure("cost_per_request_usd", "cost per request" + known, data["cost_per_request_usd"], _usd),
        Figure("generation_share", "generation share", data["generation_share"], charts.pct),
        Figure("cache_hit_rate", "cache hit rate", c["hit_rate"], charts.pct),
        Figure("cache_false_hit_bound", "false hits (policy bound)", c["false_hit_bound"], lambda v: f"≤ {v:,.1f}"),
        Figure("cache_net_savings_usd", "cache net savings", c["net_savings_usd"], _usd),
        Figure("routing_avoided_usd", "routing savings", r["avoided_usd"], _usd),
        Figure("unknown_requests", "requests with unknown prices", data["unknown_requests"]),
    ]


def _spend_bars(rows: Sequence[dict[str, Any]], title: str) -> str:
    return charts.hbar([x["key"] for x in rows[:12]], [float(x["cost_usd"]) for x in rows[:12]], title, fmt=charts.usd)


def _cache_section(c: dict[str, Any]) -> Section:
    return Section(
        "Cache",
        [
            table(
                ["lookups", "hits", "hit rate", "avoided", "lookup cost", "net savings"],
                [
                    [
                        c["lookups"],
                        c["hits"],
                        charts.pct(c["hit_rate"]) if c["hit_rate"] is not None else "n/a",
                        _usd(c["avoided_usd"]),
                        _usd(c["lookup_cost_usd"]),
                        _usd(c["net_savings_usd"]),
                    ]
                ],
                numeric=(0, 1, 2, 3, 4, 5),
            ),
            "<p class='note'>False hits are bounded by the cache policy's target error; "
            "the demo measures them against known intents.</p>",
        ],
    )


def _routing_mix(mix: dict[str, Any]) -> str:
    if not mix:
        return "<p class='note'>no generations</p>"
    return charts.hbar(
        list(mix), [float(v) for v in mix.values()], "Generations by model served", fmt=lambda v: f"{v:,.0f}"
    )


def _budgets(budgets: Sequence[dict[str, Any]], who: Principal | None) -> str:
    if budgets:
        return table(
            ["budget", "period", "limit", "spent", "used"],
            [
                [
                    b["budget"],
                    b["period"],
                    _usd(b["limit_usd"]),
                    _usd(b["spent_usd"]),
                    charts.pct(b["used"]) if b["used"] is not None else "n/a",
                ]
                for b in budgets
            ],
            numeric=(2, 3, 4),
        )
    if who is None or who.admin:
        return "<p class='note'>no budgets configured</p>"
    return "<p class='note'>budgets are shown to admins</p>"


def render_overview(
    base: str, data: dict[str, Any], params: dict[str, str], title: str, who: Principal | None = None
) -> str:
    qs = urlencode({k: v for k, v in params.items() if v})
    sections = [
        Section("Filters", [_filter_form(base, params, () if who is None or who.admin else SCOPED)]),
        Section("Overview", [figures(_overview_figures(data)), f'<div id="spend-over-time">{_over_time(data)}</div>']),
        Section(
            "Where the money goes",
            [
                _spend_bars(data["by_step"], "Spend by step"),
                _spend_bars(data["by_cost_center"], "Spend by cost center"),
                _spend_bars(data["by_feature"], "Spend by feature"),
            ],
        ),
        Section("By source", [_by_source(data["by_source"])]),
        _cache_section(data["cache"]),
        Section("Routing mix", [_routing_mix(data["routing"]["mix"])]),
        Section("Budgets", [_budgets(data["budgets"], who)]),
        Section(
            "Most expensive requests",
            [
                _requests_table(base, data["expensive_requests"], params),
                f'<p class="note"><a href="{base}/requests{"?" + escape(qs) if qs else ""}">more requests</a></p>',
            ],
        ),
    ]
    return page(title, "spend, cache and routing from the ledger", sections, nav=nav(base, "overview", who))


def render_requests(
    base: str, rows: Sequence[dict[str, Any]], params: dict[str, str], title: str, who: Principal | None = None
) -> str:
    fixed = () if who is None or who.admin else SCOPED
    sections = [
        Section("Filters", [_filter_form(base, params, fixed, action="/requests")]),
        Section(f"Requests, most expensive first (up to {REQUESTS_SHOWN})", [_requests_table(base, rows, params)]),
    ]
    return page(title, "requests in the ledger", sections, nav=nav(base, "requests", who))


def _unit_price(v: Any) -> str:
    if v is None:
        return ""
    d = Decimal(str(v))
    if abs(d) < 1:
        return charts.usd(d, digits=6)
    return "$" + format(d.quantize(Decimal("0.000001")).normalize(), "f")


def _quantity(v: Any) -> str:
    d = Decimal(str(v))
    if d == d.to_integral_value():
        return f"{d:,.0f}"
    if abs(d) >= 1:
        return f"{d:,.4f}".rstrip("0").rstrip(".")
    return charts.significant(d, 6)


def render_request(base: str, d: dict[str, Any], title: str, who: Principal | None = None) -> str:
    steps = d["steps"]
    figs = [
        Figure("request_total_usd", "request total", d["total_usd"], _usd),
        Figure("served_by", "served by", d["served_by"] or "-"),
        Figure("source", "source", ", ".join(d["sources"])),
        Figure("latency_ms", "latency (sum of steps, ms)", round(d["latency_ms"], 2)),
        Figure("unknown", "steps with unknown price", d["unknown"]),
    ]
    label = [f"{s['step']}" + (f" ({s['service']})" if s["service"] else "") for s in steps]
    decisions = [
        ["cache", "-" if d["cache"] is None else f"{d['cache']['status']} (similarity {d['cache']['similarity']})"],
        ["route", d["route"] or "-"],
        ["attribution", ", ".join(f"{k}={v}" for k, v in d["attribution"].items() if v and k != "tags")],
    ]
    sections = [
        Section(
            f"Request {d['request_id']}",
            [
                figures(figs),
                charts.waterfall(label, [float(s["cost_usd"] or 0) for s in steps], "Cost waterfall by step", fmt=_usd),
            ],
        ),
        Section(
            "Steps",
            [
                table(
                    ["step", "service", "quantity", "unit", "unit price", "cost", "ms", "outcome", "source"],
                    [
                        [
                            s["step"],
                            s["service"] or "",
                            _quantity(s["quantity"]),
                            s["unit"],
                            _unit_price(s["unit_price"]),
                            _usd(s["cost_usd"]) if s["cost_usd"] is not None else f"unknown: {s['unknown_reason']}",
                            "" if s["latency_ms"] is None else f"{s['latency_ms']:.2f}",
                            s["outcome"],
                            s["source"],
                        ]
                        for s in steps
                    ],
                    numeric=(2, 4, 5, 6),
                )
            ],
        ),
        Section("Decisions", [table(["what", "decision"], decisions)]),
    ]
    return page(title, f"one request, {d['ts']}", sections, nav=nav(base, "requests", who))


def render_login(base: str, title: str, failed: bool = False, configured: bool = True) -> str:
    note = ("<p class='warn rec'>That key was not accepted.</p>" if failed else "") + (
        "" if configured else "<p class='note'>No dashboard credentials are configured, so nobody can log in.</p>"
    )
    form = (
        f'<form class="login" method="post" action="{base}/login"><label>key<input type="password" name="key" '
        f'autocomplete="current-password" autofocus required></label><button type="submit">log in</button></form>'
    )
    return page(title, "log in to see spend, cache and routing", [Section("Log in", [note, form])])
