"""Spans -> priced ledger events: one request per trace, one step per span.

Order of decision for each span: the user's rules; truecost's own spans (``truecost.step``,
already priced by the SDK that exported them); GenAI spans (priced from model and token
attributes with the catalog); the default rules for common instrumentations; then the
``unmatched`` policy. A span that is not priced is recorded with ``cost = None`` and a
reason, never 0; container spans (servers, chains, agents) are counted, not recorded.

Event ids are derived from the span's start time and its trace and span ids (time first, so the
ledger's key grows roughly in order), so a collector that retries an export cannot count a
span twice: the receiver skips repeats it has seen, and the ledger's key refuses the rest.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Mapping

from truecost.integrations.genai import UsageError, genai_kind, model_of, price_name, provider_of, usage_of
from truecost.integrations.otlp_config import ASSOCIATION_PREFIX, IngestGrant, OTLPConfig, Rule
from truecost.integrations.otlp_decode import SpanRecord
from truecost.ledger.events import STEP_KINDS, CostEvent
from truecost.pricing.cost import price_quantity, price_tokens, tidy
from truecost.tracking.infra import GB, egress_path
from truecost.types import ZERO, Attribution, PricedCost, to_decimal

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SOURCE = "otlp"
_FIELDS = ("cost_center", "team", "feature", "tenant", "environment", "user")
_REPORTED_COST_KEYS = ("gen_ai.usage.cost", "llm.cost.total", "truecost.cost_usd")
_MEMO_MAX = 50_000
_TEXT_MAX = 500  # client text (span names, attribute values) kept in a reason, a service or a detail
# a step a span prices (its own reported cost, a cost_from attribute, a quantity) above this, or finer than
# 1e-100 USD, is not believed: unknown with a reason, never an amount no ledger column or sum can hold
_COST_MAX = Decimal(1_000_000)
_NAME_MAX = 256  # a longer model, provider or service tier names no price (nor becomes a key of any memo)


def _cut(text: Any, limit: int = _TEXT_MAX) -> Any:
    return text[:limit] + "..." if isinstance(text, str) and len(text) > limit else text


class MapStats:
    """What one batch (or the receiver's lifetime) did with its spans."""

    __slots__ = ("spans", "priced", "unpriced", "skipped", "rejected", "duplicates", "reasons")

    def __init__(self) -> None:
        self.spans = self.priced = self.unpriced = self.skipped = self.rejected = self.duplicates = 0
        self.reasons: Counter = Counter()

    def add(self, other: "MapStats") -> None:
        for k in ("spans", "priced", "unpriced", "skipped", "rejected", "duplicates"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for reason, n in other.reasons.items():
            if reason in self.reasons or len(self.reasons) < 100:
                self.reasons[reason] += n
            else:
                self.reasons["(other reasons)"] += n

    def as_dict(self) -> dict[str, Any]:
        return {
            "spans": self.spans,
            "priced": self.priced,
            "unpriced": self.unpriced,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "unpriced_reasons": dict(self.reasons.most_common(20)),
        }


class _Charge:
    __slots__ = ("provider", "service", "region", "quantity", "unit", "priced", "details")

    def __init__(self, provider, service, region, quantity, unit, priced: PricedCost, details: dict) -> None:
        self.provider, self.service, self.region, self.quantity = provider, service, region, quantity
        self.unit, self.priced, self.details = unit, priced, details


def _unpriced(reason: str, service: str | None = None, **details: Any) -> _Charge:
    return _Charge(None, service, None, ZERO, "", PricedCost(cost=None, unknown_reason=reason), details)


class _IdTags:
    """The 8 characters between an event id's start time and span id: the trace id's first 8, or, for a
    named sender, a digest of sender and trace (two senders' spans with the same ids are two events)."""

    __slots__ = ("principal", "memo")

    def __init__(self, principal: str) -> None:
        self.principal = principal
        self.memo: dict[str, str] = {}

    def __call__(self, trace_id: str) -> str:
        if not self.principal:
            return trace_id[:8]
        tag = self.memo.get(trace_id)
        if tag is None:
            tag = self.memo[trace_id] = hashlib.sha256(f"{self.principal}\0{trace_id}".encode()).hexdigest()[:8]
        return tag


class SpanMapper:
    """Maps decoded spans to CostEvents with a tracker's catalog (thread-safe)."""

    def __init__(self, tracker: Any, config: OTLPConfig | None = None) -> None:
        self.tracker = tracker
        self.config = config or OTLPConfig()
        self._user_rules = self.config.rules
        self._default_rules = self.config.all_rules()[len(self._user_rules) :]
        self._lock = threading.Lock()
        self._trace_attr: dict[tuple, tuple] = {}  # (principal, trace id) -> values seen in earlier batches
        self._attr_memo: dict[tuple, Attribution] = {}
        self._price_text: dict[Decimal, str] = {}
        self._names: dict[tuple, tuple] = {}
        keys = [k for ks in self.config.attribution.values() for k in ks] + list(self.config.tags.values())
        self._span_keys = frozenset(keys + [ASSOCIATION_PREFIX + k for k in keys])

    # -- attribution --------------------------------------------------------------------
    def _lookup(self, a: dict, r: dict, association: bool) -> list:
        out: list = []
        for f in _FIELDS:
            v = None
            for key in self.config.attribution.get(f, ()):
                v = a.get(key)
                if v is None and association:
                    v = a.get(ASSOCIATION_PREFIX + key)
                if v is None:
                    v = r.get(key)
                if v is not None:
                    break
            out.append(None if v is None else str(v)[:512])
        for key in self.config.tags.values():
            v = a.get(key)
            if v is None:
                v = r.get(key)
            out.append(None if v is None else str(v)[:512])
        return out

    def _values(self, span: SpanRecord, by_resource: dict) -> list:
        """Attribution field values, then tag values, as this span (or its resource) states them."""
        if self._span_keys.isdisjoint(span.attrs):  # the common case: only the resource says anything
            key = id(span.resource)
            vals = by_resource.get(key)
            if vals is None:
                vals = by_resource[key] = self._lookup({}, span.resource, False)
            return list(vals)
        return self._lookup(span.attrs, span.resource, True)

    def _attributions(self, spans: list[SpanRecord], grant: IngestGrant | None) -> dict[str, Attribution]:
        """One attribution per trace: the first value each field is given by any span of the trace (that the
        same sender sent), then the sender's grant decides which of those values stand."""
        principal = grant.principal if grant is not None else ""
        merged: dict[str, list] = {}
        by_resource: dict = {}
        for s in spans:
            vals = self._values(s, by_resource)
            have = merged.get(s.trace_id)
            if have is None:
                with self._lock:
                    earlier = self._trace_attr.get((principal, s.trace_id))
                merged[s.trace_id] = list(earlier) if earlier else vals
                have = merged[s.trace_id]
                if not earlier:
                    continue
            for i, v in enumerate(vals):
                if have[i] is None and v is not None:
                    have[i] = v
        out: dict[str, Attribution] = {}
        tag_names = tuple(self.config.tags)
        with self._lock:
            if len(self._trace_attr) > _MEMO_MAX:
                self._trace_attr.clear()
            for trace, vals in merged.items():
                self._trace_attr[(principal, trace)] = tuple(vals)
        for trace, vals in merged.items():
            key = (tuple(vals), grant)
            attribution = self._attr_memo.get(key)
            if attribution is None:
                try:
                    fields = dict(zip(_FIELDS, vals))
                    tags = tuple((n, v) for n, v in zip(tag_names, vals[len(_FIELDS) :]) if v is not None)
                    attribution = Attribution(**fields, tags=tags)
                except ValueError:  # an attribute too long or not text: keep the trace, drop the bad values
                    attribution = Attribution()
                if grant is not None:
                    attribution = grant.resolve(attribution)
                if len(self._attr_memo) > _MEMO_MAX:
                    self._attr_memo.clear()
                self._attr_memo[key] = attribution
            out[trace] = attribution
        return out

    # -- mapping ------------------------------------------------------------------------
    def map(
        self, spans: list[SpanRecord], pinned: Attribution | IngestGrant | None = None, stats: MapStats | None = None
    ) -> list[CostEvent]:
        """``pinned``: the sender's IngestGrant (an Attribution: its set fields pinned, spans state the rest)."""
        stats = stats if stats is not None else MapStats()
        grant = IngestGrant.of(pinned)
        attributions = self._attributions(spans, grant)
        id_tags = _IdTags(grant.principal if grant is not None else "")
        events: list[CostEvent] = []
        for s in spans:
            step, charge = self._classify(s)
            if step is None:
                stats.skipped += 1
                continue
            ts = EPOCH + timedelta(microseconds=s.start_ns // 1000)
            if charge is None:
                charge = self._price(step, s, ts)
            cost = charge.priced.cost
            if cost is not None and (cost > _COST_MAX or int(cost.as_tuple().exponent) < -100):
                why = f"a step cost of {_cut(str(cost), 40)} USD is out of range (at most {_COST_MAX:,} USD a step)"
                charge = _unpriced(why, charge.service)
            events.append(self._event(s, step, charge, ts, attributions[s.trace_id], id_tags(s.trace_id)))
            if charge.priced.cost is None:
                stats.unpriced += 1
                stats.reasons[_cut(charge.priced.unknown_reason or "unknown")] += 1
            else:
                stats.priced += 1
        return events

    def _classify(self, s: SpanRecord) -> tuple[Any, _Charge | None]:
        """(step kind or a Rule, or None to skip; a charge already decided, if any)."""
        for rule in self._user_rules:
            if rule.matches(s):
                return (None, None) if rule.skip else (rule, None)
        a = s.attrs
        own = a.get("truecost.step")
        if own is not None:
            return (own if own in STEP_KINDS else "other"), self._own(s)
        if s.name == "truecost.request":
            return None, None
        kind = genai_kind(a)
        if kind is not None:
            return kind, None
        for rule in self._default_rules:
            if rule.matches(s):
                return (None, None) if rule.skip else (rule, None)
        policy = self.config.unmatched
        if policy == "skip":
            return None, None
        return ("other", None) if policy == "unpriced" else (Rule(step="other", match=(), compute=True), None)

    def _price(self, step: Any, s: SpanRecord, ts: datetime) -> _Charge:
        if isinstance(step, Rule):
            return self._by_rule(step, s, ts)
        if step in ("generate", "embed"):
            return self._genai(step, s, ts)
        return _unpriced(f"no rule prices span {s.name!r} (add one to otlp.rules)", unmatched=True)

    def _own(self, s: SpanRecord) -> _Charge:
        """A span truecost's own SDK exported, priced when it was recorded."""
        a = s.attrs
        service = a.get("gen_ai.request.model") or a.get("truecost.service")
        cost = a.get("truecost.cost_usd")
        if cost is None or a.get("truecost.cost_unknown"):
            return _unpriced("the exporting SDK had no price for this step", service)
        try:
            value = to_decimal(str(cost), "cost")
        except ValueError:
            return _unpriced(f"truecost.cost_usd {cost!r} is not an amount", service)
        return _Charge(
            a.get("gen_ai.provider.name"),
            service,
            None,
            ZERO,
            "",
            PricedCost(cost=value),
            {"priced_by": "exporting truecost SDK"},
        )

    def _genai(self, step: str, s: SpanRecord, ts: datetime) -> _Charge:
        a = s.attrs
        model = model_of(a)
        provider = provider_of(a)
        if model is None:
            return _unpriced("GenAI span without a model attribute", provider_reported=_cut(provider, 64))
        if len(model) > _NAME_MAX or len(provider or "") > _NAME_MAX:
            return _unpriced(f"a model or provider name longer than {_NAME_MAX} characters", _cut(model, 64))
        key = (provider, model)
        hit = self._names.get(key)
        if hit is None:
            if len(self._names) > _MEMO_MAX:
                self._names.clear()
            hit = self._names[key] = price_name(provider, model)
        name, reason = hit
        if name is None:
            return _unpriced(reason, model)
        try:
            usage, missing, note = usage_of(a, step)
        except UsageError as exc:
            return _unpriced(f"{model}: {exc}", model)
        if usage is None:
            return _unpriced(f"{model}: {missing}", model)
        if any(len(v) > _NAME_MAX for v in usage.attributes.values()):
            return _unpriced(f"{model}: a price attribute (service tier) longer than {_NAME_MAX} characters", model)
        version, why, prov, service = self.tracker.price_version(name, None, ts)
        priced = price_tokens(version, usage, unknown_reason=why)
        details: dict[str, Any] = {"tokens": usage.as_dict()}
        if note:
            details["input_counting"] = note
        if usage.attributes:
            details["price_attributes"] = dict(usage.attributes)
        for cost_key in _REPORTED_COST_KEYS:
            if cost_key in a:
                details["reported_cost"] = _cut(str(a[cost_key]), 64)
                break
        t = usage.tokens
        return _Charge(
            prov or provider,
            service if version is not None else model,
            None,
            Decimal(t.prompt_total + t.completion_total),
            "tokens",
            priced,
            details,
        )

    def _by_rule(self, rule: Rule, s: SpanRecord, ts: datetime) -> _Charge:
        label = rule.label or rule.step
        if rule.resource is not None:
            if rule.component is None:  # parse_config requires both; a Rule built by hand may not have it
                return _unpriced(f"rule {label!r}: a price resource needs a component", rule.resource)
            if rule.quantity is not None:
                qty: Any = rule.quantity
            else:
                qty = next((s.get(k) for k in rule.quantity_from if s.get(k) is not None), None)
                if qty is None:
                    return _unpriced(f"rule {label!r}: no {' or '.join(rule.quantity_from)} attribute", rule.resource)
            try:
                amount = to_decimal(qty, "quantity") * to_decimal(rule.scale, "scale")
            except ValueError as exc:
                return _unpriced(f"rule {label!r}: {exc}", rule.resource)
            version, why, prov, service = self.tracker.price_version(rule.resource, rule.resource_kind, ts)
            priced = price_quantity(version, rule.component, amount, unknown_reason=why)
            unit = version.units[rule.component].base if version and rule.component in version.units else rule.component
            return _Charge(prov, service, None, amount, unit, priced, {"component": rule.component})
        if rule.egress is not None:
            return self._egress(rule.egress, s, ts)
        if rule.compute:
            return self._compute(rule.compute if isinstance(rule.compute, str) else self.tracker.compute, s, ts)
        if rule.cost_from:
            raw = next((s.get(k) for k in rule.cost_from if s.get(k) is not None), None)
            if raw is None:
                return _unpriced(f"rule {label!r}: no {' or '.join(rule.cost_from)} attribute")
            try:
                return _Charge(
                    None,
                    None,
                    None,
                    ZERO,
                    "",
                    PricedCost(cost=to_decimal(str(raw), "cost")),
                    {"priced_by": f"span attribute ({label})"},
                )
            except ValueError as exc:
                return _unpriced(f"rule {label!r}: {exc}")
        system = s.get("db.system.name") or s.get("db.system")
        what = f"{system} " if system else ""
        return _unpriced(f"no price for {what}span {s.name!r} (rule {label!r} names none)")

    def _egress(self, e: Mapping[str, Any], s: SpanRecord, ts: datetime) -> _Charge:
        nbytes = 0
        for k in e["bytes_from"]:
            v = s.get(k)
            if v is not None:
                try:
                    nbytes += int(to_decimal(v, k))
                except ValueError as exc:
                    return _unpriced(f"egress: {exc}")
        src = e.get("src_region") or s.get(e.get("src_region_from", ""))
        dst = e.get("dst_region") or s.get(e.get("dst_region_from", ""))
        if not src or not dst:
            return _unpriced("egress: the span does not say between which regions")
        path = egress_path(str(src), str(dst))
        resource = f"{e.get('provider', 'aws')}/{path}"
        gb = Decimal(nbytes) / GB
        version, why, prov, service = self.tracker.price_version(resource, "egress", ts)
        free = ZERO
        if version is not None and version.free_per_month:
            free = self.tracker.allowance_free((resource, ts.strftime("%Y-%m")), gb, version.free_per_month)
        priced = price_quantity(version, "transfer", gb, unknown_reason=why, free=free)
        return _Charge(
            prov,
            service,
            f"{src}->{dst}",
            gb,
            "GB",
            priced,
            {"egress_path": path, "bytes": nbytes, "component": "transfer"},
        )

    def _compute(self, resource: str | None, s: SpanRecord, ts: datetime) -> _Charge:
        seconds = Decimal(s.end_ns - s.start_ns) / Decimal(1_000_000_000)
        if resource is None:
            return _Charge(
                None,
                None,
                None,
                seconds,
                "vCPU-seconds",
                PricedCost(cost=None, unknown_reason="compute rule but no compute resource configured"),
                {},
            )
        version, why, prov, service = self.tracker.price_version(resource, "compute", ts)
        if version is None:
            return _Charge(prov, service, None, seconds, "vCPU-seconds", PricedCost(cost=None, unknown_reason=why), {})
        vcpus = Decimal(str(version.attributes.get("vcpus") or 1))
        cost = tidy(version.rates["instance"] * seconds / (Decimal(3600) * vcpus))
        return _Charge(
            prov,
            service,
            None,
            seconds,
            "vCPU-seconds",
            PricedCost(cost=cost),
            {"priced_as": "wall-clock time on one vCPU"},
        )

    def _event(
        self, s: SpanRecord, step: Any, c: _Charge, ts: datetime, attribution: Attribution, id_tag: str
    ) -> CostEvent:
        kind = step.step if isinstance(step, Rule) else step
        details = c.details
        priced = c.priced
        if priced.unknown_reason:
            details["unknown_reason"] = _cut(priced.unknown_reason)
        lines = priced.lines
        if len(lines) > 1:  # per-class prices; with details["tokens"] they give each line's cost
            text = self._price_text
            prices: dict[str, str | None] = {}
            for ln in lines:
                p = ln.unit_price
                if p is None:
                    prices[ln.component] = None
                    continue
                t = text.get(p)
                if t is None:
                    if len(text) > 10_000:
                        text.clear()
                    t = text[p] = str(p)
                prices[ln.component] = t
            details["unit_prices"] = prices
        if isinstance(step, Rule) and step.label:
            details["rule"] = step.label
        return CostEvent(
            id=f"{s.start_ns:016x}{id_tag}{s.span_id}",
            request_id=s.trace_id,
            ts=ts,
            step=kind,
            name=s.name[:1024],
            provider=c.provider,
            service=_cut(c.service),
            region=c.region,
            quantity=c.quantity,
            unit=c.unit,
            unit_price=lines[0].unit_price if len(lines) == 1 else None,
            cost=priced.cost,
            attribution=attribution,
            trace_id=s.trace_id,
            span_id=s.span_id,
            parent_span_id=s.parent_span_id,
            latency_ms=(s.end_ns - s.start_ns) / 1e6,
            outcome="error" if s.status_code == 2 else "ok",
            details=details,
            source=SOURCE,
        )


def map_export_file(path: Any, tracker: Any, config: OTLPConfig | None = None) -> tuple[list[CostEvent], MapStats]:
    """An OTLP/JSON export on disk (one document, or one per line as the Collector's file exporter
    writes) -> events and what was done with each span: the receiver's mapping, offline (for
    ``truecost audit costs``). Raises OTLPPayloadError naming the line and place of a malformed span."""
    from pathlib import Path

    from truecost.integrations.otlp_decode import OTLPPayloadError, decode_json

    text = Path(path).read_bytes()
    stripped = text.strip()
    one = stripped.startswith(b"{") and b"\n{" not in stripped
    docs = [stripped] if one else [line for line in text.splitlines() if line.strip()]
    mapper, stats, events = SpanMapper(tracker, config), MapStats(), []
    for n, doc in enumerate(docs, 1):
        try:
            spans = decode_json(doc)
        except OTLPPayloadError as exc:
            raise OTLPPayloadError(f"{path}: line {n}: {exc}" if not one else f"{path}: {exc}") from None
        good = [s for s in spans if s.problem() is None]
        stats.spans += len(spans)
        stats.rejected += len(spans) - len(good)
        events += mapper.map(good, None, stats)
    return events, stats
