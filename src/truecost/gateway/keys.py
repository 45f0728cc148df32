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

import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from truecost.errors import ConfigError, LedgerError, TruecostError

log = logging.getLogger("truecost.gateway.keys")

SECRET_PREFIX = "sk-tc-"
from truecost.gateway.config import HEADER_GRANTS as ATTRIBUTION_HEADER_FIELDS  # noqa: E402  (one list)
SCOPES = ("read",)
MAX_GRACE_SECONDS = 30 * 86_400
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BUCKET = 8  # hex characters of the hash that pick the comparison bucket
_CONFIG_FIELDS = ("name", "cost_center", "team", "tenant", "environment", "revoked", "models", "rpm", "tpm",
                  "expires_at", "allow_attribution_headers", "scopes")
_DUMMY = "0" * 64


class KeyAdminError(TruecostError):
    """A key operation that cannot be done; the message says why and what to do."""


class InvalidKeySpec(KeyAdminError, ValueError):
    """A field of a key is missing, of the wrong type or out of range."""


class KeyNotFound(KeyAdminError, LookupError):
    """No key of that name."""


class KeyConflict(KeyAdminError):
    """The name is taken, the key is revoked, or it changed under us (retry)."""


class ReadOnlyKey(KeyAdminError):
    """A key from the config file: change it by editing the config."""


def fingerprint(digest: str) -> str:
    """A short, non-secret label of a key hash (the first 8 hex characters)."""
    return f"sha256:{digest[:8]}"


def digest_of(secret: str) -> str | None:
    try:
        return hashlib.sha256(secret.encode("utf-8")).hexdigest()
    except UnicodeEncodeError:  # a lone surrogate: no key can match it
        return None


def actor_for(presented: str | None, role: str = "admin") -> str:
    """How an audit row names whoever presented ``presented``: a fingerprint, never the key."""
    digest = digest_of(presented) if presented else None
    return f"{role}:{fingerprint(digest)}" if digest else "anonymous"


@dataclass(frozen=True)
class KeyRecord:
    name: str
    key_sha256: str = field(repr=False)
    cost_center: str | None = None
    team: str | None = None
    tenant: str | None = None
    environment: str | None = None
    revoked: bool = False
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    expires_at: datetime | None = None
    allow_attribution_headers: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    source: str = "config"  # config (the YAML file, read-only) | store (the admin API)
    created_at: datetime | None = None
    created_by: str | None = None
    revoked_at: datetime | None = None
    rotated_at: datetime | None = None
    # after a rotation with a grace period, the old secret keeps working until previous_valid_until
    previous_sha256: str | None = field(default=None, repr=False)
    previous_valid_until: datetime | None = None

    @classmethod
    def from_config(cls, k: Any) -> "KeyRecord":
        """From the config's KeyConfig (fields it lacks take their defaults)."""
        given = {f.name: getattr(k, f.name) for f in fields(cls) if f.name in _CONFIG_FIELDS and hasattr(k, f.name)}
        for name in ("models", "allow_attribution_headers", "scopes"):
            if given.get(name) is not None:
                given[name] = tuple(given[name])
        return cls(**{**given, "key_sha256": str(k.key_sha256).lower(), "revoked": bool(given.get("revoked")),
                      "expires_at": _aware(given.get("expires_at")), "source": "config"})

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_sha256)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def status(self, now: datetime) -> str:
        """active | revoked | expired -- the gateway answers 401 with this word unless active."""
        return "revoked" if self.revoked else "expired" if self.expired(now) else "active"

    def allows_model(self, alias: str) -> bool:
        return self.models is None or alias in self.models

    def public(self, now: datetime | None = None) -> dict:
        """The listing's view: no secret, no hash -- a fingerprint only (and the status at ``now``)."""
        out = {"name": self.name, "fingerprint": self.fingerprint}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("name", "key_sha256", "previous_sha256"):
                out[f.name] = _iso(v) if isinstance(v, datetime) else list(v) if isinstance(v, tuple) else v
        return {**out, "status": self.status(now)} if now is not None else out


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if t else None


