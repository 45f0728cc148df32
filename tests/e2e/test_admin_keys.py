"""The key admin API over HTTP (ASGI): create, rotate, revoke, list, audit; admin auth; strict bodies.

A tiny protected route stands in for the gateway's authentication (``store.authenticate`` and
``record.status``), and a second replica shares the SQLite ledger file.
"""

import hashlib
from datetime import datetime, timezone

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from truecost.gateway.admin import admin_routes, is_admin
from truecost.gateway.key_backends import SQLiteKeyBackend
from truecost.gateway.keys import KeyRecord, KeyStore

ADMIN = "admin-secret-for-tests"
ADMIN_DIGEST = hashlib.sha256(ADMIN.encode()).hexdigest()
YAML_SECRET = "sk-yaml-support"
H = {"authorization": f"Bearer {ADMIN}"}


class Mono:
    t = 0.0

    def __call__(self):
        return self.t


def make_app(store, admin_digest=ADMIN_DIGEST, actions=None):
    async def whoami(request):
        auth = request.headers.get("authorization", "")
        record = store.authenticate(auth[7:] if auth.startswith("Bearer ") else None, datetime.now(timezone.utc))
        if record is None:
            return JSONResponse({"error": "invalid API key"}, status_code=401)
        status = record.status(datetime.now(timezone.utc))
        if status != "active":
            return JSONResponse({"error": f"API key {status}"}, status_code=401)
        return JSONResponse({"name": record.name, "tenant": record.tenant})

    on_action = (lambda *a: actions.append(a)) if actions is not None else None
    return Starlette(
        routes=[
            Route("/whoami", whoami),
            *admin_routes(store, admin_digest, on_action=on_action, known_models=["support-bot", "chat"]),
        ]
    )


@pytest.fixture
def mono():
    return Mono()


@pytest.fixture
def store(tmp_path, mono):
    s = KeyStore(
        [KeyRecord("support", hashlib.sha256(YAML_SECRET.encode()).hexdigest(), tenant="cx")],
        SQLiteKeyBackend(tmp_path / "gw.db"),
        monotonic=mono,
    )
    yield s
    s.close()


@pytest.fixture
def actions():
    return []


@pytest.fixture
def client(store, actions):
    with TestClient(make_app(store, actions=actions)) as c:
        yield c


def who(client, secret):
    return client.get("/whoami", headers={"authorization": f"Bearer {secret}"})


def test_create_then_the_secret_authenticates_and_is_never_shown_again(client, store, actions):
    r = client.post(
        "/admin/keys",
        headers=H,
        json={
            "name": "team-a",
            "tenant": "acme",
            "models": ["chat"],
            "rpm": 60,
            "expires_at": "2099-01-01T00:00:00Z",
            "scopes": ["read"],
        },
    )
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    secret, key = r.json()["secret"], r.json()["key"]
    assert secret.startswith("sk-tc-") and key["name"] == "team-a" and key["status"] == "active"
    assert key["expires_at"] == "2099-01-01T00:00:00Z" and key["models"] == ["chat"] and key["source"] == "store"
    assert who(client, secret).json() == {"name": "team-a", "tenant": "acme"}
    listing = client.get("/admin/keys", headers=H)
    assert listing.status_code == 200
    names = {k["name"]: k for k in listing.json()["keys"]}
    assert set(names) == {"support", "team-a"} and names["support"]["source"] == "config"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in listing.text and digest not in listing.text and "key_sha256" not in listing.text
    assert names["team-a"]["fingerprint"] == "sha256:" + digest[:8]
    assert ("key.create", None, "ok") in actions and ("key.list", None, "ok") in actions


