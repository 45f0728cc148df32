"""KeyStore on every backend: hashed storage, authenticate (constant time), create/rotate/revoke/list/audit."""

import hashlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from truecost.errors import ConfigError, LedgerError
from truecost.gateway import keys as keys_mod
from truecost.gateway.key_backends import BACKENDS, MemoryKeyBackend, PostgresKeyBackend, SQLiteKeyBackend, backend_name
from truecost.gateway.keys import (
    InvalidKeySpec,
    KeyConflict,
    KeyNotFound,
    KeyRecord,
    KeyStore,
    ReadOnlyKey,
    open_key_store,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
YAML_SECRET = "sk-yaml-support"


@dataclass(frozen=True)
class OldKeyConfig:  # the config's KeyConfig before the new fields: still accepted
    name: str
    key_sha256: str
    cost_center: str | None = None
    team: str | None = None
    tenant: str | None = None
    environment: str | None = None
    revoked: bool = False


class Mono:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def location(request, tmp_path):
    """(backend factory, description) -- each call opens a new backend on the same database."""
    if request.param == "memory":
        shared = MemoryKeyBackend()
        yield lambda: shared
    elif request.param == "sqlite":
        yield lambda: SQLiteKeyBackend(tmp_path / "ledger.db")
    else:
        from tests.support.servers import fresh_name

        uri, schema = request.getfixturevalue("postgres_server").uri, fresh_name()
        yield lambda: PostgresKeyBackend(uri, schema=schema)


@pytest.fixture
def mono():
    return Mono()


@pytest.fixture
def store(location, mono):
    s = KeyStore(
        [OldKeyConfig("support", hashlib.sha256(YAML_SECRET.encode()).hexdigest(), cost_center="cx")],
        location(),
        monotonic=mono,
        now=lambda: T0,
    )
    yield s
    s.close()


def test_create_returns_a_secret_once_and_stores_only_its_hash(store):
    record, secret = store.create(
        "team-a",
        cost_center="cc",
        team="t",
        tenant="acme",
        environment="prod",
        models=["support-bot"],
        rpm=60,
        tpm=1000,
        scopes=["read"],
        allow_attribution_headers=["cost_center"],
        actor="admin:sha256:00000000",
    )
    assert secret.startswith("sk-tc-") and len(secret) > 40
    assert record.key_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert record.source == "store" and record.created_at == T0
    got = store.authenticate(secret, T0)
    assert got is not None and got.name == "team-a" and got.status(T0) == "active"
    assert (got.cost_center, got.team, got.tenant, got.environment) == ("cc", "t", "acme", "prod")
    assert got.models == ("support-bot",) and got.allows_model("support-bot") and not got.allows_model("other")
    assert (got.rpm, got.tpm, got.scopes, got.allow_attribution_headers) == (60, 1000, ("read",), ("cost_center",))
    stored = {r.name: r for r in store.list()}
    assert set(stored) == {"support", "team-a"} and stored["support"].source == "config"
    assert secret not in repr(stored) and record.key_sha256 not in repr(record)
    public = stored["team-a"].public(T0)
    assert public["fingerprint"] == "sha256:" + record.key_sha256[:8] and public["status"] == "active"
    assert secret not in str(public) and record.key_sha256 not in str(public)
    assert store.authenticate("sk-tc-wrong", T0) is None and store.authenticate(None, T0) is None
    assert store.authenticate("", T0) is None and store.authenticate("\ud800", T0) is None


def test_the_database_never_holds_the_secret(tmp_path):
    s = KeyStore([], SQLiteKeyBackend(tmp_path / "l.db"), now=lambda: T0)
    _, secret = s.create("a", actor="admin:x")
    s.rotate("a", "admin:x", grace_seconds=60)
    s.close()
    conn = sqlite3.connect(tmp_path / "l.db")
    dump = "\n".join(conn.iterdump())
    assert "truecost_keys" in dump and secret not in dump and secret[6:] not in dump


def test_yaml_keys_authenticate_and_are_read_only(store):
    got = store.authenticate(YAML_SECRET, T0)
    assert got.name == "support" and got.source == "config" and got.cost_center == "cx" and got.models is None
    with pytest.raises(ReadOnlyKey, match="config"):
        store.rotate("support", "admin:x")
    with pytest.raises(ReadOnlyKey, match="editing"):
        store.revoke("support", "admin:x")
    with pytest.raises(KeyConflict, match="config file"):
        store.create("support", actor="admin:x")
    store.create("b", actor="admin:x")
    with pytest.raises(KeyConflict, match="already exists"):
        store.create("b", actor="admin:x")
    with pytest.raises(KeyNotFound):
        store.revoke("nobody", "admin:x")


def test_rotate_stops_the_old_secret_at_once_or_after_the_grace(store):
    _, first = store.create("k", actor="admin:x")
    record, second = store.rotate("k", "admin:x")
    assert second != first and record.rotated_at == T0
    assert store.authenticate(first, T0) is None and store.authenticate(second, T0).name == "k"
    _, third = store.rotate("k", "admin:x", grace_seconds=30, now=T0)
    assert store.authenticate(second, T0 + timedelta(seconds=29)).name == "k"
    assert store.authenticate(second, T0 + timedelta(seconds=30)) is None
    assert store.authenticate(third, T0 + timedelta(seconds=30)).name == "k"
    for bad in (-1, True, "5", float("nan"), 10**9):
        with pytest.raises(InvalidKeySpec, match="grace_seconds"):
            store.rotate("k", "admin:x", grace_seconds=bad)


def test_revoke_is_immediate_here_and_keeps_a_distinct_answer(store):
    _, secret = store.create("k", actor="admin:x")
    _, newer = store.rotate("k", "admin:x", grace_seconds=600)
    record = store.revoke("k", "admin:x", reason="leaked")
    assert record.revoked and record.revoked_at == T0
    got = store.authenticate(newer, T0)
    assert got is not None and got.revoked and got.status(T0) == "revoked"
    assert store.authenticate(secret, T0) is None  # the grace of the rotated-away secret ends with the revocation
    assert store.revoke("k", "admin:x").revoked  # idempotent
    with pytest.raises(KeyConflict, match="revoked"):
        store.rotate("k", "admin:x")


def test_expiry(store):
    _, secret = store.create("k", expires_at="2026-11-01T12:00:10Z", actor="admin:x")
    assert store.authenticate(secret, T0).status(T0) == "active"
    later = T0 + timedelta(seconds=10)
    got = store.authenticate(secret, later)
    assert got.expired(later) and got.status(later) == "expired"
    with pytest.raises(InvalidKeySpec, match="past"):
        store.create("old", expires_at="2020-01-01T00:00:00Z", actor="admin:x")
    with pytest.raises(InvalidKeySpec, match="time zone"):
        store.create("naive", expires_at="2027-01-01T00:00:00", actor="admin:x")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"rpm": True}, "rpm"),
        ({"rpm": "10"}, "rpm"),
        ({"tpm": 0}, "tpm"),
        ({"tpm": 1.5}, "tpm"),
        ({"scopes": ["write"]}, "scopes"),
        ({"scopes": "read"}, "scopes"),
        ({"models": "support-bot"}, "models"),
        ({"allow_attribution_headers": ["feature"]}, "allow_attribution_headers"),
        ({"cost_center": 7}, "cost_center"),
        ({"tenant": ""}, "tenant"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"models": ["nope"]}, "nope"),
    ],
)
def test_fields_are_checked_strictly(fields, match):
    s = KeyStore([], now=lambda: T0)
    with pytest.raises(InvalidKeySpec, match=match):
        s.create("k", actor="admin:x", known_models=["support-bot"], **fields)
    for bad_name in ("", "a/b", "x" * 65, "-lead", 5, "sp ace"):
        with pytest.raises(InvalidKeySpec, match="name"):
            s.create(bad_name, actor="admin:x")
    assert s.list() == []
    assert [e["outcome"] for e in s.audit(100)] == ["refused:invalid"] * 7