def _aware(t: Any) -> datetime | None:
    if t is None:
        return None
    if isinstance(t, str):
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


# -- validation (shared by create() and the admin API) ------------------------------------------------

def _opt_text(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip() or len(v) > 128:
        raise InvalidKeySpec(f"{name} must be a non-empty string of at most 128 characters, or null")
    return v


def _opt_limit(name: str, v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 10**12:
        raise InvalidKeySpec(f"{name} must be a positive whole number, or null for unlimited")
    return v


def _names(name: str, v: Any, allowed: Iterable[str] | None = None, nullable: bool = False) -> tuple[str, ...] | None:
    if v is None and nullable:
        return None
    if not isinstance(v, (list, tuple)) or len(v) > 256 or not all(isinstance(x, str) and x for x in v):
        raise InvalidKeySpec(f"{name} must be a list of non-empty strings" + (", or null" if nullable else ""))
    if allowed is not None:
        allowed = tuple(allowed)
        bad = sorted(set(v) - set(allowed))
        if bad:
            raise InvalidKeySpec(f"{name}: unknown {', '.join(map(repr, bad))}; allowed: {', '.join(allowed)}")
    return tuple(dict.fromkeys(v))


def normalise_spec(now: datetime, *, cost_center=None, team=None, tenant=None, environment=None, models=None,
                   rpm=None, tpm=None, expires_at=None, scopes=(), allow_attribution_headers=(),
                   known_models: Iterable[str] | None = None) -> dict:
    """Check a new key's fields strictly (JSON types: no bools as numbers, no numbers as strings)."""
    if expires_at is not None:
        if isinstance(expires_at, str):
            try:
                expires_at = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidKeySpec("expires_at must be an ISO 8601 time, e.g. 2027-01-01T00:00:00Z") from None
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise InvalidKeySpec("expires_at must be an ISO 8601 time with a time zone, e.g. 2027-01-01T00:00:00Z")
        expires_at = expires_at.astimezone(timezone.utc)
        if expires_at <= now:
            raise InvalidKeySpec("expires_at is in the past")
    return {"cost_center": _opt_text("cost_center", cost_center), "team": _opt_text("team", team),
            "tenant": _opt_text("tenant", tenant), "environment": _opt_text("environment", environment),
            "models": _names("models", models, known_models, nullable=True), "rpm": _opt_limit("rpm", rpm),
            "tpm": _opt_limit("tpm", tpm), "expires_at": expires_at, "scopes": _names("scopes", scopes, SCOPES),
            "allow_attribution_headers": _names("allow_attribution_headers", allow_attribution_headers,
                                                ATTRIBUTION_HEADER_FIELDS)}


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidKeySpec("name must be 1-64 characters: letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit")
    return name


def _bounded(details: dict | None) -> dict:
    """Audit details: JSON-safe and short (long strings and lists cut)."""
    def cut(v):
        if isinstance(v, (list, tuple)):
            return [cut(x) for x in list(v)[:50]]
        if isinstance(v, dict):
            return {str(k)[:64]: cut(x) for k, x in list(v.items())[:50]}
        if v is None or isinstance(v, (bool, int, float)):
            return v
        v = _iso(v) if isinstance(v, datetime) else str(v)
        return v if len(v) <= 200 else v[:200] + "…"
    return cut(dict(details or {}))


# -- backends: one name -> factory table -------------------------------------------------------------

class KeyBackend(Protocol):
    def version(self) -> int: ...  # changes whenever a key does: replicas reload only then
    def load(self) -> list[KeyRecord]: ...
    def get(self, name: str) -> KeyRecord | None: ...
    def insert(self, record: KeyRecord, audit: dict) -> None: ...  # KeyConflict when the name exists
    def replace(self, record: KeyRecord, expect: KeyRecord, audit: dict) -> bool: ...  # False: changed meanwhile
    def append_audit(self, entry: dict) -> None: ...
    def audit(self, limit: int) -> list[dict]: ...
    def close(self) -> None: ...


class MemoryKeyBackend:
    """Per process: for tests, and for a gateway without a database (keys created here die with it; the
    audit keeps its newest ``max_audit`` rows)."""

    def __init__(self, max_audit: int = 10_000) -> None:
        self._keys: dict[str, KeyRecord] = {}
        self._audit: deque[dict] = deque(maxlen=max_audit)
        self._version = self._rows = 0
        self._lock = threading.Lock()

    def version(self) -> int:
        return self._version

    def load(self) -> list[KeyRecord]:
        with self._lock:
            return list(self._keys.values())

    def get(self, name: str) -> KeyRecord | None:
        with self._lock:
            return self._keys.get(name)

    def insert(self, record: KeyRecord, audit: dict) -> None:
        with self._lock:
            if record.name in self._keys:
                raise KeyConflict(f"a key named {record.name!r} already exists")
            self._keys[record.name] = record
            self._version += 1
            self._append(audit)

    def replace(self, record: KeyRecord, expect: KeyRecord, audit: dict) -> bool:
        with self._lock:
            old = self._keys.get(record.name)
            if old is None or (old.key_sha256, old.revoked) != (expect.key_sha256, expect.revoked):
                return False
            self._keys[record.name] = record
            self._version += 1
            self._append(audit)
            return True

    def _append(self, entry: dict) -> None:
        self._rows += 1
        self._audit.append({"id": self._rows, **entry, "ts": _iso(entry["ts"])})

    def append_audit(self, entry: dict) -> None:
        with self._lock:
            self._append(entry)

    def audit(self, limit: int) -> list[dict]:
        with self._lock:
            return [dict(e) for e in list(self._audit)[::-1][:limit]]

    def close(self) -> None:
        pass


_KEY_COLUMNS = ("name", "key_sha256", "cost_center", "team", "tenant", "environment", "revoked", "models", "rpm",
                "tpm", "expires_at", "allow_attribution_headers", "scopes", "created_at", "created_by", "revoked_at",
                "rotated_at", "previous_sha256", "previous_valid_until")
_TIMES = ("expires_at", "created_at", "revoked_at", "rotated_at", "previous_valid_until")
_AUDIT_COLUMNS = ("id", "ts", "actor", "action", "target", "outcome", "details")


def _to_row(r: KeyRecord, time_out: Callable[[datetime | None], Any]) -> tuple:
    d = {c: getattr(r, c) for c in _KEY_COLUMNS}
    for c in _TIMES:
        d[c] = time_out(d[c])
    d["models"] = None if r.models is None else json.dumps(list(r.models))
    d["allow_attribution_headers"] = json.dumps(list(r.allow_attribution_headers))
    d["scopes"] = json.dumps(list(r.scopes))
    return tuple(d[c] for c in _KEY_COLUMNS)


def _from_row(row: tuple) -> KeyRecord:
    d = dict(zip(_KEY_COLUMNS, row))
    for c in _TIMES:
        d[c] = _aware(d[c])
    d["revoked"] = bool(d["revoked"])
    d["models"] = None if d["models"] is None else tuple(json.loads(d["models"]))
    d["allow_attribution_headers"] = tuple(json.loads(d["allow_attribution_headers"]))
    d["scopes"] = tuple(json.loads(d["scopes"]))
    return KeyRecord(source="store", **d)


def _audit_from_row(row: tuple) -> dict:
    d = dict(zip(_AUDIT_COLUMNS, row))
    d["ts"] = _iso(_aware(d["ts"]))
    d["details"] = d["details"] if isinstance(d["details"], dict) else json.loads(d["details"] or "{}")
    return d


_TABLES = """
    CREATE TABLE truecost_keys (
        name TEXT NOT NULL PRIMARY KEY, key_sha256 TEXT NOT NULL UNIQUE, cost_center TEXT, team TEXT, tenant TEXT,
        environment TEXT, revoked {flag} NOT NULL DEFAULT {false}, models TEXT, rpm {int}, tpm {int},
        expires_at {time}, allow_attribution_headers TEXT NOT NULL DEFAULT '[]', scopes TEXT NOT NULL DEFAULT '[]',
        created_at {time} NOT NULL, created_by TEXT, revoked_at {time}, rotated_at {time}, previous_sha256 TEXT,
        previous_valid_until {time}
    );
    CREATE TABLE truecost_admin_audit (
        id {serial}, ts {time} NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT,
        outcome TEXT NOT NULL, details {json} NOT NULL DEFAULT '{{}}'
    );
    CREATE TABLE truecost_keys_version (id INTEGER PRIMARY KEY CHECK (id = 1), version {int} NOT NULL);
    INSERT INTO truecost_keys_version VALUES (1, 0)
"""
_SQLITE_MIGRATIONS = [("001_keys_and_audit", _TABLES.format(
    flag="INTEGER", false="0", int="INTEGER", time="TEXT", serial="INTEGER PRIMARY KEY AUTOINCREMENT", json="TEXT"))]
_PG_MIGRATIONS = [("001_keys_and_audit", _TABLES.format(
    flag="BOOLEAN", false="FALSE", int="BIGINT", time="TIMESTAMPTZ", serial="BIGSERIAL PRIMARY KEY", json="JSONB"))]
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class _SQLKeyBackend:
    """The statements both databases share; a dialect gives ``_run``, its placeholder and its value types.

    ``_run(fn, write)`` calls ``fn(connection)`` under the backend's lock, in one transaction when ``write``;
    a name clash surfaces as ``_unique`` (-> KeyConflict), any other database error as LedgerError.
    """

    _placeholder = "?"
    _unique: type[Exception] = Exception

    def _run(self, fn: Callable[[Any], Any], write: bool = False) -> Any:
        raise NotImplementedError

    def _time(self, t: datetime | None) -> Any:
        return t

    def _flag(self, b: bool) -> Any:
        return b

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._placeholder)

    def version(self) -> int:
        return self._run(lambda c: c.execute("SELECT version FROM truecost_keys_version").fetchone()[0])

    def _bump(self, c) -> None:
        c.execute("UPDATE truecost_keys_version SET version = version + 1")

    def load(self) -> list[KeyRecord]:
        sql = f"SELECT {','.join(_KEY_COLUMNS)} FROM truecost_keys"
        return [_from_row(r) for r in self._run(lambda c: c.execute(sql).fetchall())]

    def get(self, name: str) -> KeyRecord | None:
        sql = self._sql(f"SELECT {','.join(_KEY_COLUMNS)} FROM truecost_keys WHERE name = ?")
        row = self._run(lambda c: c.execute(sql, (name,)).fetchone())
        return None if row is None else _from_row(row)

    def _audit_insert(self, c, entry: dict) -> None:
        c.execute(self._sql("INSERT INTO truecost_admin_audit (ts, actor, action, target, outcome, details) "
                            "VALUES (?,?,?,?,?,?)"),
                  (self._time(entry["ts"]), entry["actor"], entry["action"], entry["target"], entry["outcome"],
                   json.dumps(entry["details"])))

    def insert(self, record: KeyRecord, audit: dict) -> None:
        sql = self._sql(f"INSERT INTO truecost_keys ({','.join(_KEY_COLUMNS)}) "
                        f"VALUES ({','.join('?' * len(_KEY_COLUMNS))})")

        def go(c):
            c.execute(sql, _to_row(record, self._time))
            self._bump(c)
            self._audit_insert(c, audit)
        try:
            self._run(go, write=True)
        except self._unique:
            raise KeyConflict(f"a key named {record.name!r} already exists") from None

    def replace(self, record: KeyRecord, expect: KeyRecord, audit: dict) -> bool:
        sets = ", ".join(f"{c} = ?" for c in _KEY_COLUMNS[1:])
        sql = self._sql(f"UPDATE truecost_keys SET {sets} WHERE name = ? AND key_sha256 = ? AND revoked = ?")

        def go(c):  # compare and set: a concurrent rotation or revocation wins, this one is refused
            n = c.execute(sql, (*_to_row(record, self._time)[1:], record.name, expect.key_sha256,
                                self._flag(expect.revoked))).rowcount
            if n:
                self._bump(c)
                self._audit_insert(c, audit)
            return n == 1
        return self._run(go, write=True)

    def append_audit(self, entry: dict) -> None:
        self._run(lambda c: self._audit_insert(c, entry), write=True)

    def audit(self, limit: int) -> list[dict]:
        sql = self._sql(f"SELECT {','.join(_AUDIT_COLUMNS)} FROM truecost_admin_audit ORDER BY id DESC LIMIT ?")
        return [_audit_from_row(r) for r in self._run(lambda c: c.execute(sql, (int(limit),)).fetchall())]


class SQLiteKeyBackend(_SQLKeyBackend):
    """The keys in the ledger's SQLite file, on a connection of their own (WAL, busy timeout)."""

    _unique = sqlite3.IntegrityError

    def __init__(self, path: str | Path, timeout: float = 5.0) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot open the key tables in {self.path}: {exc}") from None
        self._run(lambda c: c.execute("CREATE TABLE IF NOT EXISTS _truecost_keys_migrations "
                                      "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"))
        for name, sql in _SQLITE_MIGRATIONS:
            self._run(lambda c: self._apply(c, name, sql), write=True)  # BEGIN IMMEDIATE: one replica applies it

    def _apply(self, c, name: str, sql: str) -> None:
        if c.execute("SELECT 1 FROM _truecost_keys_migrations WHERE name = ?", (name,)).fetchone() is None:
            for stmt in filter(str.strip, sql.split(";")):
                c.execute(stmt)
            c.execute("INSERT INTO _truecost_keys_migrations VALUES (?, ?)",
                      (name, datetime.now(timezone.utc).isoformat()))

    def _run(self, fn, write: bool = False):
        with self._lock:
            try:
                if not write:
                    return fn(self._conn)
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._conn)
                    self._conn.execute("COMMIT")
                    return out
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise LedgerError(f"key store {self.path}: {exc}") from None

    def _time(self, t: datetime | None) -> str | None:
        return None if t is None else t.astimezone(timezone.utc).isoformat()

    def _flag(self, b: bool) -> int:
        return int(b)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresKeyBackend(_SQLKeyBackend):
    """The keys in the ledger's PostgreSQL database (optionally its schema); a lost connection is reopened."""

    _placeholder = "%s"

    def __init__(self, uri: str, schema: str | None = None, connect_timeout: float = 5.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise LedgerError("keys in PostgreSQL need psycopg: pip install 'psycopg[binary]'") from None
        if schema is not None and not _SCHEMA.match(schema):
            raise LedgerError(f"invalid schema name {schema!r}")
        self._psycopg, self._unique = psycopg, psycopg.errors.UniqueViolation
        self.uri, self.schema, self.connect_timeout = uri, schema, connect_timeout
        self._lock = threading.Lock()
        self._conn = None
        self._run(self._migrate)

    def _where(self) -> str:
        return f"key store (postgres schema {self.schema or '(default)'})"

    def _connect(self):
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._psycopg.connect(self.uri, connect_timeout=self.connect_timeout, autocommit=True)
                if self.schema is not None:
                    self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    self._conn.execute(f'SET search_path TO "{self.schema}"')
            except self._psycopg.Error as exc:
                self._conn = None
                raise LedgerError(f"{self._where()}: cannot connect ({exc.__class__.__name__})") from None
        return self._conn

    def _run(self, fn, write: bool = False):
        with self._lock:
            conn = self._connect()
            try:
                if not write:
                    return fn(conn)
                with conn.transaction():
                    return fn(conn)
            except self._unique:
                raise
            except self._psycopg.Error as exc:
                if isinstance(exc, self._psycopg.OperationalError):
                    try:
                        conn.close()
                    finally:
                        self._conn = None
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise LedgerError(f"{self._where()}: {exc.__class__.__name__}: {first}") from None

    def _migrate(self, c) -> None:
        lock = f"truecost-keys-migrate-{self.schema}"
        c.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))  # replicas start together
        try:
            c.execute("CREATE TABLE IF NOT EXISTS _truecost_keys_migrations "
                      "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)")
            done = {r[0] for r in c.execute("SELECT name FROM _truecost_keys_migrations")}
            for name, sql in _PG_MIGRATIONS:
                if name not in done:
                    with c.transaction():
                        for stmt in filter(str.strip, sql.split(";")):
                            c.execute(stmt)
                        c.execute("INSERT INTO _truecost_keys_migrations VALUES (%s, %s)",
                                  (name, datetime.now(timezone.utc)))
        finally:
            c.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


