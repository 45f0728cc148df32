"""Gateway configuration: one YAML file, validated at start-up; secrets by environment-variable name."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from truecost.cache.embedders import EMBEDDERS
from truecost.cache.panel import parse_verifier_spec
from truecost.errors import ConfigError, TruecostError
from truecost.gateway.registry import CACHE_BACKENDS, CACHE_INDEXES, UPSTREAMS, known
from truecost.integrations.otlp_config import parse_config as parse_otlp


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    base_url: str
    api_key_env: str | None = None
    first_byte_timeout: float = 60.0  # until the response starts (a whole non-streamed answer); `timeout:` in YAML
    max_retries: int = 2
    kind: str = "openai"  # openai (any OpenAI-compatible endpoint) | anthropic
    connect_timeout: float = 5.0
    idle_timeout: float = 30.0  # the longest gap between two chunks of a stream (never a cap on its total length)
    # Facts of this deployment that select a price and no response states, e.g. {region: regional} for an
    # OpenAI project with data residency or a Vertex regional endpoint (+10%). The response's own wins.
    price_attributes: tuple[tuple[str, str], ...] = ()

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
    # trained: the request header that supplies each metadata field the artifact's scorer reads,
    # e.g. ((subject, x-truecost-subject),); start-up refuses an artifact reading a field not mapped here
    metadata_headers: tuple[tuple[str, str], ...] = ()


ATTRIBUTION_HEADER_FIELDS = ("cost_center", "team", "tenant", "environment")
# what allow_attribution_headers may grant: those fields, and `request_id` -- the client's x-request-id becomes
# the ledger's request id (for a trusted service that opened the request itself, e.g. an SDK-tracked pipeline)
HEADER_GRANTS = (*ATTRIBUTION_HEADER_FIELDS, "request_id")
KEY_SCOPES = ("read",)


@dataclass(frozen=True)
class KeyConfig:
    name: str
    key_sha256: str
    cost_center: str | None = None
    team: str | None = None
    tenant: str | None = None
    environment: str | None = None
    revoked: bool = False
    models: tuple[str, ...] | None = None  # the aliases this key may call; None = every alias
    rpm: int | None = None  # requests per minute (per replica)
    tpm: int | None = None  # tokens per minute, estimated at admission (per replica)
    expires_at: datetime | None = None
    # attribution fields a client header may set for this key (feature and tags are always allowed)
    allow_attribution_headers: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()  # "read": may log in to the dashboard and see its own tenant and cost center

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True)
class BudgetConfig:
    field: str  # attribution field, e.g. cost_center
    value: str
    period: str  # day | month
    limit_usd: Decimal
    hard: bool = True
    unpriced: str = "refuse"  # refuse | allow: a model without a price under a hard budget


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = False
    embedder: str = "minilm"  # minilm (the higher hit rate within 10 ms) | static (sub-millisecond)
    policy: str = "online"  # online | fixed:<cosine>
    target_error: float = 0.01
    ttl_seconds: float | None = None
    max_entries: int | None = 100_000
    index: str = "exact"  # exact | hnsw
    # the verifier sources the online policy learns from, most trusted first, joined by '+'
    # (truecost.cache.panel.VERIFIERS): normalised (answers equal after folding) | embedding[:cosine] (answer
    # embeddings; default 0.92) | query (the shipped query-pair verifier) | feedback (client reports), e.g.
    # "embedding:0.9+query"
    equivalence: str = "normalised"
    # where entries and vectors live: memory (per process) | postgres (pgvector) | redis (RediSearch);
    # postgres and redis are shared by every replica pointing at the same url and prefix
    backend: str = "memory"
    # the knowledge-base version new entries are stamped with; POST /admin/cache/invalidate {"kb_version": ...}
    # switches it (for every replica when the backend is shared), and older entries are no longer served
    kb_version: str = "v0"
    url: str | None = None
    prefix: str = "truecost_cache"
    # answers that open with one of these (regular expressions, case-insensitive) are never stored;
    # None = the documented defaults of truecost.cache.refusal, [] = store refusals too
    refusal_patterns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LimitsConfig:
    """Edge limits: what a client may send before the gateway refuses it."""

    max_body_bytes: int = 1_000_000
    max_json_depth: int = 64
    max_header_bytes: int = 16_384
    header_timeout: float = 10.0
    max_n: int = 16


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
    metrics_token_sha256: str | None = None  # /metrics answers only to this bearer token when set
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    otlp: Any = None  # POST /v1/traces: span-to-step rules and attribution keys (truecost.integrations.otlp_config)

    def key_for(self, presented: str | None) -> KeyConfig | None:
        """The configured key whose hash matches, compared in constant time against every key."""
        if presented is None:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()
        found = None
        for k in self.keys:
            if hmac.compare_digest(k.key_sha256, digest):
                found = k
        return found


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _need(d: dict, key: str, where: str) -> Any:
    if key not in d or d[key] in (None, ""):
        raise ConfigError(f"{where}: missing '{key}'")
    return d[key]


TOP_LEVEL = (
    "upstreams",
    "models",
    "keys",
    "budgets",
    "ledger",
    "ledger_schema",
    "admin_key_sha256",
    "log_prompts",
    "spool",
    "compute",
    "max_body_bytes",
    "prices_files",
    "cache",
    "otel",
    "metrics_token_sha256",
    "limits",
    "otlp",
    "admin_key",
    "metrics_token",
)  # the last two only to say: store them hashed
UPSTREAM_KEYS = (
    "base_url",
    "api_key_env",
    "kind",
    "timeout",
    "first_byte_timeout",
    "connect_timeout",
    "idle_timeout",
    "price_attributes",
    "max_retries",
)
KEY_KEYS = (
    "name",
    "key_sha256",
    "cost_center",
    "team",
    "tenant",
    "environment",
    "revoked",
    "models",
    "rpm",
    "tpm",
    "expires_at",
    "allow_attribution_headers",
    "scopes",
)
BUDGET_KEYS = ("cost_center", "team", "tenant", "feature", "period", "limit_usd", "hard", "unpriced")


def _no_unknown(d: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in set(d) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown settings {', '.join(unknown)}; known: {', '.join(known)}")


def _positive(value: Any, where: str, kind: type = float) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value <= 0
        or (kind is int and value != int(value))
    ):
        raise ConfigError(f"{where}: a positive {'whole ' if kind is int else ''}number, got {value!r}")
    return kind(value)


def parse_config(doc: Any, source: str = "config") -> GatewayConfig:
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    _no_unknown(doc, TOP_LEVEL, source)
    ups = _parse_upstreams(doc, source)
    models, routes = _parse_models(doc, source, ups)
    keys = [_parse_key(k, i, f"{source}: keys[{i}]", models) for i, k in enumerate(doc.get("keys") or [])]
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"{source}: keys: names must be unique; repeated: "
            f"{', '.join(sorted({n for n in names if names.count(n) > 1}))}"
        )
    budgets = [_parse_budget(b, f"{source}: budgets[{i}]") for i, b in enumerate(doc.get("budgets") or [])]
    limits = _parse_limits(doc, source)
    return GatewayConfig(
        ups,
        models,
        keys,
        budgets,
        str(doc.get("ledger", ".truecost/gateway.db")),
        doc.get("ledger_schema"),
        _digest(doc, "admin_key", source),
        bool(doc.get("log_prompts", False)),
        doc.get("spool"),
        doc.get("compute"),
        limits.max_body_bytes,
        list(doc.get("prices_files") or []),
        _parse_cache(doc, source),
        routes,
        bool(doc.get("otel", False)),
        _digest(doc, "metrics_token", source),
        limits,
        _parse_otlp(doc, source),
    )


def _parse_otlp(doc: dict, source: str) -> Any:
    try:
        return parse_otlp(doc.get("otlp"))
    except TruecostError as exc:
        raise ConfigError(f"{source}: otlp: {exc}") from None


PRICE_ATTRIBUTE_KEYS = ("region", "inference_geo", "service_tier", "speed")


def _price_attributes(raw: object, where: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not all(isinstance(v, str) and v for v in raw.values()):
        raise ConfigError(f"{where}: a mapping of attribute to value, e.g. {{region: regional}}")
    _no_unknown(raw, PRICE_ATTRIBUTE_KEYS, where)
    return tuple(sorted((str(k), v.lower()) for k, v in raw.items()))


def _parse_upstreams(doc: dict, source: str) -> dict[str, UpstreamConfig]:
    ups = {}
    for name, u in (doc.get("upstreams") or {}).items():
        where = f"{source}: upstreams.{name}"
        if not isinstance(u, dict):
            raise ConfigError(f"{where}: expected a mapping")
        if "api_key" in u:
            raise ConfigError(f"{where}: put secrets in the environment and name the variable in api_key_env")
        _no_unknown(u, UPSTREAM_KEYS, where)
        kind = u.get("kind", "openai")
        if kind not in UPSTREAMS:
            raise ConfigError(f"{where}: kind must be {known(UPSTREAMS)}, got {kind!r}")
        first_byte = u.get("first_byte_timeout", u.get("timeout", 60.0))
        retries = u.get("max_retries", 2)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ConfigError(f"{where}.max_retries: a whole number from 0 to 10, got {retries!r}")
        ups[name] = UpstreamConfig(
            name,
            str(_need(u, "base_url", where)),
            u.get("api_key_env"),
            _positive(first_byte, f"{where}.first_byte_timeout"),
            retries,
            kind,
            _positive(u.get("connect_timeout", 5.0), f"{where}.connect_timeout"),
            _positive(u.get("idle_timeout", 30.0), f"{where}.idle_timeout"),
            _price_attributes(u.get("price_attributes"), f"{where}.price_attributes"),
        )
    if not ups:
        raise ConfigError(f"{source}: at least one upstream is needed")
    return ups


def _parse_models(doc: dict, source: str, ups: dict) -> tuple[dict[str, list[Candidate]], dict[str, RouteConfig]]:
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
            parsed.append(
                Candidate(
                    up,
                    str(_need(c, "model", f"{where}.candidates[{i}]")),
                    c.get("upstream_model"),
                    bool(c.get("self_hosted", False)),
                )
            )
        models[alias] = parsed
        if m.get("route") is not None:
            routes[alias] = _parse_route(m["route"], f"{where}.route", {c.model for c in parsed})
    if not models:
        raise ConfigError(f"{source}: at least one model alias is needed under 'models'")
    return models, routes


ROUTE_KEYS = (
    "strategy",
    "weak",
    "strong",
    "max_weak_tokens",
    "artifact",
    "threshold",
    "min_mean_logprob",
    "hold",
    "share_window",
    "metadata_headers",
)
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key", "api-key")


def _parse_route(r: Any, where: str, names: set[str]) -> RouteConfig:
    if not isinstance(r, dict) or r.get("strategy") not in ("rules", "trained", "cascade"):
        raise ConfigError(f"{where}: strategy must be 'rules', 'trained' or 'cascade'")
    _no_unknown(r, ROUTE_KEYS, where)
    for side in ("weak", "strong"):
        if r.get(side) not in names:
            raise ConfigError(f"{where}.{side}: {r.get(side)!r} is not one of the candidates {sorted(names)}")
    artifact, threshold = _route_artifact(r, where)
    hold, window = r.get("hold", "threshold"), r.get("share_window", 1000)
    if hold not in ("threshold", "share") or (hold == "share" and r["strategy"] != "trained"):
        raise ConfigError(
            f"{where}.hold: 'threshold' (the calibrated score threshold) or 'share' (the "
            f"calibrated strong-call share, trained routes only); got {hold!r}"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 50:
        raise ConfigError(f"{where}.share_window: a whole number of recent requests >= 50; got {window!r}")
    min_lp = r.get("min_mean_logprob")
    if r["strategy"] == "cascade" and (isinstance(min_lp, bool) or not isinstance(min_lp, (int, float)) or min_lp > 0):
        raise ConfigError(
            f"{where}.min_mean_logprob: a cascade needs a threshold <= 0 on the weak "
            f"answer's mean token log-probability (e.g. -0.5); got {min_lp!r}"
        )
    return RouteConfig(
        r["strategy"],
        r["weak"],
        r["strong"],
        int(r.get("max_weak_tokens", 400)),
        artifact,
        threshold,
        float(min_lp) if min_lp is not None else None,
        hold,
        window,
        _metadata_headers(r, f"{where}.metadata_headers"),
    )


def _route_artifact(r: dict, where: str) -> tuple[str | None, float | None]:
    """A trained route's artifact file (which must exist) and its optional threshold override."""
    artifact, threshold = r.get("artifact"), r.get("threshold")
    if r["strategy"] == "trained":
        if not artifact or not Path(str(artifact)).is_file():
            raise ConfigError(
                f"{where}.artifact: a trained router needs its artifact file "
                f"(`truecost router calibrate ... --out router.npz`); got {artifact!r}"
            )
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise ConfigError(f"{where}.threshold: a number, got {threshold!r}")
    return (str(artifact) if artifact else None), (float(threshold) if threshold is not None else None)


