"""The security suite's shared gateway: its keys, budgets, models and secrets (written per spec15's config keys)."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.security.harness import sha

# the upstream credentials: random per run, so a leak cannot be a coincidence
UPSTREAM_KEY = "sk-live-" + secrets.token_hex(20)
UPSTREAM_KEY_CORE = UPSTREAM_KEY[len("sk-live-") :]
USERINFO_PASSWORD = "pw" + secrets.token_hex(10)
ADMIN_KEY = "sk-admin-" + secrets.token_hex(12)
METRICS_TOKEN = "mt-" + secrets.token_hex(12)

# name -> (the key a client presents, its config entry beyond name/key_sha256)
KEYS: dict[str, tuple[str, dict]] = {
    "plain": (
        "sk-plain-" + secrets.token_hex(8),
        {"cost_center": "cc-plain", "team": "t-plain", "tenant": "acme", "environment": "prod", "scopes": ["read"]},
    ),
    "other": (
        "sk-other-" + secrets.token_hex(8),
        {"cost_center": "cc-other", "team": "t-other", "tenant": "globex", "environment": "prod", "scopes": ["read"]},
    ),
    "noscope": ("sk-noscope-" + secrets.token_hex(8), {"cost_center": "cc-noscope", "tenant": "initech"}),
    "locked": (
        "sk-locked-" + secrets.token_hex(8),
        {"cost_center": "cc-locked", "team": "t-locked", "tenant": "tn-locked", "environment": "prod"},
    ),
    "trusted-exhausted": (
        "sk-trusted-exh-" + secrets.token_hex(8),
        {
            "cost_center": "cc-exhausted2",
            "tenant": "tn-exhausted2",
            "allow_attribution_headers": ["cost_center", "tenant"],
        },
    ),
    "trusted": (
        "sk-trusted-" + secrets.token_hex(8),
        {
            "cost_center": "cc-trusted",
            "team": "t-trusted",
            "tenant": "tn-trusted",
            "allow_attribution_headers": ["cost_center"],
        },
    ),
    "exhausted": ("sk-exhausted-" + secrets.token_hex(8), {"cost_center": "cc-exhausted", "tenant": "tn-exhausted"}),
    "est": ("sk-est-" + secrets.token_hex(8), {"cost_center": "cc-est", "tenant": "tn-est"}),
    "settle": ("sk-settle-" + secrets.token_hex(8), {"cost_center": "cc-settle", "tenant": "tn-settle"}),
    "hangup": ("sk-hangup-" + secrets.token_hex(8), {"cost_center": "cc-hangup", "tenant": "tn-hangup"}),
    "burst": ("sk-burst-" + secrets.token_hex(8), {"cost_center": "cc-burst", "tenant": "tn-burst"}),
    "unpriced": ("sk-unpriced-" + secrets.token_hex(8), {"cost_center": "cc-unpriced"}),
    "unpriced-ok": ("sk-unpriced-ok-" + secrets.token_hex(8), {"cost_center": "cc-unpriced-ok"}),
    "embed": ("sk-embed-" + secrets.token_hex(8), {"cost_center": "cc-embed"}),
    "expired": (
        "sk-expired-" + secrets.token_hex(8),
        {"cost_center": "cc-expired", "expires_at": "2020-01-01T00:00:00Z"},
    ),
    "revoked": (
        "sk-revoked-" + secrets.token_hex(8),
        {"cost_center": "cc-revoked", "revoked": True, "scopes": ["read"]},
    ),
    "models": ("sk-models-" + secrets.token_hex(8), {"cost_center": "cc-models", "models": ["chat"]}),
    "rpm": ("sk-rpm-" + secrets.token_hex(8), {"cost_center": "cc-rpm", "rpm": 3}),
    "tpm": ("sk-tpm-" + secrets.token_hex(8), {"cost_center": "cc-tpm", "tpm": 600}),
    "edge": ("sk-edge-" + secrets.token_hex(8), {"cost_center": "cc-edge", "tenant": "tn-edge"}),
    "secrets": ("sk-secrets-" + secrets.token_hex(8), {"cost_center": "cc-secrets", "tenant": "tn-secrets"}),
}


def key(name: str) -> str:
    return KEYS[name][0]


# hard budgets (limit in USD); see each test for why the figure
BUDGETS = [
    {"cost_center": "cc-exhausted", "period": "day", "limit_usd": "0.000001", "hard": True},
    {"cost_center": "cc-exhausted2", "period": "day", "limit_usd": "0.000001", "hard": True},
    {"cost_center": "ops", "period": "day", "limit_usd": "100", "hard": True},  # where a bypass would bill to
    {"cost_center": "cc-est", "period": "day", "limit_usd": "0.001", "hard": True},
    {"cost_center": "cc-settle", "period": "day", "limit_usd": "0.1", "hard": True},
    {"cost_center": "cc-hangup", "period": "day", "limit_usd": "0.004", "hard": True},
    {"cost_center": "cc-burst", "period": "day", "limit_usd": "0.002", "hard": True},
    {"cost_center": "cc-unpriced", "period": "day", "limit_usd": "1", "hard": True},
    {"cost_center": "cc-unpriced-ok", "period": "day", "limit_usd": "1", "hard": True, "unpriced": "allow"},
    {"cost_center": "cc-embed", "period": "day", "limit_usd": "0.00001", "hard": True},
]

LUNA = "gpt-6-luna"
UNPRICED_MODEL = "acme-house-llm-unpriced-7b"
BEHAVIOURS = [
    "ok",
    "echo-usage",
    "refuse",
    "slow",
    "drip",
    "drip-long",
    "stall",
    "usage-float",
    "usage-cached-gt",
    "usage-negative",
    "usage-string",
    "echo-500",
    "echo-401",
    "echo-403",
    "echo-429",
    "error-in-200",
    "redirect-loop",
    "bad-status",
    "garbage-status",
    "header-space",
    "truncated",
    "invalid-json",
    "bad-chunked",
    "close",
    "stream-garbage",
    "stream-error",
]
HOSTILE = [
    "echo-500",
    "echo-401",
    "echo-403",
    "echo-429",
    "error-in-200",
    "redirect-loop",
    "bad-status",
    "garbage-status",
    "header-space",
    "truncated",
    "invalid-json",
    "bad-chunked",
    "close",
    "stream-garbage",
    "stream-error",
]


EMBED_HOSTILE = [
    "echo-500",
    "echo-401",
    "error-in-200",
    "redirect-loop",
    "bad-status",
    "garbage-status",
    "header-space",
    "invalid-json",
    "bad-chunked",
]
# behaviours of the shared hostile upstream (tests/support/hostile_upstream.py), reached through an
# OpenAI-compatible upstream ("sh-<behaviour>") and an Anthropic one ("sha-<behaviour>")
SHARED_HOSTILE = [
    "malformed-status",
    "header-space",
    "redirect-loop",
    "secret-500",
    "secret-429",
    "unauthorized",
    "forbidden",
    "error-in-200",
    "not-json",
    "garbage",
    "close",
]


def upstream_block(url: str, **over) -> dict:
    return {
        "base_url": url + "/v1",
        "api_key_env": "TC_UPSTREAM_KEY",
        "kind": "openai",
        "max_retries": 1,
        "connect_timeout": 1.0,
        "timeout": 2.5,
        "first_byte_timeout": 2.5,
        "idle_timeout": 1.0,
        **over,
    }


def main_config(tmp: Path, upstream_url: str, refused_port: int, shared_url: str, **extra) -> dict:
    """``refused_port``: a loopback port bound by the test run and not listening (connections are refused)."""
    models = {"chat": {"candidates": [{"upstream": "hostile", "model": LUNA, "upstream_model": "ok"}]}}
    for b in BEHAVIOURS:
        models[b] = {"candidates": [{"upstream": "hostile", "model": LUNA, "upstream_model": b}]}
    for b in SHARED_HOSTILE:
        models[f"sh-{b}"] = {"candidates": [{"upstream": "shared", "model": LUNA, "upstream_model": b}]}
        models[f"sha-{b}"] = {
            "candidates": [{"upstream": "shared-anthropic", "model": "claude-sonnet-5.5", "upstream_model": b}]
        }
    for b in EMBED_HOSTILE:
        models[f"embed-{b}"] = {
            "candidates": [{"upstream": "hostile", "model": "text-embedding-3-small", "upstream_model": b}]
        }
    for b in ("usage-float", "usage-cached-over"):
        models[f"sh-{b}"] = {"candidates": [{"upstream": "shared", "model": LUNA, "upstream_model": b}]}
        models[f"sha-{b}"] = {
            "candidates": [{"upstream": "shared-anthropic", "model": "claude-sonnet-5.5", "upstream_model": b}]
        }
    models["house"] = {"candidates": [{"upstream": "hostile", "model": UNPRICED_MODEL, "upstream_model": "ok"}]}
    models["embed"] = {"candidates": [{"upstream": "hostile", "model": "text-embedding-3-small"}]}
    models["userinfo"] = {"candidates": [{"upstream": "userinfo", "model": LUNA, "upstream_model": "ok"}]}
    return {
        "ledger": str(tmp / "ledger.db"),
        "admin_key_sha256": sha(ADMIN_KEY),
        "metrics_token_sha256": sha(METRICS_TOKEN),
        "limits": {
            "max_body_bytes": 1_000_000,
            "max_json_depth": 64,
            "max_header_bytes": 16384,
            "header_timeout": 2.0,
            "max_n": 16,
        },
        "upstreams": {
            "hostile": upstream_block(upstream_url),
            "shared": upstream_block(shared_url, max_retries=0),
            "shared-anthropic": upstream_block(shared_url, max_retries=0, kind="anthropic"),
            # credentials in the URL's userinfo, towards a port nothing listens on
            "userinfo": upstream_block(
                f"http://svc-account:{USERINFO_PASSWORD}@127.0.0.1:{refused_port}", max_retries=0
            ),
        },
        "models": models,
        "keys": [{"name": n, "key_sha256": sha(k), **conf} for n, (k, conf) in KEYS.items()],
        "budgets": BUDGETS,
        **extra,
    }


# the cache-enabled gateway: its own keys (with and without a tenant) and a settle budget
CACHE_KEYS = {
    "tenant": "sk-cache-tenant-" + secrets.token_hex(8),
    "lone-a": "sk-cache-lone-a-" + secrets.token_hex(8),
    "lone-b": "sk-cache-lone-b-" + secrets.token_hex(8),
    "settle": "sk-cache-settle-" + secrets.token_hex(8),
}


def cache_config(tmp: Path, upstream_url: str) -> dict:
    models = {"chat": {"candidates": [{"upstream": "hostile", "model": LUNA, "upstream_model": "ok"}]}}
    for b in BEHAVIOURS:
        models[b] = {"candidates": [{"upstream": "hostile", "model": LUNA, "upstream_model": b}]}
    return {
        "ledger": str(tmp / "cache.db"),
        "upstreams": {"hostile": upstream_block(upstream_url)},
        "models": models,
        "keys": [
            {"name": "tenant", "key_sha256": sha(CACHE_KEYS["tenant"]), "tenant": "t-cache", "cost_center": "cc-cache"},
            {"name": "lone-a", "key_sha256": sha(CACHE_KEYS["lone-a"]), "cost_center": "cc-cache"},
            {"name": "lone-b", "key_sha256": sha(CACHE_KEYS["lone-b"]), "cost_center": "cc-cache"},
            {
                "name": "settle",
                "key_sha256": sha(CACHE_KEYS["settle"]),
                "cost_center": "cc-settle",
                "tenant": "t-settle",
            },
        ],
        "budgets": [{"cost_center": "cc-settle", "period": "day", "limit_usd": "0.1", "hard": True}],
        # minilm, not static: the static embedder is distilled (minutes) on its first use on a machine
        "cache": {"enabled": True, "embedder": "minilm", "policy": "fixed:0.9"},
    }
