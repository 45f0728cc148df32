"""Virtual API keys: the YAML keys plus keys created through the admin API, stored hashed.

Secrets are never stored: a key is kept as the sha256 hex of its secret, and a listing shows
only a short fingerprint of that hash. Keys from the config file are read-only; keys created
with ``KeyStore.create`` live in the ledger's database (tables ``truecost_keys``,
``truecost_keys_version`` and ``truecost_admin_audit``: in the SQLite file, or in the PostgreSQL
schema), so every replica pointing at the same ledger shares them.

Replicas and revocation: ``authenticate`` reads an in-process snapshot of every key, reloaded
from the database at most every ``cache_ttl`` seconds (2 s by default; a reload reads one version
number, and the whole table only when a key changed somewhere). A key created, rotated
or revoked on this replica takes effect here at once; on the other replicas within the TTL.
If the database cannot be read, the last snapshot keeps serving and the reload is retried
after another TTL.

Comparison: the presented secret is hashed, the hash's first 4 bytes pick a bucket, and
every key in that bucket is compared with ``hmac.compare_digest`` (no early exit; an empty
bucket still costs one comparison), so the time taken does not depend on the secret.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from truecost.errors import ConfigError, TruecostError
from truecost.gateway.key_backends import BACKENDS, KeyBackend, MemoryKeyBackend, backend_name
from truecost.gateway.key_records import (
    InvalidKeySpec,
    KeyAdminError,
    KeyConflict,
    KeyNotFound,
    KeyRecord,
    ReadOnlyKey,
    actor_for,
    check_name,
    digest_of,
    fingerprint,
    iso_time,
    normalise_spec,
)

__all__ = [
    "KeyStore",
    "open_key_store",
    "KeyRecord",
    "KeyAdminError",
    "InvalidKeySpec",
    "KeyNotFound",
    "KeyConflict",
    "ReadOnlyKey",
    "actor_for",
    "digest_of",
    "fingerprint",
    "SECRET_PREFIX",
]

log = logging.getLogger("truecost.gateway.keys")

SECRET_PREFIX = "sk-tc-"
MAX_GRACE_SECONDS = 30 * 86_400
_BUCKET = 8  # hex characters of the hash that pick the comparison bucket
_DUMMY = "0" * 64
_REFUSALS: dict[type[Exception], str] = {
    KeyNotFound: "refused:not_found",
    KeyConflict: "refused:conflict",
    ReadOnlyKey: "refused:read_only",
    InvalidKeySpec: "refused:invalid",
}


def _bounded(details: dict | None) -> dict:
    """Audit details: JSON-safe and short (long strings and lists cut)."""

    def cut(v):
        if isinstance(v, (list, tuple)):
            return [cut(x) for x in list(v)[:50]]
        if isinstance(v, dict):
            return {str(k)[:64]: cut(x) for k, x in list(v.items())[:50]}
        if v is None or isinstance(v, (bool, int, float)):
            return v
        v = iso_time(v) if isinstance(v, datetime) else str(v)
        return v if len(v) <= 200 else v[:200] + "…"

    return cut(dict(details or {}))


def open_key_store(config_keys: Iterable[Any], ledger: str | None, schema: str | None = None, **kw) -> "KeyStore":
    """The composition root's entry: YAML keys plus the keys stored beside the ledger."""
    return KeyStore(config_keys, BACKENDS[backend_name(ledger)](ledger or "", schema), **kw)


class _Index:
    """Buckets of (digest, record, valid_until) by the digest's first bytes; built once per reload."""

    def __init__(self, records: Iterable[KeyRecord]) -> None:
        self.buckets: dict[str, list[tuple[str, KeyRecord, datetime | None]]] = {}
        self.count = 0
        for r in records:
            self.count += 1
            self.buckets.setdefault(r.key_sha256[:_BUCKET], []).append((r.key_sha256, r, None))
            if r.previous_sha256 and r.previous_valid_until is not None:
                self.buckets.setdefault(r.previous_sha256[:_BUCKET], []).append(
                    (r.previous_sha256, r, r.previous_valid_until)
                )