def _metadata_headers(r: dict, where: str) -> tuple[tuple[str, str], ...]:
    """{field: header}: the request header that supplies each metadata field a trained scorer reads."""
    raw = r.get("metadata_headers")
    if raw is None:
        return ()
    if r["strategy"] != "trained":
        raise ConfigError(f"{where}: only a trained route's scorer reads request metadata")
    if not isinstance(raw, dict) or not all(
        isinstance(f, str) and f and isinstance(h, str) and _HEADER_NAME.fullmatch(h) for f, h in raw.items()
    ):
        raise ConfigError(
            f"{where}: a mapping of metadata field to request header name, e.g. "
            f"{{subject: x-truecost-subject}}; got {raw!r}"
        )
    secret = sorted(h for h in raw.values() if h.lower() in CREDENTIAL_HEADERS)
    if secret:
        raise ConfigError(f"{where}: {', '.join(secret)} carries credentials, never routing metadata")
    return tuple(sorted((f, h.lower()) for f, h in raw.items()))


def _when(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        t = value
    else:
        try:
            t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{where}: an ISO 8601 time such as 2027-01-01T00:00:00Z, got {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _names(value: Any, where: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: a list of names, got {value!r}")
    bad = [v for v in value if allowed is not None and v not in allowed]
    if bad:
        raise ConfigError(f"{where}: unknown {', '.join(bad)}; allowed: {', '.join(allowed or ())}")
    return tuple(value)


def _parse_key(k: Any, i: int, where: str, models: dict) -> KeyConfig:
    if not isinstance(k, dict):
        raise ConfigError(f"{where}: expected a mapping")
    if "key" in k:
        raise ConfigError(f"{where}: store keys hashed (key_sha256), never in clear")
    _no_unknown(k, KEY_KEYS, where)
    digest = str(_need(k, "key_sha256", where)).lower()
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise ConfigError(f"{where}: key_sha256 must be 64 hex characters")
    allowed_models = None if k.get("models") is None else _names(k.get("models"), f"{where}.models", tuple(models))
    rpm = None if k.get("rpm") is None else _positive(k["rpm"], f"{where}.rpm", int)
    tpm = None if k.get("tpm") is None else _positive(k["tpm"], f"{where}.tpm", int)
    return KeyConfig(
        str(k.get("name") or f"key-{i}"),
        digest,
        k.get("cost_center"),
        k.get("team"),
        k.get("tenant"),
        k.get("environment"),
        bool(k.get("revoked", False)),
        allowed_models,
        rpm,
        tpm,
        _when(k.get("expires_at"), f"{where}.expires_at"),
        _names(k.get("allow_attribution_headers"), f"{where}.allow_attribution_headers", HEADER_GRANTS),
        _names(k.get("scopes"), f"{where}.scopes", KEY_SCOPES),
    )


def _parse_budget(b: Any, where: str) -> BudgetConfig:
    if not isinstance(b, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _no_unknown(b, BUDGET_KEYS, where)
    fld = next((f for f in ("cost_center", "team", "tenant", "feature") if f in b), None)
    if fld is None:
        raise ConfigError(f"{where}: name one of cost_center, team, tenant, feature")
    if b.get("period", "month") not in ("day", "month"):
        raise ConfigError(f"{where}: period must be day or month")
    if b.get("unpriced", "refuse") not in ("refuse", "allow"):
        raise ConfigError(f"{where}: unpriced must be refuse (a model without a price is refused) or allow")
    try:
        limit = Decimal(str(_need(b, "limit_usd", where)))
    except InvalidOperation:
        raise ConfigError(f"{where}: limit_usd must be a number") from None
    if not limit.is_finite() or limit <= 0:
        raise ConfigError(f"{where}: limit_usd must be positive")
    return BudgetConfig(
        fld, str(b[fld]), b.get("period", "month"), limit, bool(b.get("hard", True)), b.get("unpriced", "refuse")
    )


def _parse_limits(doc: dict, source: str) -> LimitsConfig:
    raw = doc.get("limits") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: limits must be a mapping")
    _no_unknown(raw, tuple(LimitsConfig.__dataclass_fields__), f"{source}: limits")
    merged = {"max_body_bytes": doc.get("max_body_bytes", 1_000_000), **raw}
    kinds = {
        "max_body_bytes": int,
        "max_json_depth": int,
        "max_header_bytes": int,
        "header_timeout": float,
        "max_n": int,
    }
    return LimitsConfig(**{k: _positive(v, f"{source}: limits.{k}", kinds[k]) for k, v in merged.items()})


def _parse_cache(doc: dict, source: str) -> CacheConfig:
    c = doc.get("cache") or {}
    if not isinstance(c, dict):
        raise ConfigError(f"{source}: cache must be a mapping")
    unknown = set(c) - set(CacheConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{source}: cache: unknown settings {', '.join(sorted(unknown))}")
    patterns = c.get("refusal_patterns")
    if patterns is not None:
        import re

        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError(f"{source}: cache.refusal_patterns must be a list of regular expressions")
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ConfigError(
                    f"{source}: cache.refusal_patterns: {p!r} is not a regular expression ({exc})"
                ) from None
        c = {**c, "refusal_patterns": tuple(patterns)}
    cache = CacheConfig(**c)
    for name, value, table in (
        ("embedder", cache.embedder, EMBEDDERS),
        ("index", cache.index, CACHE_INDEXES),
        ("backend", cache.backend, CACHE_BACKENDS),
    ):
        if value not in table:
            raise ConfigError(f"{source}: cache.{name} must be {known(table)}, got {value!r}")
    if cache.backend != "memory" and not cache.url:
        raise ConfigError(f"{source}: cache.backend {cache.backend} needs cache.url")
    try:
        parse_verifier_spec(cache.equivalence)
    except ValueError as exc:
        raise ConfigError(f"{source}: cache.equivalence: {exc}") from None
    return cache


def _digest(doc: dict, name: str, source: str) -> str | None:
    if name in doc:
        raise ConfigError(f"{source}: store the {name.replace('_', ' ')} hashed ({name}_sha256), never in clear")
    digest = doc.get(f"{name}_sha256")
    if digest is None:
        return None
    digest = str(digest).lower()
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise ConfigError(f"{source}: {name}_sha256 must be 64 hex characters")
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
