"""The gateway's HTTP routes: thin handlers over the Pipeline.

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
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from truecost.gateway import anthropic_api
from truecost.gateway.admin import _FailureGate, admin_routes
from truecost.gateway.admission import own_attribution
from truecost.gateway.config import ATTRIBUTION_HEADER_FIELDS, GatewayConfig
from truecost.gateway.errors import GatewayError
from truecost.gateway.exchange import Result
from truecost.gateway.feedback import FeedbackDesk
from truecost.gateway.keys import KeyRecord, KeyStore, actor_for
from truecost.gateway.openapi import openapi_spec
from truecost.gateway.pipeline import Pipeline
from truecost.gateway.validation import read_json_body, validate_messages
from truecost.gateway.ratelimit import RateLimited, RateLimiter
from truecost.integrations.otlp_config import IngestGrant, IngestLimited
from truecost.integrations.otlp_receiver import otlp_routes
from truecost.types import ATTRIBUTION_FIELDS, Attribution

log = logging.getLogger("truecost.gateway")

Handler = Callable[[Any, Any, Mapping[str, str]], Awaitable[Result]]


def error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _anthropic_error(exc: GatewayError) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": exc.type, "message": exc.message}},
        status_code=exc.status,
        headers=exc.headers,
    )


class SettlingStream(StreamingResponse):
    """A streamed answer whose admission is settled when the response ends, however it ends."""

    def __init__(
        self, content: AsyncIterator[bytes], inner: Any, close: Callable[[], Awaitable[None]] | None, **kw: Any
    ) -> None:
        super().__init__(content, media_type="text/event-stream", **kw)
        self._inner, self._close = inner, close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._inner.aclose()  # a hang-up: the pipeline's generator charges what was used
            if self._close is not None:
                await self._close()


def _stream_response(result: Result, content: AsyncIterator[bytes] | None = None) -> SettlingStream:
    """The result's stream (or ``content`` made from it) as the response; closing it settles the request."""
    stream: Any = content if content is not None else result.stream
    return SettlingStream(stream, result.stream, result.close, headers=result.headers)


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def digest_matches(presented: str | None, digest: str | None) -> bool:
    if not presented or digest is None:
        return False
    mine = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()
    return hmac.compare_digest(mine, digest)