BACKENDS: dict[str, Callable[[str, str | None], KeyBackend]] = {
    "memory": lambda uri, schema: MemoryKeyBackend(),
    "sqlite": lambda uri, schema: SQLiteKeyBackend(uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri),
    "postgresql": lambda uri, schema: PostgresKeyBackend(uri, schema=schema),
}


def backend_name(ledger: str | None) -> str:
    """Which backend keeps the keys of this ledger: postgresql://... -> postgresql, a path -> sqlite."""
    if not ledger or ledger in (":memory:", "memory:", "memory://"):
        return "memory"
    return "postgresql" if ledger.startswith(("postgresql://", "postgres://")) else "sqlite"


def open_key_store(config_keys: Iterable[Any], ledger: str | None, schema: str | None = None, **kw) -> "KeyStore":
    """The composition root's entry: YAML keys plus the keys stored beside the ledger."""
    return KeyStore(config_keys, BACKENDS[backend_name(ledger)](ledger or "", schema), **kw)


# -- the store ---------------------------------------------------------------------------------------

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
                    (r.previous_sha256, r, r.previous_valid_until))


class KeyStore:
    """Authenticate, create, rotate, revoke, list; every change and refusal goes to the audit table."""

    def __init__(self, config_keys: Iterable[Any] = (), backend: KeyBackend | None = None, *, cache_ttl: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
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
        self._generation, self._version = 0, None
        clash = sorted(r.name for r in self._backend.load() if r.name in self._config)
        if clash:
            raise ConfigError(f"keys: {', '.join(map(repr, clash))} both in the config file and in the key store; "
                              "rename the config key (names are unique across both)")
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
    def _entry(self, actor: str, action: str, target: str | None, outcome: str, details: dict | None,
               now: datetime) -> dict:
        return {"ts": now, "actor": str(actor)[:100], "action": str(action)[:64],
                "target": None if target is None else str(target)[:100], "outcome": str(outcome)[:64],
                "details": _bounded(details)}

    def record_audit(self, actor: str, action: str, target: str | None = None, details: dict | None = None,
                     outcome: str = "ok", now: datetime | None = None) -> bool:
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
            kind = {KeyNotFound: "refused:not_found", KeyConflict: "refused:conflict", ReadOnlyKey: "refused:read_only",
                    InvalidKeySpec: "refused:invalid"}.get(type(exc), "error")
            reason = str(exc) if isinstance(exc, KeyAdminError) else exc.__class__.__name__
            self.record_audit(actor, action, target, {"reason": reason}, outcome=kind, now=now)
            raise

    def create(self, name: str, *, cost_center: str | None = None, team: str | None = None, tenant: str | None = None,
               environment: str | None = None, models: Iterable[str] | None = None, rpm: int | None = None,
               tpm: int | None = None, expires_at: datetime | str | None = None, scopes: Iterable[str] = (),
               allow_attribution_headers: Iterable[str] = (), actor: str = "system", now: datetime | None = None,
               known_models: Iterable[str] | None = None) -> tuple[KeyRecord, str]:
        """A new key; its secret is returned here once and never stored."""
        def go(now):
            check_name(name)
            spec = normalise_spec(now, cost_center=cost_center, team=team, tenant=tenant, environment=environment,
                                  models=models, rpm=rpm, tpm=tpm, expires_at=expires_at, scopes=scopes,
                                  known_models=known_models, allow_attribution_headers=allow_attribution_headers)
            if name in self._config:
                raise KeyConflict(f"a key named {name!r} exists in the config file; names are unique")
            secret = SECRET_PREFIX + secrets.token_urlsafe(32)
            record = KeyRecord(name=name, key_sha256=digest_of(secret), source="store", created_at=now,
                               created_by=str(actor)[:100], **spec)
            details = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
            self._backend.insert(record, self._entry(actor, "key.create", name, "ok",
                                                     {**details, "fingerprint": record.fingerprint}, now))
            self.invalidate()
            return record, secret
        return self._audited(actor, "key.create", name, now, go)

    def _stored(self, name: str, verb: str) -> KeyRecord:
        if name in self._config:
            raise ReadOnlyKey(f"the key {name!r} comes from the config file: {verb} it by editing its entry under "
                              "'keys:' in the config (key_sha256 / revoked) and restarting")
        record = self._backend.get(name)
        if record is None:
            raise KeyNotFound(f"no key named {name!r}")
        return record

    def rotate(self, name: str, actor: str = "system", grace_seconds: float = 0, now: datetime | None = None,
               reason: str | None = None) -> tuple[KeyRecord, str]:
        """A new secret for the key; the old one stops working now, or after ``grace_seconds``."""
        def go(now):
            if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, (int, float)) or not (
                    math.isfinite(grace_seconds) and 0 <= grace_seconds <= MAX_GRACE_SECONDS):
                raise InvalidKeySpec(f"grace_seconds must be a number from 0 to {MAX_GRACE_SECONDS}")
            old = self._stored(name, "rotate")
            if old.revoked:
                raise KeyConflict(f"the key {name!r} is revoked; create a new key instead")
            secret = SECRET_PREFIX + secrets.token_urlsafe(32)
            grace = grace_seconds > 0
            new = replace(old, key_sha256=digest_of(secret), rotated_at=now,
                          previous_sha256=old.key_sha256 if grace else None,
                          previous_valid_until=now + timedelta(seconds=grace_seconds) if grace else None)
            details = {"fingerprint": new.fingerprint, "previous": old.fingerprint, "grace_seconds": grace_seconds,
                       "reason": reason}
            if not self._backend.replace(new, old, self._entry(actor, "key.rotate", name, "ok", details, now)):
                raise KeyConflict(f"the key {name!r} changed meanwhile (another admin or replica); try again")
            self.invalidate()
            return new, secret
        return self._audited(actor, "key.rotate", name, now, go)

    def revoke(self, name: str, actor: str = "system", now: datetime | None = None,
               reason: str | None = None) -> KeyRecord:
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

    def list(self) -> list[KeyRecord]:
        """Every key, config and store, by name (fresh from the database). Show ``record.public()``."""
        stored = [r for r in self._backend.load() if r.name not in self._config]
        return sorted([*self._config.values(), *stored], key=lambda r: r.name)

    def audit(self, limit: int = 100) -> list[dict]:
        """The newest ``limit`` audit rows, newest first: id, ts, actor, action, target, outcome, details."""
        return self._backend.audit(max(0, int(limit)))

    def close(self) -> None:
        self._backend.close()
