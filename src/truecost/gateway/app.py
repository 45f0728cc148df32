"""The ASGI app (Starlette): thin routes over the Pipeline. Built by ``create_app`` from a config.

Routes authenticate, read and parse the body at the edge (size, depth and Unicode limits), call
one pipeline entry point and shape the answer; every error leaves in the API's own error shape.
A streamed answer settles its admission when the response ends, whether or not the client
read it to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from truecost.gateway import anthropic_api
from truecost.gateway.config import GatewayConfig
from truecost.gateway.errors import GatewayError
from truecost.gateway.pipeline import Pipeline, Result
from truecost.gateway.validation import read_json_body, validate_messages

log = logging.getLogger("truecost.gateway")


def _error(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _anthropic_error(exc: GatewayError) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": exc.type, "message": exc.message}},
                        status_code=exc.status, headers=exc.headers)


class SettlingStream(StreamingResponse):
    """A streamed answer whose admission is settled when the response ends, however it ends."""

    def __init__(self, content, inner, close, **kw: Any) -> None:
        super().__init__(content, media_type="text/event-stream", **kw)
        self._inner, self._close = inner, close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._inner.aclose()  # a hang-up: the pipeline's generator charges what was used
            if self._close is not None:
                await self._close()


def _stream_response(result: Result, content=None) -> SettlingStream:
    return SettlingStream(content if content is not None else result.stream, result.stream, result.close,
                          headers=result.headers)


async def _read_json(request: Request, limits) -> Any:
    return await read_json_body(request, max_bytes=limits.max_body_bytes, max_depth=limits.max_json_depth)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def _digest_matches(presented: str | None, digest: str | None) -> bool:
    if not presented or digest is None:
        return False
    mine = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()
    return hmac.compare_digest(mine, digest)


class Authenticator:
    """Virtual keys: constant-time lookup, revocation and expiry; development mode only when no key exists."""

    def __init__(self, keys) -> None:
        self.keys = keys

    def __call__(self, request: Request, anthropic: bool = False):
        if not self.keys.has_keys():
            return None  # development mode: no keys configured, requests are unattributed
        presented = _bearer(request)
        if presented is None and anthropic:
            presented = request.headers.get("x-api-key")
        key = self.keys.authenticate(presented, datetime.now(timezone.utc))
        if key is None:
            raise GatewayError(401, "invalid API key", "authentication_error", "invalid_api_key")
        status = key.status(datetime.now(timezone.utc))
        if status != "active":
            raise GatewayError(401, f"API key {key.name!r} has been {status}", "authentication_error",
                               f"{status}_api_key")
        return key


def create_app(config: GatewayConfig, pipeline: Pipeline, keys, on_shutdown=(), dashboard=None,
               sessions=None) -> Starlette:
    authenticate = Authenticator(keys)

    async def run(request: Request, handler) -> Response:
        """Authenticate, read the body, run one pipeline entry point; OpenAI-shaped errors only."""
        try:
            key = authenticate(request)
            body = await _read_json(request, config.limits)
            result = await handler(body, key, request.headers)
        except GatewayError as exc:
            return _error(exc)
        except Exception:  # a bug of ours: log it, answer in the OpenAI shape, never leak a traceback
            log.exception("unhandled error in %s", request.url.path)
            return _error(GatewayError(500, "internal gateway error", "server_error"))
        if result.stream is not None:
            return _stream_response(result)
        return JSONResponse(result.body, status_code=result.status, headers=result.headers)

    async def chat(request: Request) -> Response:
        return await run(request, pipeline.chat)

    async def embeddings(request: Request) -> Response:
        return await run(request, pipeline.embeddings)

    async def messages(request: Request) -> Response:
        try:
            key = authenticate(request, anthropic=True)
            body = await _read_json(request, config.limits)
            validate_messages(body)
            result = await pipeline.chat(anthropic_api.to_openai(body), key, request.headers)
        except GatewayError as exc:
            return _anthropic_error(exc)
        except Exception:
            log.exception("unhandled error in /v1/messages")
            return JSONResponse({"type": "error", "error": {"type": "api_error", "message": "internal gateway error"}},
                                status_code=500)
        if result.stream is not None:
            return _stream_response(result, anthropic_api.stream_from_openai(
                result.stream, body.get("model"), result.headers.get("x-request-id", "")))
        return JSONResponse(anthropic_api.from_openai(result.body, body.get("model")), headers=result.headers)

    async def models(request: Request) -> Response:
        try:
            key = authenticate(request)
        except GatewayError as exc:
            return _error(exc)
        return JSONResponse({"object": "list", "data": [
            {"id": alias, "object": "model", "created": 0, "owned_by": "truecost"}
            for alias in sorted(pipeline.visible(key))]})

    async def cache_invalidate(request: Request) -> Response:
        """Admin: drop the cache entries of changed documents and/or switch the knowledge-base version."""
        from truecost.gateway.keys import actor_for

        presented = _bearer(request)
        try:
            if config.admin_key_sha256 is None:
                raise GatewayError(403, "the admin API is off: set admin_key_sha256 in the config", "permission_error")
            if not _digest_matches(presented, config.admin_key_sha256):
                keys.record_audit(actor_for(presented, "unauthenticated"), "cache.invalidate", None,
                                  outcome="refused:unauthorized")
                raise GatewayError(401, "invalid admin key", "authentication_error", "invalid_admin_key")
            if pipeline.cache is None:
                raise GatewayError(409, "the cache is not enabled", code="cache_disabled")
            body = await _read_json(request, config.limits)
            if not isinstance(body, dict):
                raise GatewayError(400, "request body must be a JSON object")
            doc_ids, version = body.get("doc_ids") or [], body.get("kb_version")
            if not isinstance(doc_ids, list) or not all(isinstance(d, str) and d for d in doc_ids) or (
                    version is not None and not (isinstance(version, str) and version)) or not (doc_ids or version):
                raise GatewayError(400, "send {\"doc_ids\": [\"...\"]} and/or {\"kb_version\": \"...\"}")
        except GatewayError as exc:
            return _error(exc)
        dropped = await asyncio.to_thread(pipeline.cache.invalidate, doc_ids) if doc_ids else 0
        if version is not None:
            dropped += await asyncio.to_thread(pipeline.cache.set_kb_version, version)
        keys.record_audit(actor_for(presented), "cache.invalidate", None,
                          {"doc_ids": len(doc_ids), "kb_version": version, "invalidated": dropped})
        return JSONResponse({"invalidated": dropped, "kb_version": pipeline.cache.kb_version})

    async def openapi(request: Request) -> Response:
        from truecost.gateway.openapi import openapi_spec

        return JSONResponse(openapi_spec())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        if config.metrics_token_sha256 is not None and not _digest_matches(_bearer(request),
                                                                           config.metrics_token_sha256):
            return PlainTextResponse("a bearer token is needed for /metrics\n", status_code=401,
                                     headers={"www-authenticate": "Bearer"})
        return PlainTextResponse(pipeline.metrics.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for fn in on_shutdown:
            result = fn()
            if hasattr(result, "__await__"):
                await result

    from truecost.gateway.admin import admin_routes
    from truecost.integrations.otlp_receiver import otlp_routes

    def authorize_ingest(request: Request):
        """OTLP spans are attributed like requests: the key's fields are pinned, the spans may add the rest."""
        from truecost.gateway.admission import own_attribution
        from truecost.types import Attribution

        try:
            key = authenticate(request)
        except GatewayError:
            return None  # the route answers 401
        return own_attribution(key) or Attribution()

    def on_admin(action: str, target: str | None, outcome: str) -> None:
        pipeline.metrics.inc("truecost_admin_actions_total", action=action, outcome=outcome.split(":")[0])
        if sessions is not None and outcome == "ok" and action in ("key.revoke", "key.rotate") and target:
            sessions.revoke_principal(target)  # a dashboard session of a revoked or rotated key ends now

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/embeddings", embeddings, methods=["POST"]),
              Route("/v1/messages", messages, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/healthz", healthz, methods=["GET"]),
              Route("/admin/cache/invalidate", cache_invalidate, methods=["POST"]),
              *admin_routes(keys, config.admin_key_sha256, on_action=on_admin, known_models=config.models),
              *otlp_routes(pipeline.tracker, config.otlp, authorize=authorize_ingest,
                           max_body_bytes=max(config.limits.max_body_bytes, 8_000_000)),
              Route("/openapi.json", openapi, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"])]
    if dashboard is not None:
        routes.append(Mount("/ui", dashboard))
    return Starlette(routes=routes, lifespan=lifespan)


class GatewayDashboardAuth:
    """Who may log in to /ui: the admin key (sees everything), or an active key with the ``read`` scope
    (sees only its own tenant's and cost center's data)."""

    def __init__(self, admin_digest: str | None, keys) -> None:
        self.admin_digest, self.keys = admin_digest, keys

    def login(self, presented_key: str):
        from truecost.dashboard.auth import Principal

        admin = _digest_matches(presented_key, self.admin_digest)
        key = self.keys.authenticate(presented_key, datetime.now(timezone.utc))
        if admin:
            return Principal(name="admin", admin=True)
        if key is None or key.status(datetime.now(timezone.utc)) != "active" or "read" not in key.scopes:
            return None
        principal = Principal(name=key.name, admin=False, tenant=key.tenant, cost_center=key.cost_center)
        return principal if principal.usable else None


def build(config: GatewayConfig):
    """Composition root: catalog, ledger, tracker, keys, budgets, upstream clients, pipeline, app."""
    from pathlib import Path

    from truecost.gateway.budgets import LocalBudgetGuard
    from truecost.gateway.keys import open_key_store
    from truecost.gateway.ratelimit import RateLimiter
    from truecost.ledger import BatchWriter
    from truecost.ledger.sqlite import SQLiteLedgerStore
    from truecost.pricing.catalog import PriceCatalog
    from truecost.tracking.tracker import Tracker
    from truecost.upstream.anthropic import AnthropicUpstream
    from truecost.upstream.openai_compat import OpenAICompatibleUpstream

    postgres = config.ledger.startswith(("postgresql://", "postgres://"))
    if postgres:
        from truecost.ledger.postgres import PostgresLedgerStore

        store = PostgresLedgerStore(config.ledger, schema=config.ledger_schema)
        spool = Path(config.spool or ".truecost/gateway.spool.jsonl")  # one per replica: set `spool:` in each
    else:
        store = SQLiteLedgerStore(config.ledger)
        spool = Path(config.spool) if config.spool else Path(config.ledger).with_suffix(".spool.jsonl")
    # the write-ahead log beside the spool: a replica killed with -9 loses no event it answered for,
    # and replays the log when it starts again on the same folder
    writer = BatchWriter(store, spool_path=spool, wal_dir=spool.with_suffix(".wal"))
    writer.flush()  # what a crash left in the write-ahead log is in the store before budgets read it
    tracer = None
    if config.otel:  # spans go to whatever tracer provider the process configured (OTel SDK, exporters)
        from opentelemetry import trace

        tracer = trace.get_tracer("truecost.gateway")
    tracker = Tracker(PriceCatalog.load(*config.prices_files), writer, compute=config.compute, otel_tracer=tracer,
                      source="gateway")
    kinds = {"openai": OpenAICompatibleUpstream, "anthropic": AnthropicUpstream}
    upstreams = {name: kinds[u.kind](u.base_url, u.api_key(), connect_timeout=u.connect_timeout,
                                              first_byte_timeout=u.first_byte_timeout, idle_timeout=u.idle_timeout,
                                              max_retries=u.max_retries)
                 for name, u in config.upstreams.items()}
    if config.budgets and postgres:
        from truecost.gateway.budgets import PostgresBudgetGuard

        budgets: Any = PostgresBudgetGuard(config.budgets, config.ledger, config.ledger_schema, store=store)
    else:
        budgets = LocalBudgetGuard(config.budgets, store)
        budgets.prime()  # the current periods' spend, from the ledger: a restart forgets nothing
    keys = open_key_store(config.keys, config.ledger, config.ledger_schema)
    pipeline = Pipeline(config, tracker, upstreams, cache=_build_cache(config), budgets=budgets, limiter=RateLimiter())

    async def close_all():
        for u in upstreams.values():
            await u.aclose()
        writer.close()
        keys.close()
        store.close()

    from truecost.audit.overview import Budget
    from truecost.dashboard.app import create_dashboard

    from truecost.dashboard.auth import SessionStore

    sessions = SessionStore()  # per replica: several replicas behind a balancer need sticky sessions
    dashboard = create_dashboard(store, [Budget(b.field, b.value, b.period, b.limit_usd) for b in config.budgets],
                                 title="truecost gateway", auth=GatewayDashboardAuth(config.admin_key_sha256, keys),
                                 sessions=sessions,
                                 cache_target_error=config.cache.target_error if config.cache.enabled else None)
    app = create_app(config, pipeline, keys, on_shutdown=[close_all], dashboard=dashboard, sessions=sessions)
    app.state.pipeline, app.state.store, app.state.writer, app.state.keys = pipeline, store, writer, keys
    return app


def _build_cache(config: GatewayConfig):
    c = config.cache
    if not c.enabled:
        return None
    from truecost.cache.embedders import make_embedder
    from truecost.cache.entries import MemoryEntryStore
    from truecost.cache.index import ExactIndex, HNSWIndex
    from truecost.cache.panel import make_verifiers
    from truecost.cache.policy import make_policy
    from truecost.cache.semantic import CacheLimits, SemanticCache

    embedder = make_embedder(c.embedder)
    embedder.embed_batch(["warm-up"])  # load (or build, once per machine) at start-up, not in the first request
    if c.backend == "postgres":
        from truecost.cache.pgvector import PgEntryStore, PgVectorIndex

        index, entries = PgVectorIndex(c.url, embedder.dims, prefix=c.prefix), PgEntryStore(c.url, prefix=c.prefix)
    elif c.backend == "redis":
        from truecost.cache.redis_store import RedisEntryStore, RedisVectorIndex

        index, entries = RedisVectorIndex(c.url, embedder.dims, prefix=c.prefix), RedisEntryStore(c.url, prefix=c.prefix)
    else:
        index = HNSWIndex(embedder.dims) if c.index == "hnsw" else ExactIndex(embedder.dims)
        entries = MemoryEntryStore()
    same = make_verifiers(c.equivalence, embedder)
    refusals = {} if c.refusal_patterns is None else {"refusal_patterns": c.refusal_patterns or None}
    return SemanticCache(embedder, index, entries, make_policy(c.policy, c.target_error, 0),
                         same, CacheLimits(max_entries=c.max_entries, ttl_seconds=c.ttl_seconds), kb_version=c.kb_version,
                         **refusals)
