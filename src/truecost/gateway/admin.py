"""The key admin API under /admin: create, rotate, revoke and list keys, read the audit log.

Authentication: ``Authorization: Bearer <admin key>``, whose sha256 must equal the config's
``admin_key_sha256`` (compared with ``hmac.compare_digest``); with no admin key configured
every route answers 403. Every call lands in the audit table -- refused logins too (at most
30 rows a minute for those per replica; the next row counts the ones left out) -- with the
caller named by a fingerprint of the key it presented, never the key.

    POST /admin/keys                 {"name": ..., "cost_center": ..., ...}  -> 201 {"key": {...}, "secret": "..."}
    POST /admin/keys/{name}/rotate   {"grace_seconds": 0, "reason": "..."}   -> {"key": {...}, "secret": "..."}
    POST /admin/keys/{name}/revoke   {"reason": "..."}                       -> {"key": {...}}
    GET  /admin/keys                                                         -> {"keys": [{...}, ...]}
    GET  /admin/audit?limit=100                                              -> {"entries": [{...}, ...]}

The secret is in the answer to create and rotate only; it is stored nowhere.
"""

from __future__ import annotations

import hmac
import threading
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from truecost.errors import TruecostError
from truecost.gateway.errors import GatewayError
from truecost.gateway.keys import InvalidKeySpec, KeyConflict, KeyNotFound, KeyStore, ReadOnlyKey, actor_for, digest_of
from truecost.gateway.validation import parse_json_body, read_body

MAX_BODY = 64 * 1024
CREATE_FIELDS = (
    "name",
    "cost_center",
    "team",
    "tenant",
    "environment",
    "models",
    "rpm",
    "tpm",
    "expires_at",
    "scopes",
    "allow_attribution_headers",
)
ROTATE_FIELDS = ("grace_seconds", "reason")
REVOKE_FIELDS = ("reason",)
_STATUS = {
    InvalidKeySpec: (400, "invalid_request_error", "invalid_key_spec"),
    KeyNotFound: (404, "not_found_error", "key_not_found"),
    KeyConflict: (409, "conflict_error", "key_conflict"),
    ReadOnlyKey: (409, "conflict_error", "config_key_read_only"),
}
_NO_STORE = {"cache-control": "no-store"}


class AdminError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": self.message, "type": self.type, "code": self.code, "param": None}},
            status_code=self.status,
            headers={**_NO_STORE, **self.headers},
        )


