"""The dashboard: server-rendered HTML with inline SVG charts (no JavaScript, works offline).

Mounted by the gateway at ``/ui``, or served alone by ``truecost dashboard --db``.
Pages: ``/`` the overview (filters: since, until, cost center, feature, tenant, model, source),
``/requests`` the most expensive requests and ``/request/{id}`` one request. The source of an
event is where it was recorded (gateway, sdk, otlp, litellm, langchain, llamaindex): the
overview breaks requests and spend down by it, and the request pages name it. Every figure
carries ``data-key``/``data-value`` with the raw number from the ledger, so tests compare the
page with the ledger.

Behind a login (``/login``, ``/logout``): a ``DashboardAuth`` turns a key into a principal, a
server-side session remembers it (HttpOnly, SameSite=Strict cookie scoped to the mount path).
A principal that is not an admin sees only its tenant's and cost center's data: those filters
are forced on the server, and a request of anyone else is not found.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal
from html import escape
from typing import Any, Sequence
from urllib.parse import parse_qs, quote, urlencode

from truecost.audit import charts
from truecost.audit.html import Figure, Section, figures, page, table
from truecost.audit.overview import Budget, LedgerStore, expensive_requests, make_filter, overview, request_detail
from truecost.dashboard.auth import DashboardAuth, DenyAllAuth, Principal, SessionStore


FILTERS = ("since", "until", "cost_center", "feature", "tenant", "model", "source")
SCOPED = ("tenant", "cost_center")  # forced for a principal that is not an admin
SERIES = ("cost_center", "feature", "step", "model", "source")
COOKIE = "truecost_session"
MAX_LOGIN_BODY = 8192
REQUESTS_SHOWN = 100
HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}
_usd = charts.usd


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _nav(base: str, on: str, who: Principal | None = None) -> str:
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


def _requests_table(base: str, rows: Sequence[dict[str, Any]], params: dict[str, str]) -> str:
    qs = urlencode({k: v for k, v in params.items() if v})
    head = "<th>request</th><th>source</th><th class='n'>cost</th><th class='n'>steps</th>"
    return (
        (
            f"<table><thead><tr>{head}</tr></thead><tbody>"
            + "".join(
                f'<tr><td><a href="{base}/request/{escape(quote(x["request_id"], safe=""))}{"?" + escape(qs) if qs else ""}">'
                f'{escape(x["request_id"])}</a></td><td class="source">{escape(", ".join(x["sources"]))}</td>'
                f'<td class="n">{_usd(x["cost_usd"])}</td><td class="n">{x["events"]}</td></tr>'
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
        f'data-cost-usd="{x["cost_usd"]}"><td>{escape(x["key"])}</td><td class="n">{x["requests"]:,}</td>'
        f'<td class="n">{x["events"]:,}</td><td class="n">{_usd(x["cost_usd"])}</td>'
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


def render_overview(
    base: str, data: dict[str, Any], params: dict[str, str], title: str, who: Principal | None = None
) -> str:
    c, r = data["cache"], data["routing"]
    figs = [
        Figure("total_usd", "spend", data["total_usd"], _usd),
        Figure("requests", "requests", data["requests"], lambda v: f"{v:,}"),
        Figure("cost_per_request_usd", "cost per request", data["cost_per_request_usd"], _usd),
        Figure("generation_share", "generation share", data["generation_share"], charts.pct),
        Figure("cache_hit_rate", "cache hit rate", c["hit_rate"], charts.pct),
        Figure("cache_false_hit_bound", "false hits (policy bound)", c["false_hit_bound"], lambda v: f"≤ {v:,.1f}"),
        Figure("cache_net_savings_usd", "cache net savings", c["net_savings_usd"], _usd),
        Figure("routing_avoided_usd", "routing savings", r["avoided_usd"], _usd),
        Figure("unknown_requests", "requests with unknown prices", data["unknown_requests"]),
    ]
    over_time = f'<div id="spend-over-time">{_over_time(data)}</div>'
    bars = lambda rows, t: charts.hbar(
        [x["key"] for x in rows[:12]], [float(x["cost_usd"]) for x in rows[:12]], t, fmt=charts.usd
    )
    mix = r["mix"]
    qs = urlencode({k: v for k, v in params.items() if v})
    sections = [
        Section("Filters", [_filter_form(base, params, () if who is None or who.admin else SCOPED)]),
        Section("Overview", [figures(figs), over_time]),
        Section(
            "Where the money goes",
            [
                bars(data["by_step"], "Spend by step"),
                bars(data["by_cost_center"], "Spend by cost center"),
                bars(data["by_feature"], "Spend by feature"),
            ],
        ),
        Section("By source", [_by_source(data["by_source"])]),
        Section(
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
        ),
        Section(
            "Routing mix",
            [
                charts.hbar(
                    list(mix),
                    [float(v) for v in mix.values()],
                    "Generations by model served",
                    fmt=lambda v: f"{v:,.0f}",
                )
                if mix
                else "<p class='note'>no generations</p>"
            ],
        ),
        Section(
            "Budgets",
            [
                table(
                    ["budget", "period", "limit", "spent", "used"],
                    [
                        [
                            b["budget"],
                            b["period"],
                            _usd(b["limit_usd"]),
                            _usd(b["spent_usd"]),
                            charts.pct(b["used"]) if b["used"] is not None else "n/a",
                        ]
                        for b in data["budgets"]
                    ],
                    numeric=(2, 3, 4),
                )
                if data["budgets"]
                else "<p class='note'>no budgets configured</p>"
                if who is None or who.admin
                else "<p class='note'>budgets are shown to admins</p>"
            ],
        ),
        Section(
            "Most expensive requests",
            [
                _requests_table(base, data["expensive_requests"], params),
                f'<p class="note"><a href="{base}/requests{"?" + escape(qs) if qs else ""}">more requests</a></p>',
            ],
        ),
    ]
    return page(title, "spend, cache and routing from the ledger", sections, nav=_nav(base, "overview", who))


def render_requests(
    base: str, rows: Sequence[dict[str, Any]], params: dict[str, str], title: str, who: Principal | None = None
) -> str:
    fixed = () if who is None or who.admin else SCOPED
    sections = [
        Section("Filters", [_filter_form(base, params, fixed, action="/requests")]),
        Section(f"Requests, most expensive first (up to {REQUESTS_SHOWN})", [_requests_table(base, rows, params)]),
    ]
    return page(title, "requests in the ledger", sections, nav=_nav(base, "requests", who))


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
    return page(title, f"one request, {d['ts']}", sections, nav=_nav(base, "requests", who))


def render_login(base: str, title: str, failed: bool = False, configured: bool = True) -> str:
    note = ("<p class='warn rec'>That key was not accepted.</p>" if failed else "") + (
        "" if configured else "<p class='note'>No dashboard credentials are configured, so nobody can log in.</p>"
    )
    form = (
        f'<form class="login" method="post" action="{base}/login"><label>key<input type="password" name="key" '
        f'autocomplete="current-password" autofocus required></label><button type="submit">log in</button></form>'
    )
    return page(title, "log in to see spend, cache and routing", [Section("Log in", [note, form])])


async def _form_key(request) -> str | None:
    """The ``key`` field of a small urlencoded form body; None when the body is too large."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            return None
    values = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8).get("key") or [""]
    return values[0].strip()


