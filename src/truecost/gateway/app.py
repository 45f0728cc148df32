"""The ASGI app (Starlette): thin routes over the Pipeline. Built by ``create_app`` from a config."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from truecost.gateway.config import GatewayConfig
from truecost.gateway.pipeline import GatewayError, Pipeline

log = logging.getLogger("truecost.gateway")


def _error(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise GatewayError(413, f"request body is larger than {limit:,} bytes", code="body_too_large")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise GatewayError(413, f"request body is larger than {limit:,} bytes", code="body_too_large")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise GatewayError(400, "request body is not valid UTF-8") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise GatewayError(400, f"request body is not valid JSON: {exc}") from None


def create_app(config: GatewayConfig, pipeline: Pipeline, on_shutdown=()) -> Starlette:
    def authenticate(request: Request, anthropic: bool = False):
        if not config.keys:
            return None  # development mode: no keys configured, requests are unattributed
        auth = request.headers.get("authorization", "")
        presented = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if presented is None and anthropic:
            presented = request.headers.get("x-api-key")
        key = config.key_for(presented)
        if key is None:
            raise GatewayError(401, "invalid API key", "authentication_error", "invalid_api_key")
        if key.revoked:
            raise GatewayError(401, f"API key {key.name!r} has been revoked", "authentication_error", "revoked_api_key")
        return key

    async def run(request: Request, handler) -> Response:
        """Authenticate, read the body, run one pipeline entry point; OpenAI-shaped errors only."""
        try:
            key = authenticate(request)
            body = await _read_json(request, config.max_body_bytes)
            result = await handler(body, key, request.headers)
        except GatewayError as exc:
            return _error(exc)
        except Exception:  # a bug of ours: log it, answer in the OpenAI shape, never leak a traceback
            log.exception("unhandled error in %s", request.url.path)
            return _error(GatewayError(500, "internal gateway error", "server_error"))
        if result.stream is not None:
            return StreamingResponse(result.stream, media_type="text/event-stream", headers=result.headers)
        return JSONResponse(result.body, status_code=result.status, headers=result.headers)

    async def chat(request: Request) -> Response:
        return await run(request, pipeline.chat)

    async def embeddings(request: Request) -> Response:
        return await run(request, pipeline.embeddings)

    async def messages(request: Request) -> Response:
        from truecost.gateway import anthropic_api

        try:
            key = authenticate(request, anthropic=True)
            body = await _read_json(request, config.max_body_bytes)
            result = await pipeline.chat(anthropic_api.to_openai(body), key, request.headers)
        except GatewayError as exc:
            return JSONResponse({"type": "error", "error": {"type": exc.type, "message": exc.message}},
                                status_code=exc.status, headers=exc.headers)
        except Exception:
            log.exception("unhandled error in /v1/messages")
            return JSONResponse({"type": "error", "error": {"type": "api_error", "message": "internal gateway error"}},
                                status_code=500)
        if result.stream is not None:
            return StreamingResponse(anthropic_api.stream_from_openai(result.stream, body.get("model"),
                                                                      result.headers.get("x-request-id", "")),
                                     media_type="text/event-stream", headers=result.headers)
        return JSONResponse(anthropic_api.from_openai(result.body, body.get("model")), headers=result.headers)

    async def models(request: Request) -> Response:
        try:
            authenticate(request)
        except GatewayError as exc:
            return _error(exc)
        return JSONResponse({"object": "list", "data": [
            {"id": alias, "object": "model", "created": 0, "owned_by": "truecost"} for alias in sorted(config.models)]})

    async def cache_invalidate(request: Request) -> Response:
        """Admin: drop the cache entries of changed documents and/or switch the knowledge-base version."""
        import hashlib

        try:
            auth = request.headers.get("authorization", "")
            presented = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if config.admin_key_sha256 is None:
                raise GatewayError(403, "the admin API is off: set admin_key_sha256 in the config", "permission_error")
            if not presented or hashlib.sha256(presented.encode()).hexdigest() != config.admin_key_sha256:
                raise GatewayError(401, "invalid admin key", "authentication_error", "invalid_admin_key")
            if pipeline.cache is None:
                raise GatewayError(409, "the cache is not enabled", code="cache_disabled")
            body = await _read_json(request, config.max_body_bytes)
            doc_ids, version = (body or {}).get("doc_ids") or [], (body or {}).get("kb_version")
            if not isinstance(doc_ids, list) or not all(isinstance(d, str) and d for d in doc_ids) or (
                    version is not None and not (isinstance(version, str) and version)) or not (doc_ids or version):
                raise GatewayError(400, "send {\"doc_ids\": [\"...\"]} and/or {\"kb_version\": \"...\"}")
        except GatewayError as exc:
            return _error(exc)
        dropped = await asyncio.to_thread(pipeline.cache.invalidate, doc_ids) if doc_ids else 0
        if version is not None:
            dropped += await asyncio.to_thread(pipeline.cache.set_kb_version, version)
        return JSONResponse({"invalidated": dropped, "kb_version": pipeline.cache.kb_version})

    async def openapi(request: Request) -> Response:
        from truecost.gateway.openapi import openapi_spec

        return JSONResponse(openapi_spec())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(pipeline.metrics.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for fn in on_shutdown:
            result = fn()
            if hasattr(result, "__await__"):
                await result

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/embeddings", embeddings, methods=["POST"]),
                             Route("/v1/messages", messages, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"]),
                             Route("/healthz", healthz, methods=["GET"]),
                             Route("/admin/cache/invalidate", cache_invalidate, methods=["POST"]),
                             Route("/openapi.json", openapi, methods=["GET"]),
                             Route("/metrics", metrics, methods=["GET"])], lifespan=lifespan)


def build(config: GatewayConfig):
    """Composition root: catalog, ledger, tracker, upstream clients, pipeline, app."""
    from pathlib import Path

    from truecost.ledger import BatchWriter
    from truecost.ledger.sqlite import SQLiteLedgerStore
    from truecost.pricing.catalog import PriceCatalog
    from truecost.tracking.tracker import Tracker
    from truecost.upstream.openai_compat import OpenAICompatibleUpstream

    if config.ledger.startswith(("postgresql://", "postgres://")):
        from truecost.ledger.postgres import PostgresLedgerStore

        store = PostgresLedgerStore(config.ledger, schema=config.ledger_schema)
        spool = Path(config.spool or ".truecost/gateway.spool.jsonl")  # one per replica: set `spool:` in each
    else:
        store = SQLiteLedgerStore(config.ledger)
        spool = Path(config.spool) if config.spool else Path(config.ledger).with_suffix(".spool.jsonl")
    # the write-ahead log beside the spool: a replica killed with -9 loses no event it answered for,
    # and replays the log when it starts again on the same folder
    writer = BatchWriter(store, spool_path=spool, wal_dir=spool.with_suffix(".wal"))
    tracer = None
    if config.otel:  # spans go to whatever tracer provider the process configured (OTel SDK, exporters)
        from opentelemetry import trace

        tracer = trace.get_tracer("truecost.gateway")
    tracker = Tracker(PriceCatalog.load(*config.prices_files), writer, compute=config.compute, otel_tracer=tracer)
    from truecost.upstream.anthropic import AnthropicUpstream

    kinds = {"openai": OpenAICompatibleUpstream, "anthropic": AnthropicUpstream}
    upstreams = {name: kinds[u.kind](u.base_url, u.api_key(), timeout=u.timeout, max_retries=u.max_retries)
                 for name, u in config.upstreams.items()}
    pipeline = Pipeline(config, tracker, upstreams, cache=_build_cache(config))
    if config.budgets and config.ledger.startswith(("postgresql://", "postgres://")):
        from truecost.gateway.budgets import PostgresBudgetGuard

        pipeline.budgets = PostgresBudgetGuard(config.budgets, config.ledger, config.ledger_schema)  # one budget, all replicas

    async def close_all():
        for u in upstreams.values():
            await u.aclose()
        writer.close()
        store.close()

    app = create_app(config, pipeline, on_shutdown=[close_all])
    from truecost.audit.overview import Budget
    from truecost.dashboard.app import create_dashboard

    budgets = [Budget(b.field, b.value, b.period, b.limit_usd) for b in config.budgets]
    app.mount("/ui", create_dashboard(store, budgets, title="truecost gateway",
                                      cache_target_error=config.cache.target_error if config.cache.enabled else None))
    app.state.pipeline, app.state.store, app.state.writer = pipeline, store, writer
    return app


def _build_cache(config: GatewayConfig):
    c = config.cache
    if not c.enabled:
        return None
    from truecost.cache.embedders import make_embedder
    from truecost.cache.entries import MemoryEntryStore
    from truecost.cache.equivalence import EmbeddingMatch, NormalisedMatch
    from truecost.cache.index import ExactIndex, HNSWIndex
    from truecost.cache.policy import make_policy
    from truecost.cache.semantic import CacheLimits, SemanticCache

    embedder = make_embedder(c.embedder)
    if c.backend == "postgres":
        from truecost.cache.pgvector import PgEntryStore, PgVectorIndex

        index, entries = PgVectorIndex(c.url, embedder.dims, prefix=c.prefix), PgEntryStore(c.url, prefix=c.prefix)
    elif c.backend == "redis":
        from truecost.cache.redis_store import RedisEntryStore, RedisVectorIndex

        index, entries = RedisVectorIndex(c.url, embedder.dims, prefix=c.prefix), RedisEntryStore(c.url, prefix=c.prefix)
    else:
        index = HNSWIndex(embedder.dims) if c.index == "hnsw" else ExactIndex(embedder.dims)
        entries = MemoryEntryStore()
    kind, _, arg = c.equivalence.partition(":")
    same = EmbeddingMatch(embedder, float(arg) if arg else 0.92) if kind == "embedding" else NormalisedMatch()
    return SemanticCache(embedder, index, entries, make_policy(c.policy, c.target_error, 0),
                         same, CacheLimits(max_entries=c.max_entries, ttl_seconds=c.ttl_seconds), kb_version=c.kb_version)