def test_rotate_revoke_and_the_audit_trail(client, store):
    secret = client.post("/admin/keys", headers=H, json={"name": "k"}).json()["secret"]
    r = client.post("/admin/keys/k/rotate", headers=H)
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert who(client, secret).status_code == 401 and who(client, new).status_code == 200
    r = client.post("/admin/keys/k/rotate", headers=H, json={"grace_seconds": 300, "reason": "scheduled"})
    newest = r.json()["secret"]
    assert who(client, new).status_code == 200 and who(client, newest).status_code == 200  # grace
    assert r.json()["key"]["previous_valid_until"] is not None
    r = client.post("/admin/keys/k/revoke", headers=H, json={"reason": "offboarded"})
    assert r.status_code == 200 and r.json()["key"]["revoked"] is True and r.json()["key"]["status"] == "revoked"
    assert who(client, newest).json() == {"error": "API key revoked"}
    assert who(client, new).status_code == 401
    assert client.post("/admin/keys/k/rotate", headers=H).status_code == 409
    assert client.post("/admin/keys/nobody/revoke", headers=H).status_code == 404
    r = client.post("/admin/keys/support/revoke", headers=H)
    assert r.status_code == 409 and "config" in r.json()["error"]["message"]
    r = client.post("/admin/keys", headers=H, json={"name": "k"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_conflict"
    entries = client.get("/admin/audit?limit=50", headers=H).json()["entries"]
    trail = [(e["action"], e["target"], e["outcome"]) for e in reversed(entries)]
    assert trail == [
        ("key.create", "k", "ok"),
        ("key.rotate", "k", "ok"),
        ("key.rotate", "k", "ok"),
        ("key.revoke", "k", "ok"),
        ("key.rotate", "k", "refused:conflict"),
        ("key.revoke", "nobody", "refused:not_found"),
        ("key.revoke", "support", "refused:read_only"),
        ("key.create", "k", "refused:conflict"),
        ("audit.read", None, "ok"),
    ]
    admin_actor = "admin:sha256:" + ADMIN_DIGEST[:8]
    assert {e["actor"] for e in entries} == {admin_actor}
    text = str(entries)
    for s in (secret, new, newest, ADMIN, ADMIN_DIGEST):
        assert s not in text
    assert entries[-1]["ts"].endswith("Z")


def test_bad_admin_key_is_401_and_audited(client, store, actions):
    for headers in (
        {"authorization": "Bearer wrong-admin-key"},
        {},
        {"authorization": f"Basic {ADMIN}"},
        {"authorization": f"Bearer {YAML_SECRET}"},
    ):
        r = client.post("/admin/keys", headers=headers, json={"name": "evil"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_key"
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/admin/keys", headers={"authorization": "Bearer nope"}).status_code == 401
    assert client.post("/admin/keys/k/revoke", headers={"authorization": "Bearer nope"}).status_code == 401
    assert [k.name for k in store.list()] == ["support"]
    rows = store.audit(100)
    assert len(rows) == 6 and all(r["outcome"] == "refused:unauthorized" for r in rows)
    wrong = "unauthenticated:sha256:" + hashlib.sha256(b"wrong-admin-key").hexdigest()[:8]
    assert rows[-1]["actor"] == wrong and rows[-1]["action"] == "key.create" and rows[-1]["details"]["status"] == 401
    assert rows[-2]["actor"] == "anonymous"
    assert rows[0]["target"] == "k" and rows[0]["action"] == "key.revoke"
    assert "wrong-admin-key" not in str(rows) and YAML_SECRET not in str(rows)
    assert actions.count(("key.create", None, "refused")) == 4


def test_is_admin_for_the_other_admin_routes():
    assert is_admin(ADMIN, ADMIN_DIGEST)
    assert (
        not is_admin(ADMIN + "x", ADMIN_DIGEST) and not is_admin(None, ADMIN_DIGEST) and not is_admin("", ADMIN_DIGEST)
    )
    assert not is_admin(ADMIN, None) and not is_admin("\ud800", ADMIN_DIGEST)


def test_refused_logins_are_audited_at_a_bounded_rate(client, store):
    for _ in range(40):
        client.get("/admin/keys", headers={"authorization": "Bearer nope"})
    assert 30 <= len(store.audit(100)) <= 33  # 30 a minute (refilled continuously); the next row counts the rest


def test_admin_api_off_without_an_admin_key(store):
    with TestClient(make_app(store, admin_digest=None)) as c:
        r = c.post("/admin/keys", headers=H, json={"name": "k"})
        assert r.status_code == 403 and "admin_key_sha256" in r.json()["error"]["message"]
        assert c.get("/admin/audit", headers=H).status_code == 403
    assert [r["outcome"] for r in store.audit(10)] == ["refused:admin_off"] * 2
    assert [k.name for k in store.list()] == ["support"]


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"name": "k", "role": "admin"}, 400, "role"),
        ({"name": "k", "rpm": "60"}, 400, "rpm"),
        ({"name": "k", "rpm": True}, 400, "rpm"),
        ({"name": "k", "models": "chat"}, 400, "models"),
        ({"name": "k", "models": ["gpt-99"]}, 400, "gpt-99"),
        ({"name": "k", "scopes": ["admin"]}, 400, "scopes"),
        ({"name": "k", "expires_at": 5}, 400, "expires_at"),
        ({"name": "../etc"}, 400, "name"),
        ({"tenant": "x"}, 400, "name"),
        (["name", "k"], 400, "JSON object"),
    ],
)
def test_create_bodies_are_validated_strictly(client, store, body, status, needle):
    r = client.post("/admin/keys", headers=H, json=body)
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text
    assert [k.name for k in store.list()] == ["support"]
    assert store.audit(1)[0]["outcome"].startswith("refused")


