"""How the OTLP receiver turns spans into steps: attribution keys and declarative rules.

    otlp:
      attribution:              # field -> attribute keys, span first, then resource
        tenant: [tenant.id, app.tenant]
      tags: {service: service.name}
      rules:                    # first match wins; checked before the GenAI mapping
        - match: {db.system.name: pinecone}
          step: vector_search
          price: {resource: pinecone-serverless, component: read_unit, quantity_from: db.pinecone.usage.read_units}
        - match: {kind: client, server.address: "*.eu-west-1.amazonaws.com"}
          step: egress
          egress: {bytes_from: [http.request.body.size, http.response.body.size],
                   src_region: us-east-1, dst_region: eu-west-1}
        - match: {name: "pii.*"}
          step: sanitize
          compute: true         # wall-clock time on the configured compute resource
      unmatched: unpriced       # unpriced (default) | compute | skip

A rule's ``match`` keys are ``name``, ``kind`` (internal/server/client/producer/consumer),
``scope`` (instrumentation scope), ``status`` (ok/error/unset) or any span or resource
attribute. A value is a glob (``"*"`` = present), a list of globs (any), ``true`` (present)
or ``false`` (absent). A rule prices with one of ``price``, ``egress``, ``compute`` or
``cost_from`` (USD measured elsewhere); with none the step is recorded unpriced, with a reason.
``skip: true`` marks container spans (a server span, a chain or agent wrapper): not a step of
their own, counted in the receiver's statistics.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from truecost.errors import ConfigError
from truecost.integrations.otlp_decode import SPAN_KINDS, SpanRecord
from truecost.ledger.events import STEP_KINDS
from truecost.types import ATTRIBUTION_FIELDS, EMPTY_ATTRIBUTION, Attribution

DEFAULT_ATTRIBUTION: dict[str, tuple[str, ...]] = {
    "cost_center": ("truecost.attribution.cost_center", "cost_center", "cost.center"),
    "team": ("truecost.attribution.team", "team", "team.name"),
    "feature": ("truecost.attribution.feature", "feature", "app.feature"),
    "tenant": ("truecost.attribution.tenant", "tenant.id", "tenant"),
    "environment": ("truecost.attribution.environment", "deployment.environment.name", "deployment.environment"),
    "user": ("truecost.attribution.user", "enduser.id", "user.id"),
}
ASSOCIATION_PREFIX = "traceloop.association.properties."  # OpenLLMetry's per-trace properties
DEFAULT_TAGS = {"service": "service.name"}
UNMATCHED = ("unpriced", "compute", "skip")
_STATUS = {"unset": 0, "ok": 1, "error": 2}
_STATUS_NAMES = {v: k for k, v in _STATUS.items()}
_SPECIAL = ("name", "kind", "scope", "status")


class IngestLimited(Exception):
    """An export the sender may not write now: 429 with ``retry_after`` (whole seconds, the header's value);
    None: never (more spans than the allowance holds), a 400."""

    def __init__(self, message: str, retry_after: str | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class IngestGrant:
    """Who sent an export, and what its spans may say about who pays.

    ``attribution``: the sender's own fields (an ingest key's). ``span_fields``: the attribution fields a
    span or resource attribute may state (it wins over the sender's value); every other field is the
    sender's, even when the sender has none. ``None``: the fields ``attribution`` leaves unset.
    ``principal``: the sender; repeated spans are found, and a trace's attribution kept, per principal,
    so one sender cannot drop or steer another's spans by reusing their trace and span ids.
    """

    attribution: Attribution = EMPTY_ATTRIBUTION
    span_fields: frozenset[str] | None = None
    principal: str = ""
    # admit(spans): raises IngestLimited when the sender may not write that many spans now (None: no limit).
    # Asked once per export, after decoding and before anything is journaled or written; replays skip it.
    admit: Callable[[int], None] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, pinned: "Attribution | IngestGrant | None") -> "IngestGrant | None":
        return pinned if pinned is None or isinstance(pinned, IngestGrant) else cls(pinned)

    def may_set(self, field_name: str) -> bool:
        if self.span_fields is None:
            return getattr(self.attribution, field_name) is None
        return field_name in self.span_fields

    def resolve(self, claimed: Attribution) -> Attribution:
        """The attribution of a trace whose spans claim ``claimed``."""
        mine = self.attribution
        values = {}
        for f in ATTRIBUTION_FIELDS:
            theirs = getattr(claimed, f)
            values[f] = theirs if theirs is not None and self.may_set(f) else getattr(mine, f)
        return Attribution(**values, tags=tuple({**dict(claimed.tags), **dict(mine.tags)}.items()))

    def as_dict(self) -> dict[str, Any]:
        fields_ = sorted(self.span_fields) if self.span_fields is not None else None
        return {"pinned": self.attribution.as_dict(), "span_fields": fields_, "principal": self.principal}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IngestGrant | None":
        if not d.get("pinned") and not d.get("principal") and d.get("span_fields") is None:
            return None
        p = dict(d.get("pinned") or {})
        tags = p.pop("tags", {}) or {}
        fields_ = d.get("span_fields")
        return cls(
            Attribution(**p, tags=tuple(tags.items())),
            frozenset(fields_) if fields_ is not None else None,
            str(d.get("principal") or ""),
        )


_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Matcher:
    key: str
    patterns: tuple[str, ...] = ()
    present: bool | None = None  # True: must be there; False: must be absent

    def __post_init__(self) -> None:
        exact = frozenset(p for p in self.patterns if not _GLOB.search(p))
        globs = [fnmatch.translate(p) for p in self.patterns if _GLOB.search(p)]
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_glob", re.compile("|".join(globs)) if globs else None)
        kinds = frozenset(SPAN_KINDS.index(p) for p in self.patterns if p in SPAN_KINDS)
        object.__setattr__(self, "_kinds", kinds)

    def test(self, span: SpanRecord) -> bool:
        key = self.key
        if key == "kind":
            return span.kind in self._kinds  # type: ignore[attr-defined]
        if key == "name":
            value: Any = span.name
        elif key == "scope":
            value = span.scope
        elif key == "status":
            value = _STATUS_NAMES.get(span.status_code, "unset")
        else:
            value = span.attrs.get(key)
            if value is None:
                value = span.resource.get(key)
        if self.present is not None:
            return (value is not None) == self.present
        if value is None:
            return False
        text = value.lower() if isinstance(value, str) else str(value).lower()
        if text in self._exact:  # type: ignore[attr-defined]
            return True
        glob = self._glob  # type: ignore[attr-defined]
        return glob is not None and glob.match(text) is not None


@dataclass(frozen=True)
class Rule:
    step: str
    match: tuple[Matcher, ...]
    label: str = ""
    skip: bool = False
    resource: str | None = None
    component: str | None = None
    resource_kind: str | None = None
    quantity: float | None = None
    quantity_from: tuple[str, ...] = ()
    scale: float = 1.0
    egress: Mapping[str, Any] | None = None
    compute: str | bool | None = None
    cost_from: tuple[str, ...] = ()

    def matches(self, span: SpanRecord) -> bool:
        for m in self.match:
            if not m.test(span):
                return False
        return True


@dataclass(frozen=True)
class OTLPConfig:
    attribution: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_ATTRIBUTION))
    tags: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TAGS))
    rules: tuple[Rule, ...] = ()
    defaults: bool = True  # append DEFAULT_RULES after the user's rules
    unmatched: str = "unpriced"

    def all_rules(self) -> tuple[Rule, ...]:
        return self.rules + (DEFAULT_RULES if self.defaults else ())


def _keys(v: Any, what: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise ConfigError(f"{what}: an attribute key or a list of keys")


def _matcher(key: str, value: Any, where: str) -> Matcher:
    if value is True or value is False:
        return Matcher(key, present=value)
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}.match.{key}: a glob, a list of globs, true or false")
    if key == "kind":
        bad = [v for v in values if str(v).lower() not in SPAN_KINDS]
        if bad:
            raise ConfigError(f"{where}.match.kind: {bad[0]!r} is not one of {', '.join(SPAN_KINDS[1:])}")
    return Matcher(key, tuple(str(v).lower() for v in values))


def parse_rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a rule is a mapping with match and step")
    unknown = set(raw) - {"match", "step", "name", "skip", "price", "egress", "compute", "cost_from"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    match = raw.get("match")
    if not isinstance(match, dict) or not match:
        raise ConfigError(f"{where}.match: a non-empty mapping of key -> pattern")
    skip = bool(raw.get("skip", False))
    step = raw.get("step", "other")
    if step not in STEP_KINDS:
        raise ConfigError(f"{where}.step: {step!r} is not one of {', '.join(STEP_KINDS)}")
    pricing = [k for k in ("price", "egress", "compute", "cost_from") if raw.get(k) not in (None, False)]
    if len(pricing) > 1:
        raise ConfigError(f"{where}: one of price, egress, compute, cost_from (got {', '.join(pricing)})")
    kw: dict[str, Any] = {}
    price = raw.get("price")
    if price is not None:
        if not isinstance(price, dict) or not price.get("resource") or not price.get("component"):
            raise ConfigError(f"{where}.price: needs resource and component (and quantity or quantity_from)")
        if price.get("quantity") is None and price.get("quantity_from") is None:
            raise ConfigError(f"{where}.price: give quantity (a number) or quantity_from (attribute keys)")
        kw.update(
            resource=str(price["resource"]),
            component=str(price["component"]),
            resource_kind=price.get("kind"),
            scale=float(price.get("scale", 1.0)),
        )
        if price.get("quantity") is not None:
            kw["quantity"] = float(price["quantity"])
        if price.get("quantity_from") is not None:
            kw["quantity_from"] = _keys(price["quantity_from"], f"{where}.price.quantity_from")
    egress = raw.get("egress")
    if egress is not None:
        if not isinstance(egress, dict) or not egress.get("bytes_from"):
            raise ConfigError(f"{where}.egress: needs bytes_from and src_region(_from), dst_region(_from)")
        for end in ("src_region", "dst_region"):
            if not egress.get(end) and not egress.get(f"{end}_from"):
                raise ConfigError(f"{where}.egress: needs {end} or {end}_from")
        kw["egress"] = {**egress, "bytes_from": _keys(egress["bytes_from"], f"{where}.egress.bytes_from")}
    if raw.get("compute") not in (None, False):
        kw["compute"] = raw["compute"] if isinstance(raw["compute"], str) else True
    if raw.get("cost_from") is not None:
        kw["cost_from"] = _keys(raw["cost_from"], f"{where}.cost_from")
    return Rule(
        step=step,
        match=tuple(_matcher(str(k), v, where) for k, v in match.items()),
        label=str(raw.get("name") or ""),
        skip=skip,
        **kw,
    )


def parse_config(raw: Mapping[str, Any] | None) -> OTLPConfig:
    """The ``otlp:`` section of a config file (already parsed YAML) -> OTLPConfig."""
    raw = dict(raw or {})
    unknown = set(raw) - {"attribution", "tags", "rules", "default_rules", "unmatched"}
    if unknown:
        raise ConfigError(f"otlp: unknown key(s) {', '.join(sorted(unknown))}")
    attribution = dict(DEFAULT_ATTRIBUTION)
    for f, keys in (raw.get("attribution") or {}).items():
        if f not in ATTRIBUTION_FIELDS:
            raise ConfigError(f"otlp.attribution.{f}: not an attribution field ({', '.join(ATTRIBUTION_FIELDS)})")
        attribution[f] = _keys(keys, f"otlp.attribution.{f}")
    tags = raw.get("tags", DEFAULT_TAGS)
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise ConfigError("otlp.tags: a mapping of tag name -> attribute key")
    rules = raw.get("rules") or []
    if not isinstance(rules, list):
        raise ConfigError("otlp.rules: a list of rules")
    unmatched = raw.get("unmatched", "unpriced")
    if unmatched not in UNMATCHED:
        raise ConfigError(f"otlp.unmatched: one of {', '.join(UNMATCHED)}")
    return OTLPConfig(
        attribution=attribution,
        tags=dict(tags),
        rules=tuple(parse_rule(r, f"otlp.rules[{i}]") for i, r in enumerate(rules)),
        defaults=bool(raw.get("default_rules", True)),
        unmatched=unmatched,
    )


_VECTOR_DBS = [
    "qdrant",
    "weaviate",
    "chroma",
    "chromadb",
    "milvus",
    "lancedb",
    "marqo",
    "pgvector",
    "redis",
    "elasticsearch",
    "opensearch",
    "mongodb",
]
# Sensible defaults for common instrumentations, after the user's rules and the GenAI mapping.
DEFAULT_RULES: tuple[Rule, ...] = tuple(
    parse_rule(r, f"default_rules[{i}]")
    for i, r in enumerate(
        [
            {
                "name": "pinecone",
                "match": {"db.system.name": "pinecone"},
                "step": "vector_search",
                "price": {
                    "resource": "pinecone-serverless",
                    "component": "read_unit",
                    "quantity_from": ["db.pinecone.usage.read_units", "pinecone.usage.read_units"],
                },
            },
            {
                "name": "pinecone",
                "match": {"db.system": "pinecone"},
                "step": "vector_search",
                "price": {
                    "resource": "pinecone-serverless",
                    "component": "read_unit",
                    "quantity_from": ["db.pinecone.usage.read_units", "pinecone.usage.read_units"],
                },
            },
            {"name": "vector database", "match": {"db.system.name": _VECTOR_DBS}, "step": "vector_search"},
            {"name": "vector database", "match": {"db.system": _VECTOR_DBS}, "step": "vector_search"},
            {
                "name": "retriever",
                "match": {"openinference.span.kind": ["retriever", "reranker"]},
                "step": "vector_search",
            },
            {"name": "guardrail", "match": {"openinference.span.kind": "guardrail"}, "step": "validate"},
            {"name": "container", "match": {"openinference.span.kind": ["chain", "agent", "evaluator"]}, "skip": True},
            {"name": "container", "match": {"traceloop.span.kind": ["workflow", "task", "agent"]}, "skip": True},
            {
                "name": "container",
                "match": {"gen_ai.operation.name": ["invoke_agent", "create_agent", "invoke_workflow"]},
                "skip": True,
            },
            {"name": "container", "match": {"kind": "server"}, "skip": True},
        ]
    )
)
