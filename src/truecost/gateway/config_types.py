"""The gateway's typed configuration (what `config.parse_config` builds) and the checks its parsers share."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from truecost.errors import ConfigError


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
class FeedbackConfig:
    """Client feedback on cache hits: POST /v1/cache/feedback, and the regenerate pattern."""

    enabled: bool = True  # false: the endpoint answers 409 and a repeat is an ordinary lookup
    # "wrong" reports always teach the online policy: each is an error on a hit it served, which tightens its
    # error budget. "right" reports are accepted and counted, but teach it only with accept_right: true -- the
    # policy is one model shared by every key and tenant, and clients calling every hit right could otherwise
    # make it answer more for all of them (its budget grows up to 1.5 x target_error when the hits it checked
    # erred less than predicted). With accept_right, and `feedback` in `equivalence`, reports also score the
    # lookup-time verifiers (only then do verdicts arrive both ways).
    accept_right: bool = False
    # the same client asking again within this many seconds for what the entry it was just served would
    # answer -- or for the same request with x-truecost-cache: bypass -- reports that hit wrong and is answered
    # by the upstream (the answer is not stored); 0: off
    regenerate_window_seconds: float = 120.0
    # who "the same client" is: user -- the key and the request's `user` / `safety_identifier` (a request
    # without one is never a regenerate: a service's key may relay many people asking the same question);
    # key -- the key alone, for keys that each stand for one person
    regenerate_by: str = "user"


@dataclass(frozen=True)
class JudgeConfig:
    """An LLM judge the online policy learns from (truecost.cache.judge): `judge` in cache.equivalence.

    Called after a miss about the one pair the policy learns from, within a budget per replica; each call is a
    `cache_judge` step on the request whose miss triggered it, priced from its usage."""

    upstream: str  # a configured upstream
    model: str  # the catalog name of a model some alias routes to on that upstream (its wire name is used)
    # the budget, per replica (null: no limit of that kind; at least one is set). Dollars are checked before each
    # call against an estimate of its cost from the catalog (prompt characters / 3, max_tokens out); an unpriced
    # model with a dollar limit is never called
    requests_per_hour: int | None = 60
    dollars_per_day: Decimal | None = Decimal("1.00")
    timeout: float = 10.0  # seconds for one call; a judge that does not answer in time abstains
    max_tokens: int = 4  # the reply is one word
    p_yes: float = 0.95  # the probability a "yes" stands for before the panel measures the judge
    p_no: float = 0.05


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
    # "embedding:0.9+query"; judge (an LLM judge: needs the judge block below), e.g. "judge+query"
    equivalence: str = "normalised"
    judge: JudgeConfig | None = None
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
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)


@dataclass(frozen=True)
class LimitsConfig:
    """Edge limits: what a client may send before the gateway refuses it."""

    max_body_bytes: int = 1_000_000
    max_json_depth: int = 64
    max_header_bytes: int = 16_384
    header_timeout: float = 10.0
    max_n: int = 16
    # spans a key may export to POST /v1/traces per minute (per replica): each span becomes a ledger row, so a
    # key that floods cannot fill the disk faster than this (over it: 429 with retry-after, which exporters honour)
    ingest_spans_per_minute: int = 120_000


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


# a key's settings in the config file (the key store's table has these columns and its own)
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