def test_malformed_and_oversized_bodies(client, store):
    assert client.post("/admin/keys", headers=H, content=b"{not json").status_code == 400
    assert client.post("/admin/keys", headers=H, content=b'{"name": "k", "rpm": NaN}').status_code == 400
    assert client.post("/admin/keys", headers=H, content=b"\xff\xfe").status_code == 400
    assert client.post("/admin/keys", headers=H, content=b"[" * 50_000).status_code == 400
    assert client.post("/admin/keys", headers=H, content=b"").status_code == 400
    assert client.post("/admin/keys", headers=H, content=b" " * 70_000).status_code == 413
    r = client.post("/admin/keys/support/rotate", headers=H, json={"grace": 5})
    assert r.status_code == 400 and "grace" in r.json()["error"]["message"]
    client.post("/admin/keys", headers=H, json={"name": "k"})
    assert client.post("/admin/keys/k/rotate", headers=H, json={"grace_seconds": "5"}).status_code == 400
    assert client.post("/admin/keys/k/rotate", headers=H, json={"grace_seconds": -1}).status_code == 400
    assert client.post("/admin/keys/k/revoke", headers=H, json={"reason": 5}).status_code == 400
    assert client.get("/admin/audit?limit=0", headers=H).status_code == 400
    assert client.get("/admin/audit?limit=abc", headers=H).status_code == 400
    assert client.get("/admin/audit?since=1", headers=H).status_code == 400
    assert client.get("/admin/keys?all=1", headers=H).status_code == 400
    assert [k.name for k in store.list()] == ["k", "support"]


def test_a_revocation_reaches_another_replica_within_the_ttl(tmp_path, client, store, mono):
    replica = KeyStore([], SQLiteKeyBackend(tmp_path / "gw.db"), monotonic=mono, cache_ttl=2.0)
    with TestClient(make_app(replica)) as other:
        secret = client.post("/admin/keys", headers=H, json={"name": "shared"}).json()["secret"]
        mono.t += 2.0
        assert who(other, secret).status_code == 200
        client.post("/admin/keys/shared/revoke", headers=H)
        assert who(client, secret).status_code == 401  # at once where it was revoked
        assert who(other, secret).status_code == 200  # the other replica's snapshot is younger than the TTL
        mono.t += 2.0
        assert who(other, secret).json() == {"error": "API key revoked"}
    replica.close()