class _Views:
    """The dashboard's pages over one ledger: every page but the login asks for a session first."""

    def __init__(
        self,
        store: LedgerStore,
        budgets: Sequence[Budget],
        title: str,
        base: str,
        cache_target_error: float | None,
        auth: DashboardAuth | None,
        sessions: SessionStore | None,
        insecure_open: bool,
    ) -> None:
        self.store, self.budgets, self.title, self.base = store, budgets, title, base
        self.cache_target_error = cache_target_error
        self.open_mode = auth is None and insecure_open
        self.login_auth: DashboardAuth = auth if auth is not None else DenyAllAuth()
        self.sessions = sessions if sessions is not None else SessionStore()
        self.everyone = Principal(name="open dashboard", admin=True)

    # -- responses ----------------------------------------------------------------------------
    def html(self, text: str, status: int = 200) -> Any:
        from starlette.responses import HTMLResponse

        return HTMLResponse(text, status_code=status, headers=HEADERS)

    def redirect(self, to: str) -> Any:
        from starlette.responses import RedirectResponse

        return RedirectResponse(to, status_code=303, headers=HEADERS)

    def not_found(self, what: str, who: Principal, tab: str) -> Any:
        return self.html(
            page(self.title, "not found", [Section("Not found", [f"<p>{what}</p>"])], nav=_nav(self.base, tab, who)),
            404,
        )

    def guarded(self, handler: Any) -> Any:
        async def endpoint(request: Any) -> Any:
            who = self.everyone if self.open_mode else self.sessions.get(request.cookies.get(COOKIE))
            if who is None:
                return self.redirect(f"{self.base}/login")
            return await handler(request, who)

        return endpoint

    # -- filters ------------------------------------------------------------------------------
    def params_of(self, request: Any, who: Principal) -> dict[str, str]:
        params = {f: request.query_params.get(f, "").strip() for f in FILTERS}
        by = request.query_params.get("by", "cost_center")
        params["by"] = by if by in SERIES else "cost_center"
        params.update(who.scope)  # a scoped principal's tenant and cost center, whatever the query said
        return params

    def filter_of(self, params: dict[str, str]) -> Any:
        return make_filter(
            _when(params["since"]),
            _when(params["until"]),
            params["model"],
            params["source"],
            cost_center=params["cost_center"],
            feature=params["feature"],
            tenant=params["tenant"],
        )

    def bad_filter(self, exc: ValueError, who: Principal) -> Any:
        return self.html(
            page(
                self.title,
                "bad filter",
                [Section("Bad filter", [f"<p>{escape(str(exc))}</p>"])],
                nav=_nav(self.base, "overview", who),
            ),
            400,
        )

    # -- pages --------------------------------------------------------------------------------
    async def home(self, request: Any, who: Principal) -> Any:
        params = self.params_of(request, who)
        try:
            flt = self.filter_of(params)
        except ValueError as exc:
            return self.bad_filter(exc, who)
        shown_budgets = self.budgets if who.admin else ()  # a budget's spend spans tenants
        data = await asyncio.to_thread(
            overview, self.store, flt, shown_budgets, None, 10, params["by"], self.cache_target_error
        )
        return self.html(render_overview(self.base, data, params, self.title, who))

    async def one(self, request: Any, who: Principal) -> Any:
        rid = request.path_params["request_id"]
        d = await asyncio.to_thread(request_detail, self.store, rid, who.scope)
        if d is None:
            return self.not_found(f"no request {escape(rid)} in the ledger", who, "requests")
        return self.html(render_request(self.base, d, self.title, who))

    async def requests_page(self, request: Any, who: Principal) -> Any:
        params = self.params_of(request, who)
        try:
            flt = self.filter_of(params)
        except ValueError as exc:
            return self.bad_filter(exc, who)
        rows = await asyncio.to_thread(expensive_requests, self.store, flt, REQUESTS_SHOWN)
        return self.html(render_requests(self.base, rows, params, self.title, who))

    async def missing(self, request: Any, who: Principal) -> Any:
        return self.not_found("no such page", who, "")

    # -- sessions -----------------------------------------------------------------------------
    async def login(self, request: Any) -> Any:
        base, title = self.base, self.title
        configured = not isinstance(self.login_auth, DenyAllAuth)
        if request.method == "GET":
            if self.open_mode or self.sessions.get(request.cookies.get(COOKIE)) is not None:
                return self.redirect(f"{base}/")
            return self.html(render_login(base, title, configured=configured))
        key = await _form_key(request)
        if key is None:
            return self.html(render_login(base, title, failed=True, configured=configured), 413)
        who = await asyncio.to_thread(self.login_auth.login, key) if key else None
        if who is None or not who.usable:  # a scoped principal without a tenant and cost center has no scope
            return self.html(render_login(base, title, failed=True, configured=configured), 401)
        self.sessions.revoke(request.cookies.get(COOKIE))
        response = self.redirect(f"{base}/")
        response.set_cookie(
            COOKIE,
            self.sessions.create(who),
            max_age=int(self.sessions.ttl),
            path=base,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Any) -> Any:
        self.sessions.revoke(request.cookies.get(COOKIE))
        response = self.redirect(f"{self.base}/login")
        response.delete_cookie(
            COOKIE, path=self.base, httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        return response


def create_dashboard(
    store: LedgerStore,
    budgets: Sequence[Budget] = (),
    title: str = "truecost",
    base: str = "/ui",
    cache_target_error: float | None = None,
    *,
    auth: DashboardAuth | None = None,
    sessions: SessionStore | None = None,
    insecure_open: bool = False,
) -> Any:
    """A Starlette app (mount it at ``base``) reading ``store``; nothing here writes to the ledger.

    ``auth`` decides who logs in. Without one the dashboard fails closed (nobody can log in),
    unless ``insecure_open=True``: then every page is open and shows everything (local tests only).
    """
    from starlette.applications import Starlette
    from starlette.routing import Route

    v = _Views(store, budgets, title, base, cache_target_error, auth, sessions, insecure_open)
    return Starlette(
        routes=[
            Route("/login", v.login, methods=["GET", "POST"]),
            Route("/logout", v.logout, methods=["POST"]),
            Route("/", v.guarded(v.home)),
            Route("/requests", v.guarded(v.requests_page)),
            Route("/request/{request_id}", v.guarded(v.one)),
            Route("/{rest:path}", v.guarded(v.missing)),
        ]
    )
