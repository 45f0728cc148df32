"""Where keys created through the admin API live: one name -> factory table (``BACKENDS``) of backends
behind the ``KeyBackend`` protocol -- memory (per process), SQLite (the ledger's file) and PostgreSQL (the
ledger's database, shared by every replica). Tables ``truecost_keys``, ``truecost_keys_version`` and
``truecost_admin_audit``, created by named migrations."""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import threading
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

from truecost.errors import LedgerError
from truecost.gateway.config_types import KEY_KEYS
from truecost.gateway.key_records import KeyConflict, KeyRecord, aware_time, iso_time


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
        self._audit.append({"id": self._rows, **entry, "ts": iso_time(entry["ts"])})

    def append_audit(self, entry: dict) -> None:
        with self._lock:
            self._append(entry)

    def audit(self, limit: int) -> list[dict]:
        with self._lock:
            return [dict(e) for e in list(self._audit)[::-1][:limit]]

    def close(self) -> None:
        pass


_KEY_COLUMNS = (
    *KEY_KEYS,
    "created_at",
    "created_by",
    "revoked_at",
    "rotated_at",
    "previous_sha256",
    "previous_valid_until",
)
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
        d[c] = aware_time(d[c])
    d["revoked"] = bool(d["revoked"])
    d["models"] = None if d["models"] is None else tuple(json.loads(d["models"]))
    d["allow_attribution_headers"] = tuple(json.loads(d["allow_attribution_headers"]))
    d["scopes"] = tuple(json.loads(d["scopes"]))
    return KeyRecord(source="store", **d)


def _audit_from_row(row: tuple) -> dict:
    d = dict(zip(_AUDIT_COLUMNS, row))
    d["ts"] = iso_time(aware_time(d["ts"]))
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
_SQLITE_MIGRATIONS = [
    (
        "001_keys_and_audit",
        _TABLES.format(
            flag="INTEGER",
            false="0",
            int="INTEGER",
            time="TEXT",
            serial="INTEGER PRIMARY KEY AUTOINCREMENT",
            json="TEXT",
        ),
    )
]
_PG_MIGRATIONS = [
    (
        "001_keys_and_audit",
        _TABLES.format(
            flag="BOOLEAN",
            false="FALSE",
            int="BIGINT",
            time="TIMESTAMPTZ",
            serial="BIGSERIAL PRIMARY KEY",
            json="JSONB",
        ),
    )
]
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
        c.execute(
            self._sql(
                "INSERT INTO truecost_admin_audit (ts, actor, action, target, outcome, details) VALUES (?,?,?,?,?,?)"
            ),
            (
                self._time(entry["ts"]),
                entry["actor"],
                entry["action"],
                entry["target"],
                entry["outcome"],
                json.dumps(entry["details"]),
            ),
        )

    def insert(self, record: KeyRecord, audit: dict) -> None:
        sql = self._sql(
            f"INSERT INTO truecost_keys ({','.join(_KEY_COLUMNS)}) VALUES ({','.join('?' * len(_KEY_COLUMNS))})"
        )

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
            n = c.execute(
                sql, (*_to_row(record, self._time)[1:], record.name, expect.key_sha256, self._flag(expect.revoked))
            ).rowcount
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
        self._run(
            lambda c: c.execute(
                "CREATE TABLE IF NOT EXISTS _truecost_keys_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
        )
        for name, sql in _SQLITE_MIGRATIONS:
            self._run(functools.partial(self._apply, name=name, sql=sql), write=True)  # BEGIN IMMEDIATE: one applies it

    def _apply(self, c, name: str, sql: str) -> None:
        if c.execute("SELECT 1 FROM _truecost_keys_migrations WHERE name = ?", (name,)).fetchone() is None:
            for stmt in filter(str.strip, sql.split(";")):
                c.execute(stmt)
            c.execute(
                "INSERT INTO _truecost_keys_migrations VALUES (?, ?)", (name, datetime.now(timezone.utc).isoformat())
            )

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
            c.execute(
                "CREATE TABLE IF NOT EXISTS _truecost_keys_migrations "
                "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = {r[0] for r in c.execute("SELECT name FROM _truecost_keys_migrations")}
            for name, sql in _PG_MIGRATIONS:
                if name not in done:
                    with c.transaction():
                        for stmt in filter(str.strip, sql.split(";")):
                            c.execute(stmt)
                        c.execute(
                            "INSERT INTO _truecost_keys_migrations VALUES (%s, %s)", (name, datetime.now(timezone.utc))
                        )
        finally:
            c.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


BACKENDS: dict[str, Callable[[str, str | None], KeyBackend]] = {
    "memory": lambda uri, schema: MemoryKeyBackend(),
    "sqlite": lambda uri, schema: SQLiteKeyBackend(uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else uri),
    "postgresql": lambda uri, schema: PostgresKeyBackend(uri, schema=schema),
}


def backend_name(ledger: str | None) -> str:
    """Which backend keeps the keys of this ledger: postgresql://... -> postgresql, a path -> sqlite."""
    if not ledger or ledger in (":memory:", "memory:", "memory://"):
        return "memory"
    return "postgresql" if ledger.startswith(("postgresql://", "postgres://")) else "sqlite"