class _FailureGate:
    """At most ``per_minute`` audit rows for refused logins; the next written row counts the skipped ones."""

    def __init__(self, per_minute: int = 30, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self._clock = per_minute, clock
        self._allowance, self._at, self.suppressed = float(per_minute), clock(), 0
        self._lock = threading.Lock()

    def admit(self) -> int | None:
        """None: skip this row; else the number of rows skipped since the last one written."""
        with self._lock:
            now = self._clock()
            self._allowance = min(float(self.per_minute), self._allowance + (now - self._at) * self.per_minute / 60)
            self._at = now
            if self._allowance < 1:
                self.suppressed += 1
                return None
            self._allowance -= 1
            skipped, self.suppressed = self.suppressed, 0
            return skipped


def is_admin(presented: str | None, admin_digest: str | None) -> bool:
    """Is ``presented`` the admin key? (sha256 compared in constant time; never, when no admin key is set)."""
    digest = digest_of(presented) if presented and admin_digest else None
    return digest is not None and admin_digest is not None and hmac.compare_digest(digest, admin_digest)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() or None if auth[:7].lower() == "bearer " else None


async def _body(request: Request, allowed: Iterable[str], optional: bool) -> dict:
    """A JSON object of at most MAX_BODY bytes with only ``allowed`` fields (an empty body is {} when optional)."""
    try:  # the gateway's one body reader: size, UTF-8, JSON, depth, lone surrogates
        raw = await read_body(request, max_bytes=MAX_BODY)
        if not raw.strip() and optional:
            return {}
        body = parse_json_body(raw)
    except GatewayError as exc:
        raise AdminError(exc.status, exc.message, code=exc.code if exc.status == 413 else None) from None
    if not isinstance(body, dict):
        raise AdminError(400, "request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise AdminError(
            400, f"unknown field(s): {', '.join(unknown)[:300]}; allowed: {', '.join(allowed)}", code="unknown_field"
        )
    return body


def _reason(body: dict) -> str | None:
    reason = body.get("reason")
    if reason is not None and not (isinstance(reason, str) and len(reason) <= 500):
        raise AdminError(400, "reason must be a string of at most 500 characters")
    return reason


class KeyAdmin:
    """The handlers of the key admin API over one KeyStore. ``on_action(action, target, outcome)`` is called
    after every call (for metrics); ``known_models``, when given, are the aliases a key's ``models`` may name."""

    def __init__(
        self,
        store: KeyStore,
        admin_digest: str | None,
        *,
        on_action: Callable[[str, str | None, str], Any] | None = None,
        known_models: Iterable[str] | None = None,
        gate: _FailureGate | None = None,
    ) -> None:
        self.store, self.admin_digest, self.on_action = store, admin_digest, on_action
        self.models = None if known_models is None else tuple(known_models)
        self.gate = gate or _FailureGate()  # audit rows for refused admin keys, shared by every admin route

    def routes(self) -> list[Route]:
        return [
            Route("/admin/keys", self.create, methods=["POST"]),
            Route("/admin/keys", self.list_keys, methods=["GET"]),
            Route("/admin/keys/{name}/rotate", self.rotate, methods=["POST"]),
            Route("/admin/keys/{name}/revoke", self.revoke, methods=["POST"]),
            Route("/admin/audit", self.audit, methods=["GET"]),
        ]

    def _notify(self, action: str, target: str | None, outcome: str) -> None:
        if self.on_action is not None:
            self.on_action(action, target, outcome)

    async def _authorize(self, request: Request, action: str, target: str | None) -> str:
        """The caller's audit name when it presented the admin key; else the refusal, audited (rate-limited)."""
        presented = _bearer(request)
        if self.admin_digest is None:
            error = AdminError(
                403, "the admin API is off: set admin_key_sha256 in the config", "permission_error", "admin_api_off"
            )
        else:
            if is_admin(presented, self.admin_digest):
                return actor_for(presented, "admin")
            error = AdminError(
                401, "invalid admin key", "authentication_error", "invalid_admin_key", {"www-authenticate": "Bearer"}
            )
        skipped = self.gate.admit()
        if skipped is not None:
            details = {"path": request.url.path[:200], "method": request.method, "status": error.status}
            if skipped:
                details["rows_skipped_before"] = skipped
            await run_in_threadpool(
                self.store.record_audit,
                actor_for(presented, "unauthenticated"),
                action,
                target,
                details,
                "refused:" + ("admin_off" if error.status == 403 else "unauthorized"),
            )
        self._notify(action, target, "refused")
        raise error

    async def _handle(
        self, request: Request, action: str, target: str | None, fn: Callable[[str], Awaitable[tuple[int, dict]]]
    ) -> Response:
        """Authorize, run ``fn(actor)`` -> (status, payload); every outcome audited and notified."""
        actor = None
        try:
            actor = await self._authorize(request, action, target)
            status, payload = await fn(actor)
        except AdminError as exc:
            if actor is not None:  # refused logins were recorded (and notified) by _authorize
                await run_in_threadpool(
                    self.store.record_audit,
                    actor,
                    action,
                    target,
                    {"reason": exc.message},
                    f"refused:{exc.code or exc.status}",
                )
                self._notify(action, target, "refused")
            return exc.response()
        except tuple(_STATUS) as exc:  # the store wrote the audit row already
            status, type_, code = _STATUS[type(exc)]
            self._notify(action, target, "refused")
            return AdminError(status, str(exc), type_, code).response()
        except TruecostError:  # the database is unreachable: the store logged it
            self._notify(action, target, "error")
            return AdminError(
                503, "the key store is unavailable; try again", "server_error", "key_store_unavailable"
            ).response()
        self._notify(action, target, "ok")
        return JSONResponse(payload, status_code=status, headers=_NO_STORE)

    async def create(self, request: Request) -> Response:
        async def go(actor: str) -> tuple[int, dict]:
            body = await _body(request, CREATE_FIELDS, optional=False)
            if "name" not in body:
                raise AdminError(400, "missing field: name")
            record, secret = await run_in_threadpool(
                lambda: self.store.create(**body, actor=actor, known_models=self.models)
            )
            return 201, {"key": record.public(_now()), "secret": secret}

        return await self._handle(request, "key.create", None, go)

    async def rotate(self, request: Request) -> Response:
        name = request.path_params["name"]

        async def go(actor: str) -> tuple[int, dict]:
            body = await _body(request, ROTATE_FIELDS, optional=True)
            record, secret = await run_in_threadpool(
                lambda: self.store.rotate(name, actor, grace_seconds=body.get("grace_seconds", 0), reason=_reason(body))
            )
            return 200, {"key": record.public(_now()), "secret": secret}

        return await self._handle(request, "key.rotate", name, go)

    async def revoke(self, request: Request) -> Response:
        name = request.path_params["name"]

        async def go(actor: str) -> tuple[int, dict]:
            body = await _body(request, REVOKE_FIELDS, optional=True)
            record = await run_in_threadpool(lambda: self.store.revoke(name, actor, reason=_reason(body)))
            return 200, {"key": record.public(_now())}

        return await self._handle(request, "key.revoke", name, go)

    async def list_keys(self, request: Request) -> Response:
        async def go(actor: str) -> tuple[int, dict]:
            if request.query_params:
                raise AdminError(400, f"unknown query parameter(s): {', '.join(sorted(request.query_params))[:300]}")
            records = await run_in_threadpool(self.store.list)
            await run_in_threadpool(self.store.record_audit, actor, "key.list", None, {"count": len(records)})
            at = _now()
            return 200, {"keys": [r.public(at) for r in records]}

        return await self._handle(request, "key.list", None, go)

    async def audit(self, request: Request) -> Response:
        async def go(actor: str) -> tuple[int, dict]:
            unknown = sorted(set(request.query_params) - {"limit"})
            if unknown:
                raise AdminError(400, f"unknown query parameter(s): {', '.join(unknown)[:300]}; allowed: limit")
            raw = request.query_params.get("limit", "100")
            if not (raw.isdigit() and 1 <= int(raw) <= 1000):
                raise AdminError(400, "limit must be a whole number from 1 to 1000")
            await run_in_threadpool(self.store.record_audit, actor, "audit.read", None, {"limit": int(raw)})
            return 200, {"entries": await run_in_threadpool(self.store.audit, int(raw))}

        return await self._handle(request, "audit.read", None, go)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def admin_routes(
    store: KeyStore,
    admin_digest: str | None,
    *,
    on_action: Callable[[str, str | None, str], Any] | None = None,
    known_models: Iterable[str] | None = None,
    gate: _FailureGate | None = None,
) -> list[Route]:
    """The /admin/keys and /admin/audit routes (see ``KeyAdmin``)."""
    return KeyAdmin(store, admin_digest, on_action=on_action, known_models=known_models, gate=gate).routes()
