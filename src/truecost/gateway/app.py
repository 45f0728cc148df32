"""The gateway's app factory and composition root.

``create_app`` mounts the routes (``routes.py``), the key admin API, the OTLP receiver and the
dashboard on one Starlette app. ``build`` turns a validated config into a running gateway: each
backend is constructed once, by name, from the registry's tables (``registry.py``), and handed
to the pipeline that uses it.
"""

from __future__ import annotations

import contextlib
import inspect
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Iterable

from starlette.applications import Starlette
from starlette.routing import Mount

from truecost.cache.embedders import make_embedder
from truecost.cache.panel import make_verifiers
from truecost.cache.policy import make_policy
from truecost.cache.semantic import CacheLimits, SemanticCache
from truecost.dashboard.app import Budget, create_dashboard
from truecost.dashboard.auth import Principal, SessionStore
from truecost.gateway.cache_judge import build_judge
from truecost.gateway.config import GatewayConfig
from truecost.gateway.keys import KeyStore, open_key_store
from truecost.gateway.metrics import Metrics
from truecost.gateway.pipeline import Pipeline
from truecost.gateway.ratelimit import RateLimiter
from truecost.gateway.registry import BUDGET_GUARDS, CACHE_BACKENDS, LEDGERS, UPSTREAMS, budget_guard_name, ledger_kind
from truecost.gateway.routes import GatewayRoutes, digest_matches
from truecost.ledger import BatchWriter
from truecost.pricing.catalog import PriceCatalog
from truecost.tracking.tracker import Tracker
from truecost.types import ZERO

__all__ = ["build", "create_app", "GatewayDashboardAuth"]


def create_app(
    config: GatewayConfig,
    pipeline: Pipeline,
    keys: KeyStore,
    on_shutdown: Iterable[Callable[[], Any]] = (),
    dashboard: Any = None,
    sessions: SessionStore | None = None,
) -> Starlette:
    """The ASGI app: the gateway's routes, and the dashboard under /ui when given. ``on_shutdown`` callables
    (sync or async) run when the app stops."""
    routes = GatewayRoutes(config, pipeline, keys, sessions).routes()
    if dashboard is not None:
        routes.append(Mount("/ui", dashboard))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for fn in on_shutdown:
            result = fn()
            if inspect.isawaitable(result):
                await result

    return Starlette(routes=routes, lifespan=lifespan)


class GatewayDashboardAuth:
    """Who may log in to /ui: the admin key (sees everything), or an active key with the ``read`` scope
    (sees only its own tenant's and cost center's data)."""

    def __init__(self, admin_digest: str | None, keys: KeyStore) -> None:
        self.admin_digest, self.keys = admin_digest, keys

    def login(self, presented_key: str) -> Principal | None:
        admin = digest_matches(presented_key, self.admin_digest)
        key = self.keys.authenticate(presented_key, datetime.now(timezone.utc))
        if admin:
            return Principal(name="admin", admin=True)
        if key is None or key.status(datetime.now(timezone.utc)) != "active" or "read" not in key.scopes:
            return None
        principal = Principal(name=key.name, admin=False, tenant=key.tenant, cost_center=key.cost_center)
        return principal if principal.usable else None


def build(config: GatewayConfig) -> Starlette:
    """Composition root: ledger, tracker, upstream clients, budgets, keys, cache, pipeline, dashboard, app."""
    ledger = LEDGERS[ledger_kind(config.ledger)](config)
    store = ledger.store
    # the write-ahead log beside the spool: a replica killed with -9 loses no event it answered for,
    # and replays the log when it starts again on the same folder
    writer = BatchWriter(store, spool_path=ledger.spool, wal_dir=ledger.spool.with_suffix(".wal"))
    writer.flush()  # what a crash left in the write-ahead log is in the store before budgets read it
    tracker = Tracker(
        PriceCatalog.load(*config.prices_files),
        writer,
        compute=config.compute,
        otel_tracer=_tracer(config),
        source="gateway",
    )
    upstreams = {name: UPSTREAMS[u.kind](u) for name, u in config.upstreams.items()}
    budgets = BUDGET_GUARDS[budget_guard_name(config)](config, store)
    keys = open_key_store(config.keys, config.ledger, config.ledger_schema)
    metrics = Metrics()
    judge = build_judge(config, upstreams, tracker, metrics)  # the cache's LLM judge calls a configured upstream
    cache = build_cache(config, {"judge": judge} if judge is not None else None)
    pipeline = Pipeline(
        config,
        tracker,
        upstreams,
        metrics,
        cache,
        budgets=budgets,
        limiter=RateLimiter(),
        judge_reserve=judge.reserve if judge is not None else ZERO,
    )

    async def close_all() -> None:
        for u in upstreams.values():
            await u.aclose()
        writer.close()
        budgets.close()
        keys.close()
        store.close()

    sessions = SessionStore()  # per replica: several replicas behind a balancer need sticky sessions
    dashboard = create_dashboard(
        store,
        [Budget(b.field, b.value, b.period, b.limit_usd) for b in config.budgets],
        title="truecost gateway",
        auth=GatewayDashboardAuth(config.admin_key_sha256, keys),
        sessions=sessions,
        cache_target_error=config.cache.target_error if config.cache.enabled else None,
    )
    app = create_app(config, pipeline, keys, on_shutdown=[close_all], dashboard=dashboard, sessions=sessions)
    app.state.pipeline, app.state.store, app.state.writer, app.state.keys = pipeline, store, writer, keys
    return app


def _tracer(config: GatewayConfig) -> Any:
    """With ``otel: true``, spans go to whatever tracer provider the process configured (OTel SDK, exporters)."""
    if not config.otel:
        return None
    from opentelemetry import trace  # optional: the otel extra

    return trace.get_tracer("truecost.gateway")


def build_cache(config: GatewayConfig, supplied: dict[str, Any] | None = None) -> SemanticCache | None:
    """The semantic cache the config describes (None when it is off); its embedder is loaded now, not in the
    first request. ``supplied``: verifier sources the composition root built (the LLM judge), by name."""
    c = config.cache
    if not c.enabled:
        return None
    embedder = make_embedder(c.embedder)
    embedder.embed_batch(["warm-up"])  # load (or build, once per machine) at start-up, not in the first request
    index, entries = CACHE_BACKENDS[c.backend](c, embedder.dims)
    same = make_verifiers(c.equivalence, embedder, supplied)
    refusals: dict[str, Any] = {} if c.refusal_patterns is None else {"refusal_patterns": c.refusal_patterns or None}
    return SemanticCache(
        embedder,
        index,
        entries,
        make_policy(c.policy, c.target_error, 0),
        same,
        CacheLimits(max_entries=c.max_entries, ttl_seconds=c.ttl_seconds),
        kb_version=c.kb_version,
        regenerate_window=c.feedback.regenerate_window_seconds if c.feedback.enabled else None,
        regenerate_by=c.feedback.regenerate_by,
        **refusals,
    )