def test_authenticate_compares_in_constant_time(store, monkeypatch):
    _, secret = store.create("k", actor="admin:x")
    calls = []
    real = keys_mod.hmac.compare_digest
    monkeypatch.setattr(keys_mod.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert store.authenticate(secret, T0).name == "k"
    hits = len(calls)
    assert hits >= 1
    assert store.authenticate("sk-tc-not-a-key", T0) is None
    assert len(calls) > hits  # a miss is compared too (against a dummy when no bucket matches)
    monkeypatch.setattr(keys_mod.hmac, "compare_digest", lambda a, b: False)
    assert store.authenticate(secret, T0) is None  # the answer comes from compare_digest, not from ==


def test_a_second_replica_sees_creation_and_revocation_within_the_ttl(location, mono):
    a = KeyStore([], location(), monotonic=mono, now=lambda: T0, cache_ttl=2.0)
    b = KeyStore([], location(), monotonic=mono, now=lambda: T0, cache_ttl=2.0)
    _, secret = a.create("shared", actor="admin:x")
    assert a.authenticate(secret, T0).name == "shared"  # immediate on the replica that made the change
    assert b.authenticate(secret, T0) is None  # b's snapshot is younger than the TTL
    mono.t += 2.0
    assert b.authenticate(secret, T0).status(T0) == "active"
    a.revoke("shared", "admin:x")
    assert a.authenticate(secret, T0).status(T0) == "revoked"
    mono.t += 1.0
    assert b.authenticate(secret, T0).status(T0) == "active"  # within the TTL: still the old snapshot
    mono.t += 1.0
    assert b.authenticate(secret, T0).status(T0) == "revoked"
    assert b.has_keys()
    a.close(), b.close()


def test_a_stale_change_loses_to_a_concurrent_one(location):
    a = KeyStore([], location(), now=lambda: T0)
    b = KeyStore([], location(), now=lambda: T0)
    a.create("k", actor="admin:x")
    stale = b._backend.get("k")
    a.revoke("k", "admin:x")
    from dataclasses import replace

    assert not b._backend.replace(
        replace(stale, key_sha256="f" * 64), stale, b._entry("x", "key.rotate", "k", "ok", {}, T0)
    )
    assert b._backend.get("k").revoked  # the revocation was not undone by a rotation based on stale data
    with pytest.raises(KeyConflict):
        b.rotate("k", "admin:x")
    a.close(), b.close()


def test_every_change_and_refusal_is_audited_without_secrets(store):
    _, secret = store.create("k", tenant="acme", actor="admin:sha256:aaaaaaaa")
    _, secret2 = store.rotate("k", "admin:sha256:aaaaaaaa", grace_seconds=5, reason="routine")
    store.revoke("k", "admin:sha256:aaaaaaaa")
    with pytest.raises(ReadOnlyKey):
        store.revoke("support", "admin:sha256:aaaaaaaa")
    assert store.record_audit("admin:sha256:aaaaaaaa", "cache.invalidate", "kb", {"kb_version": "v2"})
    rows = store.audit(10)
    assert [(r["action"], r["target"], r["outcome"]) for r in rows] == [
        ("cache.invalidate", "kb", "ok"),
        ("key.revoke", "support", "refused:read_only"),
        ("key.revoke", "k", "ok"),
        ("key.rotate", "k", "ok"),
        ("key.create", "k", "ok"),
    ]
    assert all(r["actor"] == "admin:sha256:aaaaaaaa" and r["ts"] == "2026-11-01T12:00:00Z" for r in rows)
    assert rows[0]["details"] == {"kb_version": "v2"} and rows[3]["details"]["reason"] == "routine"
    assert rows[4]["details"]["tenant"] == "acme"
    assert rows[0]["id"] > rows[1]["id"]
    text = repr(rows)
    for s in (secret, secret2, hashlib.sha256(secret.encode()).hexdigest()):
        assert s not in text
    assert len(store.audit(2)) == 2


def test_names_clashing_between_config_and_store_are_refused_at_start(location):
    first = KeyStore([], location(), now=lambda: T0)
    first.create("support", actor="admin:x")
    with pytest.raises(ConfigError, match="support"):
        KeyStore([OldKeyConfig("support", "a" * 64)], location())
    with pytest.raises(ConfigError, match="twice"):
        KeyStore([OldKeyConfig("x", "a" * 64), OldKeyConfig("x", "b" * 64)], MemoryKeyBackend())
    first.close()


def test_an_unreadable_store_keeps_the_last_snapshot():
    backend, mono = MemoryKeyBackend(), Mono()
    s = KeyStore([], backend, monotonic=mono, now=lambda: T0)
    _, secret = s.create("k", actor="admin:x")
    assert s.authenticate(secret, T0).name == "k"

    def down():
        raise LedgerError("server went away")

    backend.load = backend.version = down
    mono.t += 5
    assert s.authenticate(secret, T0).name == "k"
    assert s.record_audit("admin:x", "cache.invalidate", None) is True


def test_a_reload_reads_the_table_only_when_a_key_changed(location, mono):
    a = KeyStore([], location(), monotonic=mono, now=lambda: T0)
    b = KeyStore([], location(), monotonic=mono, now=lambda: T0)
    loads = []
    real = b._backend.load
    b._backend.load = lambda: loads.append(1) or real()
    for _ in range(5):
        mono.t += 2.0
        assert b.authenticate("sk-tc-x", T0) is None
    assert loads == []
    _, secret = a.create("k", actor="admin:x")
    mono.t += 2.0
    assert b.authenticate(secret, T0).name == "k" and len(loads) == 1
    a.close(), b.close()


def test_new_config_fields_are_read_and_backends_chosen_by_uri(tmp_path):
    from truecost.gateway.config import KeyConfig

    r = KeyRecord.from_config(
        KeyConfig(
            "n", "A" * 64, models=("a",), rpm=5, expires_at=T0, allow_attribution_headers=("team",), scopes=("read",)
        )
    )
    assert (r.models, r.rpm, r.expires_at) == (("a",), 5, T0)
    assert (r.allow_attribution_headers, r.scopes) == (("team",), ("read",))
    assert r.key_sha256 == "a" * 64 and r.status(T0) == "expired"
    assert backend_name("postgresql://u@h/db") == backend_name("postgres://h/db") == "postgresql"
    assert backend_name(str(tmp_path / "gw.db")) == backend_name("sqlite:///x.db") == "sqlite"
    assert backend_name(None) == backend_name(":memory:") == "memory"
    assert set(BACKENDS) == {"memory", "sqlite", "postgresql"}
    s = open_key_store([r], str(tmp_path / "gw.db"))
    assert isinstance(s._backend, SQLiteKeyBackend) and [k.name for k in s.list()] == ["n"]
    s.close()
    conn = sqlite3.connect(tmp_path / "gw.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= {
        "truecost_keys",
        "truecost_admin_audit",
    }
