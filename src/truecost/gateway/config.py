"""Gateway configuration: one YAML file, validated at start-up; secrets by environment-variable name."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from truecost.errors import ConfigError


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    base_url: str
    api_key_env: str | None = None
    timeout: float = 60.0
    max_retries: int = 2
    kind: str = "openai"  # openai (any OpenAI-compatible endpoint) | anthropic

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        if value is None:
            raise ConfigError(f"upstream {self.name}: environment variable {self.api_key_env} is not set")
        return value


@dataclass(frozen=True)
class Candidate:
    upstream: str
    model: str  # the catalog name used for pricing, and the model sent upstream unless upstream_model says otherwise
    upstream_model: str | None = None
    self_hosted: bool = False  # price its wall-clock time on the gateway's compute resource, besides tokens

    @property
    def wire_model(self) -> str:
        return self.upstream_model or self.model


@dataclass(frozen=True)
class RouteConfig:
    """Route an alias between a weak and a strong candidate (both must be among its candidates)."""

    strategy: str  # rules | trained | cascade
    weak: str
    strong: str
    max_weak_tokens: int = 400
    artifact: str | None = None  # trained: a scorer saved by `truecost router calibrate --out` (or `router train`)
    threshold: float | None = None  # trained: overrides the artifact's calibrated threshold
    min_mean_logprob: float | None = None  # cascade: accept the weak answer at or above this mean token logprob
    hold: str = "threshold"  # trained: keep the calibrated threshold, or hold the calibrated strong-call share
    share_window: int = 1000  # hold: share -- the threshold is read from this many recent scores


@dataclass(frozen=True)
class KeyConfig:
    name: str
    key_sha256: str
    cost_center: str | None = None
    team: str | None = None
    tenant: str | None = None
    environment: str | None = None
    revoked: bool = False


@dataclass(frozen=True)
class BudgetConfig:
    field: str  # attribution field, e.g. cost_center
    value: str
    period: str  # day | month
    limit_usd: Decimal
    hard: bool = True


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = False
    embedder: str = "minilm"  # minilm (the higher hit rate within 10 ms) | static (sub-millisecond)
    policy: str = "online"  # online | fixed:<cosine>
    target_error: float = 0.01
    ttl_seconds: float | None = None
    max_entries: int | None = 100_000
    index: str = "exact"  # exact | hnsw
    # how the online policy checks a fresh answer against its neighbour's: normalised (exact text after
    # normalising) | embedding[:cosine] (the cache's embedder on both answers; default cosine 0.92)
    equivalence: str = "normalised"
    # where entries and vectors live: memory (per process) | postgres (pgvector) | redis (RediSearch);
    # postgres and redis are shared by every replica pointing at the same url and prefix
    backend: str = "memory"
    # the knowledge-base version new entries are stamped with; POST /admin/cache/invalidate {"kb_version": ...}
    # switches it (for every replica when the backend is shared), and older entries are no longer served
    kb_version: str = "v0"
    url: str | None = None
    prefix: str = "truecost_cache"


@dataclass
class GatewayConfig:
    upstreams: dict[str, UpstreamConfig]
    models: dict[str, list[Candidate]]
    keys: list[KeyConfig] = field(default_factory=list)
    budgets: list[BudgetConfig] = field(default_factory=list)
    ledger: str = ".truecost/gateway.db"  # a SQLite path, or postgresql://... shared by replicas
    ledger_schema: str | None = None  # PostgreSQL ledger only: the schema to keep the tables in
    admin_key_sha256: str | None = None  # the admin API (/admin/...) answers only to this key; off when unset
    log_prompts: bool = False  # prompts and answers never reach the log unless this is on, and then PII-scrubbed
    spool: str | None = None  # this replica's durable spool (default: beside a SQLite ledger, else .truecost/)
    compute: str | None = None
    max_body_bytes: int = 1_000_000
    prices_files: list[str] = field(default_factory=list)
    cache: CacheConfig = field(default_factory=CacheConfig)
    routes: dict[str, RouteConfig] = field(default_factory=dict)
    otel: bool = False

    def key_for(self, presented: str | None) -> KeyConfig | None:
        if presented is None:
            return None
        digest = hashlib.sha256(presented.encode()).hexdigest()
        return next((k for k in self.keys if k.key_sha256 == digest), None)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _need(d: dict, key: str, where: str) -> Any:
    if key not in d or d[key] in (None, ""):
        raise ConfigError(f"{where}: missing '{key}'")
    return d[key]


def parse_config(doc: Any, source: str = "config") -> GatewayConfig:
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    ups = {}
    for name, u in (doc.get("upstreams") or {}).items():
        where = f"{source}: upstreams.{name}"
        if not isinstance(u, dict):
            raise ConfigError(f"{where}: expected a mapping")
        if "api_key" in u:
            raise ConfigError(f"{where}: put secrets in the environment and name the variable in api_key_env")
        kind = u.get("kind", "openai")
        if kind not in ("openai", "anthropic"):
            raise ConfigError(f"{where}: kind must be openai or anthropic")
        ups[name] = UpstreamConfig(name, str(_need(u, "base_url", where)), u.get("api_key_env"),
                                   float(u.get("timeout", 60.0)), int(u.get("max_retries", 2)), kind)
    if not ups:
        raise ConfigError(f"{source}: at least one upstream is needed")
    models = {}
    routes: dict[str, RouteConfig] = {}
    for alias, m in (doc.get("models") or {}).items():
        where = f"{source}: models.{alias}"
        cands = (m or {}).get("candidates") if isinstance(m, dict) else None
        if not isinstance(cands, list) or not cands:
            raise ConfigError(f"{where}: needs a non-empty 'candidates' list")
        parsed = []
        for i, c in enumerate(cands):
            up = _need(c, "upstream", f"{where}.candidates[{i}]")
            if up not in ups:
                raise ConfigError(f"{where}.candidates[{i}]: unknown upstream {up!r}; known: {', '.join(ups)}")
            parsed.append(Candidate(up, str(_need(c, "model", f"{where}.candidates[{i}]")), c.get("upstream_model"),
                                    bool(c.get("self_hosted", False))))
        models[alias] = parsed
        r = m.get("route")
        if r is not None:
            if not isinstance(r, dict) or r.get("strategy") not in ("rules", "trained", "cascade"):
                raise ConfigError(f"{where}.route: strategy must be 'rules', 'trained' or 'cascade'")
            names = {c.model for c in parsed}
            for side in ("weak", "strong"):
                if r.get(side) not in names:
                    raise ConfigError(f"{where}.route.{side}: {r.get(side)!r} is not one of the candidates {sorted(names)}")
            artifact, threshold = r.get("artifact"), r.get("threshold")
            if r["strategy"] == "trained":
                if not artifact or not Path(str(artifact)).is_file():
                    raise ConfigError(f"{where}.route.artifact: a trained router needs its artifact file "
                                      f"(`truecost router calibrate ... --out router.npz`); got {artifact!r}")
                if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
                    raise ConfigError(f"{where}.route.threshold: a number, got {threshold!r}")
            hold, window = r.get("hold", "threshold"), r.get("share_window", 1000)
            if hold not in ("threshold", "share") or (hold == "share" and r["strategy"] != "trained"):
                raise ConfigError(f"{where}.route.hold: 'threshold' (the calibrated score threshold) or 'share' (the "
                                  f"calibrated strong-call share, trained routes only); got {hold!r}")
            if isinstance(window, bool) or not isinstance(window, int) or window < 50:
                raise ConfigError(f"{where}.route.share_window: a whole number of recent requests >= 50; got {window!r}")
            min_lp = r.get("min_mean_logprob")
            if r["strategy"] == "cascade" and (isinstance(min_lp, bool) or not isinstance(min_lp, (int, float))
                                               or min_lp > 0):
                raise ConfigError(f"{where}.route.min_mean_logprob: a cascade needs a threshold <= 0 on the weak "
                                  f"answer's mean token log-probability (e.g. -0.5); got {min_lp!r}")
            routes[alias] = RouteConfig(r["strategy"], r["weak"], r["strong"], int(r.get("max_weak_tokens", 400)),
                                        str(artifact) if artifact else None,
                                        float(threshold) if threshold is not None else None,
                                        float(min_lp) if min_lp is not None else None, hold, window)
    if not models:
        raise ConfigError(f"{source}: at least one model alias is needed under 'models'")
    keys = []
    for i, k in enumerate(doc.get("keys") or []):
        where = f"{source}: keys[{i}]"
        if "key" in k:
            raise ConfigError(f"{where}: store keys hashed (key_sha256), never in clear")
        digest = str(_need(k, "key_sha256", where)).lower()
        if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise ConfigError(f"{where}: key_sha256 must be 64 hex characters")
        keys.append(KeyConfig(str(k.get("name") or f"key-{i}"), digest, k.get("cost_center"), k.get("team"),
                              k.get("tenant"), k.get("environment"), bool(k.get("revoked", False))))
    budgets = []
    for i, b in enumerate(doc.get("budgets") or []):
        where = f"{source}: budgets[{i}]"
        fld = next((f for f in ("cost_center", "team", "tenant", "feature") if f in b), None)
        if fld is None:
            raise ConfigError(f"{where}: name one of cost_center, team, tenant, feature")
        if b.get("period", "month") not in ("day", "month"):
            raise ConfigError(f"{where}: period must be day or month")
        try:
            limit = Decimal(str(_need(b, "limit_usd", where)))
        except InvalidOperation:
            raise ConfigError(f"{where}: limit_usd must be a number") from None
        if limit <= 0:
            raise ConfigError(f"{where}: limit_usd must be positive")
        budgets.append(BudgetConfig(fld, str(b[fld]), b.get("period", "month"), limit, bool(b.get("hard", True))))
    c = doc.get("cache") or {}
    if not isinstance(c, dict):
        raise ConfigError(f"{source}: cache must be a mapping")
    unknown = set(c) - set(CacheConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{source}: cache: unknown settings {', '.join(sorted(unknown))}")
    cache = CacheConfig(**c)
    if cache.embedder not in ("static", "minilm") or cache.index not in ("exact", "hnsw"):
        raise ConfigError(f"{source}: cache.embedder must be static or minilm, cache.index exact or hnsw")
    if cache.backend not in ("memory", "postgres", "redis"):
        raise ConfigError(f"{source}: cache.backend must be memory, postgres or redis")
    if cache.backend != "memory" and not cache.url:
        raise ConfigError(f"{source}: cache.backend {cache.backend} needs cache.url")
    kind, _, arg = cache.equivalence.partition(":")
    try:
        ok = kind == "normalised" and not arg or kind == "embedding" and (not arg or 0 < float(arg) < 1)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{source}: cache.equivalence must be normalised or embedding[:cosine], got {cache.equivalence!r}")
    return GatewayConfig(ups, models, keys, budgets, str(doc.get("ledger", ".truecost/gateway.db")),
                         doc.get("ledger_schema"), _admin_digest(doc, source), bool(doc.get("log_prompts", False)),
                         doc.get("spool"), doc.get("compute"), int(doc.get("max_body_bytes", 1_000_000)),
                         list(doc.get("prices_files") or []), cache, routes, bool(doc.get("otel", False)))


def _admin_digest(doc: dict, source: str) -> str | None:
    if "admin_key" in doc:
        raise ConfigError(f"{source}: store the admin key hashed (admin_key_sha256), never in clear")
    digest = doc.get("admin_key_sha256")
    if digest is None:
        return None
    digest = str(digest).lower()
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise ConfigError(f"{source}: admin_key_sha256 must be 64 hex characters")
    return digest


def load_config(path: str | Path) -> GatewayConfig:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    return parse_config(doc, str(p))