class KeyStore:
    """Authenticate, create, rotate, revoke, list; every change and refusal goes to the audit table."""

    def __init__(
        self,
        config_keys: Iterable[Any] = (),
        backend: KeyBackend | None = None,
        *,
        cache_ttl: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._config: dict[str, KeyRecord] = {}
        for k in config_keys:
            r = k if isinstance(k, KeyRecord) else KeyRecord.from_config(k)
            if r.name in self._config:
                raise ConfigError(f"keys: the name {r.name!r} is used twice")
            self._config[r.name] = r
        self._backend = backend if backend is not None else MemoryKeyBackend()
        self.cache_ttl, self._monotonic, self._now = cache_ttl, monotonic, now
        self._lock = threading.Lock()
        self._index = _Index(self._config.values())
        self._loaded_at = -math.inf
        self._generation: int = 0
        self._version: int | None = None
        clash = sorted(r.name for r in self._backend.load() if r.name in self._config)
        if clash:
            raise ConfigError(
                f"keys: {', '.join(map(repr, clash))} both in the config file and in the key store; "
                "rename the config key (names are unique across both)"
            )
        self._refresh(self._monotonic())

    # -- authentication (hot path) -------------------------------------------------------------------
    def _refresh(self, at: float) -> None:
        generation = self._generation
        try:
            version = self._backend.version()
            if version == self._version:  # nothing changed anywhere: keep the snapshot (one small read)
                self._loaded_at = at
                return
            stored = self._backend.load()
        except TruecostError as exc:  # keep serving the last snapshot; retry after another TTL
            log.warning("could not reload the keys (%s); serving the last snapshot", exc)
            self._loaded_at = at
            return
        merged = list(self._config.values()) + [r for r in stored if r.name not in self._config]
        self._index, self._version = _Index(merged), version
        # a change made here while this load ran may be missing from it: then reload on the next call
        self._loaded_at = at if generation == self._generation else -math.inf

    def _current(self) -> _Index:
        at = self._monotonic()
        if at - self._loaded_at < self.cache_ttl:
            return self._index
        with self._lock:
            if at - self._loaded_at >= self.cache_ttl:
                self._refresh(at)
            return self._index

    def invalidate(self) -> None:
        """Reload on the next authenticate (after a change made on this replica)."""
        self._generation += 1
        self._version, self._loaded_at = None, -math.inf

    def authenticate(self, presented: str | None, now: datetime | None = None) -> KeyRecord | None:
        """The key whose secret is ``presented``, or None. Revoked and expired keys ARE returned: check
        ``record.status(now)`` ("active" | "revoked" | "expired") and answer 401 with the reason."""
        if not presented:
            return None
        digest = digest_of(presented)
        if digest is None:
            return None
        now = now or self._now()
        bucket = self._current().buckets.get(digest[:_BUCKET])
        if not bucket:
            hmac.compare_digest(_DUMMY, digest)
            return None
        found = None
        for candidate, record, valid_until in bucket:  # no early exit
            if hmac.compare_digest(candidate, digest) and (valid_until is None or now < valid_until):
                found = record
        return found

    def has_keys(self) -> bool:
        """Any key at all (config or store, even revoked): if so, every request must present one."""
        return self._current().count > 0

    # -- administration ------------------------------------------------------------------------------
    def _entry(
        self, actor: str, action: str, target: str | None, outcome: str, details: dict | None, now: datetime
    ) -> dict:
        return {
            "ts": now,
            "actor": str(actor)[:100],
            "action": str(action)[:64],
            "target": None if target is None else str(target)[:100],
            "outcome": str(outcome)[:64],
            "details": _bounded(details),
        }

    def record_audit(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        details: dict | None = None,
        outcome: str = "ok",
        now: datetime | None = None,
    ) -> bool:
        """Append one audit row; a failure to write is logged (and False returned), never raised."""
        try:
            self._backend.append_audit(self._entry(actor, action, target, outcome, details, now or self._now()))
            return True
        except Exception:
            log.exception("could not write the audit row for %s %s", action, target)
            return False

    def _audited(self, actor: str, action: str, target: str | None, now: datetime | None, fn):
        """Run ``fn(now)``; a refusal or failure is audited too (a success audits itself, in its transaction)."""
        now = now or self._now()
        try:
            return fn(now)
        except Exception as exc:
            kind = _REFUSALS.get(type(exc), "error")
            reason = str(exc) if isinstance(exc, KeyAdminError) else exc.__class__.__name__
            self.record_audit(actor, action, target, {"reason": reason}, outcome=kind, now=now)
            raise

    def create(
        self,
        name: str,
        *,
        cost_center: str | None = None,
        team: str | None = None,
        tenant: str | None = None,
        environment: str | None = None,
        models: Iterable[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: datetime | str | None = None,
        scopes: Iterable[str] = (),
        allow_attribution_headers: Iterable[str] = (),
        actor: str = "system",
        now: datetime | None = None,
        known_models: Iterable[str] | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key; its secret is returned here once and never stored."""

        def go(now):
            check_name(name)
            spec = normalise_spec(
                now,
                cost_center=cost_center,
                team=team,
                tenant=tenant,
                environment=environment,
                models=models,
                rpm=rpm,
                tpm=tpm,
                expires_at=expires_at,
                scopes=scopes,
                known_models=known_models,
                allow_attribution_headers=allow_attribution_headers,
            )
            if name in self._config:
                raise KeyConflict(f"a key named {name!r} exists in the config file; names are unique")
            secret = SECRET_PREFIX + secrets.token_urlsafe(32)
            record = KeyRecord(
                name=name,
                key_sha256=digest_of(secret),
                source="store",
                created_at=now,
                created_by=str(actor)[:100],
                **spec,
            )
            details = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
            self._backend.insert(
                record,
                self._entry(actor, "key.create", name, "ok", {**details, "fingerprint": record.fingerprint}, now),
            )
            self.invalidate()
            return record, secret

        return self._audited(actor, "key.create", name, now, go)

    def _stored(self, name: str, verb: str) -> KeyRecord:
        if name in self._config:
            raise ReadOnlyKey(
                f"the key {name!r} comes from the config file: {verb} it by editing its entry under "
                "'keys:' in the config (key_sha256 / revoked) and restarting"
            )
        record = self._backend.get(name)
        if record is None:
            raise KeyNotFound(f"no key named {name!r}")
        return record

    def rotate(
        self,
        name: str,
        actor: str = "system",
        grace_seconds: float = 0,
        now: datetime | None = None,
        reason: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new secret for the key; the old one stops working now, or after ``grace_seconds``."""

        def go(now):
            if (
                isinstance(grace_seconds, bool)
                or not isinstance(grace_seconds, (int, float))
                or not (math.isfinite(grace_seconds) and 0 <= grace_seconds <= MAX_GRACE_SECONDS)
            ):
                raise InvalidKeySpec(f"grace_seconds must be a number from 0 to {MAX_GRACE_SECONDS}")
            old = self._stored(name, "rotate")
            if old.revoked:
                raise KeyConflict(f"the key {name!r} is revoked; create a new key instead")
            secret = SECRET_PREFIX + secrets.token_urlsafe(32)
            grace = grace_seconds > 0
            new = replace(
                old,
                key_sha256=digest_of(secret),
                rotated_at=now,
                previous_sha256=old.key_sha256 if grace else None,
                previous_valid_until=now + timedelta(seconds=grace_seconds) if grace else None,
            )
            details = {
                "fingerprint": new.fingerprint,
                "previous": old.fingerprint,
                "grace_seconds": grace_seconds,
                "reason": reason,
            }
            if not self._backend.replace(new, old, self._entry(actor, "key.rotate", name, "ok", details, now)):
                raise KeyConflict(f"the key {name!r} changed meanwhile (another admin or replica); try again")
            self.invalidate()
            return new, secret

        return self._audited(actor, "key.rotate", name, now, go)

    def revoke(
        self, name: str, actor: str = "system", now: datetime | None = None, reason: str | None = None
    ) -> KeyRecord:
        """The key stops working at once on this replica, within ``cache_ttl`` on the others."""

        def go(now):
            old = self._stored(name, "revoke")
            if old.revoked:
                self.record_audit(actor, "key.revoke", name, {"already_revoked": True, "reason": reason}, now=now)
                return old
            new = replace(old, revoked=True, revoked_at=now, previous_sha256=None, previous_valid_until=None)
            entry = self._entry(actor, "key.revoke", name, "ok", {"reason": reason}, now)
            if not self._backend.replace(new, old, entry):
                raise KeyConflict(f"the key {name!r} changed meanwhile (another admin or replica); try again")
            self.invalidate()
            return new

        return self._audited(actor, "key.revoke", name, now, go)

    def audit(self, limit: int = 100) -> list[dict]:
        """The newest ``limit`` audit rows, newest first: id, ts, actor, action, target, outcome, details."""
        return self._backend.audit(max(0, int(limit)))

    def list(self) -> list[KeyRecord]:
        """Every key, config and store, by name (fresh from the database). Show ``record.public()``."""
        stored = [r for r in self._backend.load() if r.name not in self._config]
        return sorted([*self._config.values(), *stored], key=lambda r: r.name)

    def close(self) -> None:
        self._backend.close()
