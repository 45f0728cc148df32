"""The dashboard: server-rendered HTML with inline SVG charts (no JavaScript, works offline).

Mounted by the gateway at ``/ui``, or served alone by ``truecost dashboard --db``.
Pages: ``/`` the overview (filters: since, until, cost center, feature, tenant, model, source),
``/requests`` the most expensive requests and ``/request/{id}`` one request. The source of an
event is where it was recorded (gateway, sdk, otlp, litellm, langchain, llamaindex): the
overview breaks requests and spend down by it, and the request pages name it. Every figure
carries ``data-key``/``data-value`` with the raw number from the ledger, so tests compare the
page with the ledger. The pages' HTML is built in ``pages``; this module serves it.

Behind a login (``/login``, ``/logout``): a ``DashboardAuth`` turns a key into a principal, a
server-side session remembers it (HttpOnly, SameSite=Strict cookie scoped to the mount path).
A principal that is not an admin sees only its tenant's and cost center's data: those filters
are forced on the server, and a request of anyone else is not found.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from html import escape
from typing import Any, Sequence
from urllib.parse import parse_qs

from truecost.audit.html import Section, page
from truecost.audit.overview import Budget, LedgerStore, expensive_requests, make_filter, overview, request_detail
from truecost.dashboard.auth import DashboardAuth, DenyAllAuth, Principal, SessionStore
from truecost.dashboard.pages import (
    FILTERS,
    REQUESTS_SHOWN,
    SERIES,
    nav,
    render_login,
    render_overview,
    render_request,
    render_requests,
)

COOKIE = "truecost_session"
MAX_LOGIN_BODY = 8192
HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


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
            page(self.title, "not found", [Section("Not found", [f"<p>{what}</p>"])], nav=nav(self.base, tab, who)), 404
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
                nav=nav(self.base, "overview", who),
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