class Authenticator:
    """Virtual keys: constant-time lookup, revocation and expiry; development mode only when no key exists."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def __call__(self, request: Request, anthropic: bool = False) -> KeyRecord | None:
        if not self.keys.has_keys():
            return None  # development mode: no keys configured, requests are unattributed
        presented = bearer(request)
        if presented is None and anthropic:
            presented = request.headers.get("x-api-key")
        key = self.keys.authenticate(presented, datetime.now(timezone.utc))
        if key is None:
            raise GatewayError(401, "invalid API key", "authentication_error", "invalid_api_key")
        status = key.status(datetime.now(timezone.utc))
        if status != "active":
            raise GatewayError(
                401, f"API key {key.name!r} has been {status}", "authentication_error", f"{status}_api_key"
            )
        return key


def _invalidation(body: Any) -> tuple[list[str], str | None]:
    """The documents and/or knowledge-base version of a cache invalidation request."""
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object")
    doc_ids, version = body.get("doc_ids") or [], body.get("kb_version")
    if (
        not isinstance(doc_ids, list)
        or not all(isinstance(d, str) and d for d in doc_ids)
        or (version is not None and not (isinstance(version, str) and version))
        or not (doc_ids or version)
    ):
        raise GatewayError(400, 'send {"doc_ids": ["..."]} and/or {"kb_version": "..."}')
    return doc_ids, version


class GatewayRoutes:
    """The handlers of one gateway: the OpenAI and Anthropic APIs, models, cache feedback and invalidation,
    health, metrics and the OpenAPI document; the key admin API and the OTLP receiver are mounted beside them."""

    def __init__(self, config: GatewayConfig, pipeline: Pipeline, keys: KeyStore, sessions: Any = None) -> None:
        self.config, self.pipeline, self.keys, self.sessions = config, pipeline, keys, sessions
        self.authenticate = Authenticator(keys)
        self.feedback = FeedbackDesk(pipeline, keys.record_audit)
        self.refused_admin = _FailureGate()  # audit rows for wrong admin keys, every admin route: 30 a minute
        self.ingest_limiter = RateLimiter()  # spans per minute per key into POST /v1/traces

    def routes(self) -> list[BaseRoute]:
        config = self.config
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/v1/cache/feedback", self.cache_feedback, methods=["POST"]),
            Route("/admin/cache/invalidate", self.cache_invalidate, methods=["POST"]),
            *admin_routes(
                self.keys,
                config.admin_key_sha256,
                on_action=self.on_admin,
                known_models=config.models,
                gate=self.refused_admin,
            ),
            *otlp_routes(
                self.pipeline.tracker,
                config.otlp,
                authorize=self.authorize_ingest,
                max_body_bytes=max(config.limits.max_body_bytes, 8_000_000),
            ),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def _read_json(self, request: Request) -> Any:
        limits = self.config.limits
        return await read_json_body(request, max_bytes=limits.max_body_bytes, max_depth=limits.max_json_depth)

    async def _run(self, request: Request, handler: Handler) -> Response:
        """Authenticate, read the body, run one pipeline entry point; OpenAI-shaped errors only."""
        try:
            key = self.authenticate(request)
            body = await self._read_json(request)
            result = await handler(body, key, request.headers)
        except GatewayError as exc:
            return error_response(exc)
        except Exception:  # a bug of ours: log it, answer in the OpenAI shape, never leak a traceback
            log.exception("unhandled error in %s", request.url.path)
            return error_response(GatewayError(500, "internal gateway error", "server_error"))
        if result.stream is not None:
            return _stream_response(result)
        return JSONResponse(result.body, status_code=result.status, headers=result.headers)

    async def chat(self, request: Request) -> Response:
        return await self._run(request, self.pipeline.chat)

    async def embeddings(self, request: Request) -> Response:
        return await self._run(request, self.pipeline.embeddings)

    async def cache_feedback(self, request: Request) -> Response:
        """A key reports a cache hit it was served as wrong or right (``truecost.gateway.feedback``)."""
        return await self._run(request, self.feedback)

    async def messages(self, request: Request) -> Response:
        """The Anthropic Messages API over the same pipeline, with Anthropic-shaped answers and errors."""
        try:
            key = self.authenticate(request, anthropic=True)
            body = await self._read_json(request)
            validate_messages(body)
            result = await self.pipeline.chat(anthropic_api.to_openai(body), key, request.headers)
        except GatewayError as exc:
            return _anthropic_error(exc)
        except Exception:
            log.exception("unhandled error in /v1/messages")
            return JSONResponse(
                {"type": "error", "error": {"type": "api_error", "message": "internal gateway error"}}, status_code=500
            )
        if result.stream is not None:
            return _stream_response(
                result,
                anthropic_api.stream_from_openai(
                    result.stream, body.get("model"), result.headers.get("x-request-id", "")
                ),
            )
        return JSONResponse(anthropic_api.from_openai(result.body or {}, body.get("model")), headers=result.headers)

    async def models(self, request: Request) -> Response:
        try:
            key = self.authenticate(request)
        except GatewayError as exc:
            return error_response(exc)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": alias, "object": "model", "created": 0, "owned_by": "truecost"}
                    for alias in sorted(self.pipeline.visible(key))
                ],
            }
        )

    async def cache_invalidate(self, request: Request) -> Response:
        """Admin: drop the cache entries of changed documents and/or switch the knowledge-base version."""
        presented, cache = bearer(request), self.pipeline.cache
        try:
            if self.config.admin_key_sha256 is None:
                raise GatewayError(403, "the admin API is off: set admin_key_sha256 in the config", "permission_error")
            if not digest_matches(presented, self.config.admin_key_sha256):
                skipped = self.refused_admin.admit()
                if skipped is not None:  # a flood of wrong keys cannot bury the admin rows
                    details = {"rows_skipped_before": skipped} if skipped else None
                    self.keys.record_audit(
                        actor_for(presented, "unauthenticated"),
                        "cache.invalidate",
                        None,
                        details,
                        outcome="refused:unauthorized",
                    )
                raise GatewayError(401, "invalid admin key", "authentication_error", "invalid_admin_key")
            if cache is None:
                raise GatewayError(409, "the cache is not enabled", code="cache_disabled")
            doc_ids, version = _invalidation(await self._read_json(request))
        except GatewayError as exc:
            return error_response(exc)
        dropped = await asyncio.to_thread(cache.invalidate, doc_ids) if doc_ids else 0
        if version is not None:
            dropped += await asyncio.to_thread(cache.set_kb_version, version)
        self.keys.record_audit(
            actor_for(presented),
            "cache.invalidate",
            None,
            {"doc_ids": len(doc_ids), "kb_version": version, "invalidated": dropped},
        )
        return JSONResponse({"invalidated": dropped, "kb_version": cache.kb_version})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_spec())

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        token = self.config.metrics_token_sha256
        if token is not None and not digest_matches(bearer(request), token):
            return PlainTextResponse(
                "a bearer token is needed for /metrics\n", status_code=401, headers={"www-authenticate": "Bearer"}
            )
        return PlainTextResponse(self.pipeline.metrics.render(), media_type="text/plain; version=0.0.4")

    def authorize_ingest(self, request: Request) -> IngestGrant | None:
        """OTLP spans are attributed like requests: the key's cost center, team, tenant and environment stand
        (a span may state one only when the key allows that header), spans may add feature, user and tags;
        repeats are found per key. Development mode (no keys): spans state everything."""
        try:
            key = self.authenticate(request)
        except GatewayError:
            return None  # the route answers 401
        admit = self._ingest_admit(key.name if key is not None else "")
        if key is None:
            return IngestGrant(Attribution(), admit=admit)
        locked = set(ATTRIBUTION_HEADER_FIELDS) - set(key.allow_attribution_headers)
        return IngestGrant(
            own_attribution(key) or Attribution(),
            frozenset(f for f in ATTRIBUTION_FIELDS if f not in locked),
            principal=key.name,
            admit=admit,
        )

    def _ingest_admit(self, sender: str) -> Callable[[int], None]:
        """The sender's spans-per-minute allowance (``limits.ingest_spans_per_minute``, per replica)."""
        limit = self.config.limits.ingest_spans_per_minute

        def admit(spans: int) -> None:
            try:
                self.ingest_limiter.check(sender, None, limit, spans)
            except RateLimited as exc:
                self.pipeline.metrics.inc("truecost_rate_limited_total", limit="ingest_spans")
                raise IngestLimited(
                    f"ingest limit of {limit:,} spans per minute reached for this key", exc.retry_after_header
                ) from None

        return admit

    def on_admin(self, action: str, target: str | None, outcome: str) -> None:
        self.pipeline.metrics.inc("truecost_admin_actions_total", action=action, outcome=outcome.split(":")[0])
        if self.sessions is not None and outcome == "ok" and action in ("key.revoke", "key.rotate") and target:
            self.sessions.revoke_principal(target)  # a dashboard session of a revoked or rotated key ends now
