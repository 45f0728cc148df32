"""The Tracker: prices what scopes record and hands events to a sink (a BatchWriter)."""

from __future__ import annotations

import threading
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable

from truecost.clock import Clock, SystemClock, new_id
from truecost.errors import UnknownModelError
from truecost.ledger.events import CostEvent, check_source
from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.model import PriceVersion
from truecost.pricing.cost import price_quantity, price_tokens, tidy
from truecost.pricing.usage import MissingUsageError, normalise_call
from truecost.tracking.scope import RequestScope, StepScope, _Charge, current_request
from truecost.types import EMPTY_ATTRIBUTION, ZERO, Attribution, PricedCost, to_decimal

Sink = Callable[[CostEvent], None]


class Tracker:
    """Binds a catalog, a sink and a clock. Build one per process (the CLI and gateway do).

    ``source`` is where its events say they were recorded ("sdk"; the gateway's says "gateway"); an
    integration sharing a tracker passes its own to ``request`` or ``record``.
    """

    def __init__(
        self,
        catalog: PriceCatalog,
        sink: Sink | Iterable[Sink],
        *,
        clock: Clock | None = None,
        defaults: Attribution = EMPTY_ATTRIBUTION,
        compute: str | None = None,
        otel_tracer: Any = None,
        source: str = "sdk",
    ) -> None:
        self.catalog = catalog
        self.source = check_source(source)
        self.sinks: list[Sink] = [sink] if callable(sink) else list(sink)
        self.clock = clock or SystemClock()
        self.defaults = defaults
        self.compute = compute  # catalog compute resource that prices local CPU time of unpriced steps
        self.otel_tracer = otel_tracer
        self._allowance_lock = threading.Lock()
        self._allowance_used: dict[tuple, Decimal] = {}
        self._version_memo: dict[tuple[Any, ...], tuple[PriceVersion | None, str | None, str | None, str]] = {}

    # -- public API -------------------------------------------------------------------
    def request(
        self,
        request_id: str | None = None,
        attribution: Attribution | None = None,
        *,
        source: str | None = None,
        **fields: Any,
    ) -> RequestScope:
        base = attribution or self.defaults
        return RequestScope(
            self,
            request_id,
            base.merged(**fields) if fields else base,
            self.source if source is None else check_source(source),
        )

    def record(
        self,
        step: str,
        *,
        cost: Decimal | None = None,
        model: str | None = None,
        usage: Any = None,
        flavour: str = "openai",
        resource: str | None = None,
        component: str | None = None,
        quantity: Any = 0,
        unit: str = "",
        name: str | None = None,
        reason: str | None = None,
        request: RequestScope | None = None,
        latency_ms: float | None = None,
        avoided: Decimal | None = None,
        source: str | None = None,
        **details: Any,
    ) -> list[CostEvent]:
        """Record a step measured elsewhere, inside the current request or as a lone request.
        ``source``: where it was recorded (default: the request's)."""
        req = request or current_request() or self.request(source=source)
        s = StepScope(req, step, name)
        if source is not None:
            s.source = check_source(source)
        s._t0 = 0.0
        s._wall_start = self.clock.now()
        s.details.update(details)
        if model is not None:
            s.tokens(model, usage, flavour=flavour)
        elif resource is not None:
            s.quantity(resource, component or "", quantity)
        elif cost is not None or reason is not None:
            s.cost(cost, quantity=quantity, unit=unit, reason=reason)
        # else: nothing measured -> priced as compute time in _finish_step
        s.avoided(avoided)
        before = len(req.events)
        self._finish_step(s, latency_ms)
        return req.events[before:]

    # -- pricing helpers used by scopes ---------------------------------------------
    def price_version(
        self, name: str, kind: str | None, at: datetime
    ) -> tuple[PriceVersion | None, str | None, str | None, str]:
        key = (name, kind, at.date())
        hit = self._version_memo.get(key)
        if hit is None:
            try:
                entry = self.catalog.resolve(name, kind)
                provider, service = entry.resource.provider, entry.resource.name
            except UnknownModelError as exc:
                hit = (None, str(exc), name.split("/", 1)[0] if "/" in name else None, name)
            else:
                version, reason = self.catalog.price_or_none(entry.resource, at)
                hit = (version, reason, provider, service)
            if len(self._version_memo) > 10_000:
                self._version_memo.clear()
            self._version_memo[key] = hit
        return hit

    def _charge_tokens(
        self, s: StepScope, model: str, usage: Any, *, flavour: str, batch: bool, provider: str | None
    ) -> PricedCost:
        name = f"{provider}/{model}" if provider else model
        version, reason, prov, service = self.price_version(name, None, s._wall_start)
        try:
            call = normalise_call(usage, flavour)
        except MissingUsageError as exc:  # missing usage is an unknown cost, never zero
            priced = PricedCost(cost=None, unknown_reason=f"{model}: {exc}")
            s._charges.append(_Charge(prov, service, None, Decimal(0), "tokens", priced, {"flavour": flavour}))
            return priced
        priced = price_tokens(version, call, batch=batch, unknown_reason=reason)
        tokens = call.tokens
        details: dict[str, Any] = {"tokens": call.as_dict(), "flavour": flavour}
        if batch:
            details["batch"] = True
        if call.attributes:
            details["price_attributes"] = dict(call.attributes)
        s._charges.append(
            _Charge(
                prov, service, None, Decimal(tokens.prompt_total + tokens.completion_total), "tokens", priced, details
            )
        )
        return priced

    def _charge_quantity(
        self,
        s: StepScope,
        resource: str,
        component: str,
        quantity: Any,
        *,
        kind: str | None,
        region: str | None,
        free: Decimal,
    ) -> PricedCost:
        qty = to_decimal(quantity)
        version, reason, prov, service = self.price_version(resource, kind, s._wall_start)
        priced = price_quantity(version, component, qty, unknown_reason=reason, free=free)
        unit = version.units[component].base if version and component in version.units else component
        s._charges.append(_Charge(prov, service, region, qty, unit, priced, {"component": component}))
        return priced

    def _charge_cost(
        self, s: StepScope, amount: Decimal | None, *, service: str | None, quantity: Any, unit: str, reason: str | None
    ) -> None:
        cost = None if amount is None else to_decimal(amount, "cost")
        priced = PricedCost(cost=cost, unknown_reason=None if cost is not None else (reason or "cost not given"))
        s._charges.append(_Charge(None, service, None, to_decimal(quantity), unit, priced, {}))

    def charge_compute(self, s: StepScope, latency_ms: float) -> None:
        """A step that recorded no usage is priced as local compute time, if configured."""
        seconds = Decimal(repr(round(latency_ms / 1000.0, 9)))
        if self.compute is None:
            priced = PricedCost(cost=None, unknown_reason="no usage recorded and no compute resource configured")
            s._charges.append(_Charge(None, None, None, seconds, "vCPU-seconds", priced, {}))
            return
        version, reason, prov, service = self.price_version(self.compute, "compute", s._wall_start)
        if version is None:
            s._charges.append(
                _Charge(prov, service, None, seconds, "vCPU-seconds", PricedCost(cost=None, unknown_reason=reason), {})
            )
            return
        vcpus = Decimal(str(version.attributes.get("vcpus") or 1))
        cost = tidy(version.rates["instance"] * seconds / (Decimal(3600) * vcpus))
        s._charges.append(
            _Charge(
                prov,
                service,
                None,
                seconds,
                "vCPU-seconds",
                PricedCost(cost=cost),
                {"priced_as": "wall-clock time on one vCPU"},
            )
        )

    # -- emitting -------------------------------------------------------------------
    def _finish_step(self, s: StepScope, latency_ms: float | None) -> None:
        if not s._charges:
            self.charge_compute(s, latency_ms or 0.0)
        req = s.request
        ts = s._wall_start
        n = len(s._charges)
        for i, c in enumerate(s._charges):
            details = dict(c.details)
            if s.details:
                details.update(s.details)
            if c.priced.unknown_reason:
                details["unknown_reason"] = c.priced.unknown_reason
            lines = c.priced.lines
            unit_price = lines[0].unit_price if len(lines) == 1 else None
            if len(lines) > 1:  # per-class prices; with details["tokens"] they give each line's cost
                details["unit_prices"] = {
                    ln.component: None if ln.unit_price is None else str(ln.unit_price) for ln in lines
                }
            event = CostEvent(
                id=new_id(),
                request_id=req.id,
                ts=ts,
                step=s.kind,
                name=s.name,
                provider=c.provider,
                service=c.service,
                region=c.region,
                quantity=c.quantity,
                unit=c.unit,
                unit_price=unit_price,
                cost=c.priced.cost,
                attribution=req.attribution,
                trace_id=req.trace_id,
                span_id=s.span_id if n == 1 else f"{s.span_id}.{i}",
                parent_span_id=req.span_id,
                latency_ms=latency_ms,
                outcome=s.outcome,
                avoided_cost=s._avoided if i == 0 else None,
                details=details,
                source=s.source or req.source,
            )
            req.events.append(event)
            for sink in self.sinks:
                sink(event)
        self._otel_end_step(s, latency_ms)

    # -- OpenTelemetry (optional; spans mirror scopes) ------------------------------
    def open_request(self, req: RequestScope) -> None:
        """Start the request's span for a request not used as a ``with`` block (servers, streams)."""
        self._otel_start_request(req)

    def close_request(self, req: RequestScope, exc: BaseException | None = None) -> None:
        self._otel_end_request(req, exc)

    def _otel_start_request(self, req: RequestScope) -> None:
        if self.otel_tracer is not None:
            from truecost.tracking.otel import start_request_span

            start_request_span(self, req)

    def _otel_end_request(self, req: RequestScope, exc: BaseException | None) -> None:
        if req._otel_span is not None:
            from truecost.tracking.otel import end_request_span

            end_request_span(req, exc)

    def _otel_start_step(self, s: StepScope) -> None:
        if self.otel_tracer is not None:
            from truecost.tracking.otel import start_step_span

            start_step_span(self, s)

    def _otel_end_step(self, s: StepScope, latency_ms: float | None) -> None:
        if s._otel_span is not None:
            from truecost.tracking.otel import end_step_span

            end_step_span(s, s.request.events[-max(len(s._charges), 1) :])

    def allowance_free(self, key: tuple, quantity: Decimal, allowance: Decimal) -> Decimal:
        """How much of ``quantity`` a monthly free allowance still covers (and use it up)."""
        with self._allowance_lock:
            used = self._allowance_used.get(key, ZERO)
            free = max(min(allowance - used, quantity), ZERO)
            self._allowance_used[key] = used + free
        return free


__all__ = ["Tracker"]
