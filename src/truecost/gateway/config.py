"""Gateway configuration: one YAML file, validated at start-up; secrets by environment-variable name."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from truecost.cache.embedders import EMBEDDERS
from truecost.cache.panel import parse_verifier_spec
from truecost.cache.served import REGENERATE_BY
from truecost.errors import ConfigError, TruecostError
from truecost.gateway.registry import CACHE_BACKENDS, CACHE_INDEXES, UPSTREAMS, known
from truecost.integrations.otlp_config import parse_config as parse_otlp
from truecost.gateway.config_routes import _parse_models
from truecost.gateway.config_types import (  # noqa: F401  (re-exported: config's public names)
    ATTRIBUTION_HEADER_FIELDS,
    HEADER_GRANTS,
    KEY_KEYS,
    KEY_SCOPES,
    BudgetConfig,
    CacheConfig,
    Candidate,
    FeedbackConfig,
    GatewayConfig,
    JudgeConfig,
    KeyConfig,
    LimitsConfig,
    RouteConfig,
    UpstreamConfig,
    _need,
    _no_unknown,
    _positive,
    hash_key,
)


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
BUDGET_KEYS = ("cost_center", "team", "tenant", "feature", "period", "limit_usd", "hard", "unpriced")


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
        _parse_cache(doc, source, models),
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
        "ingest_spans_per_minute": int,
    }
    return LimitsConfig(**{k: _positive(v, f"{source}: limits.{k}", kinds[k]) for k, v in merged.items()})


def _parse_cache(doc: dict, source: str, models: dict[str, list[Candidate]]) -> CacheConfig:
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
    if "feedback" in c:
        c = {**c, "feedback": _parse_feedback(c["feedback"], f"{source}: cache.feedback")}
    if c.get("judge") is not None:
        c = {**c, "judge": _parse_judge(c["judge"], f"{source}: cache.judge", models)}
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
        names = [name for name, _ in parse_verifier_spec(cache.equivalence)]
    except ValueError as exc:
        raise ConfigError(f"{source}: cache.equivalence: {exc}") from None
    if "judge" in names and cache.judge is None:
        raise ConfigError(
            f"{source}: cache.equivalence names judge, but there is no cache.judge block "
            "(e.g. judge: {upstream: openai, model: gpt-4o-mini, requests_per_hour: 60, dollars_per_day: '1.00'})"
        )
    if cache.judge is not None and "judge" not in names:
        raise ConfigError(
            f"{source}: cache.judge is set but cache.equivalence ({cache.equivalence!r}) does not name judge: "
            "add it (e.g. 'judge+query') or remove the block"
        )
    return cache


JUDGE_KEYS = tuple(JudgeConfig.__dataclass_fields__)


def _parse_judge(raw: Any, where: str, models: dict[str, list[Candidate]]) -> JudgeConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping, e.g. {{upstream: openai, model: gpt-4o-mini}}")
    _no_unknown(raw, JUDGE_KEYS, where)
    upstream, model = str(_need(raw, "upstream", where)), str(_need(raw, "model", where))
    used = sorted({c.upstream for cands in models.values() for c in cands})
    if upstream not in used:
        raise ConfigError(
            f"{where}.upstream: unknown upstream {upstream!r}; upstreams serving models: {', '.join(used)}"
        )
    served = {c.model for cands in models.values() for c in cands if c.upstream == upstream}
    if model not in served:
        raise ConfigError(
            f"{where}.model: {model!r} is not a model served by upstream {upstream!r} "
            f"(its models under 'models': {', '.join(sorted(served))})"
        )
    rph = raw.get("requests_per_hour", 60)
    rph = None if rph is None else _positive(rph, f"{where}.requests_per_hour", int)
    dollars = _dollars(raw.get("dollars_per_day", "1.00"), f"{where}.dollars_per_day")
    if rph is None and dollars is None:
        raise ConfigError(f"{where}: set requests_per_hour or dollars_per_day (or both): the judge needs a budget")
    p_yes, p_no = (_positive(raw.get(k, d), f"{where}.{k}") for k, d in (("p_yes", 0.95), ("p_no", 0.05)))
    if not 0 < p_no < 0.5 < p_yes < 1:
        raise ConfigError(f"{where}: need 0 < p_no < 0.5 < p_yes < 1, got p_no={p_no}, p_yes={p_yes}")
    return JudgeConfig(
        upstream,
        model,
        rph,
        dollars,
        _positive(raw.get("timeout", 10.0), f"{where}.timeout"),
        _positive(raw.get("max_tokens", 4), f"{where}.max_tokens", int),
        p_yes,
        p_no,
    )


def _dollars(value: Any, where: str) -> Decimal | None:
    """A positive amount of US dollars, or None (null: no such limit)."""
    if value is None:
        return None
    try:
        amount = Decimal(str(value)) if not isinstance(value, bool) else Decimal("NaN")
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount <= 0:
        raise ConfigError(f"{where}: a positive number of US dollars (or null: no limit), got {value!r}")
    return amount


def _parse_feedback(raw: Any, where: str) -> FeedbackConfig:
    if raw is None:
        return FeedbackConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a mapping, e.g. {{accept_right: false, regenerate_window_seconds: 120}}")
    _no_unknown(raw, tuple(FeedbackConfig.__dataclass_fields__), where)
    for name in ("enabled", "accept_right"):
        if name in raw and not isinstance(raw[name], bool):
            raise ConfigError(f"{where}.{name}: true or false, got {raw[name]!r}")
    window = raw.get("regenerate_window_seconds", 120.0)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 <= window <= 86_400:
        raise ConfigError(f"{where}.regenerate_window_seconds: seconds from 0 (off) to 86400, got {window!r}")
    by = raw.get("regenerate_by", "user")
    if by not in REGENERATE_BY:
        raise ConfigError(f"{where}.regenerate_by: {' or '.join(REGENERATE_BY)}, got {by!r}")
    return FeedbackConfig(raw.get("enabled", True), raw.get("accept_right", False), float(window), by)


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
