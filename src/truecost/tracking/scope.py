"""Request and step scopes: one request id, one attribution, every step priced.

    with tracker.request(cost_center="support", feature="rag", tenant="acme") as req:
        with req.step("embed") as s:
            s.tokens("text-embedding-3-small", usage)
        with req.step("egress") as s:
            s.egress(40_000, "us-east-1", "eu-west-1")

Scopes live in contextvars, so nested code (sync or async) finds the current request with
``current_request()`` and needs no plumbing.
"""

from __future__ import annotations

import contextvars
import time
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Any

from truecost.clock import new_id
from truecost.ledger.events import STEP_KINDS, CostEvent
from truecost.types import ZERO, Attribution, PricedCost, TokenUsage

if TYPE_CHECKING:
    from truecost.tracking.tracker import Tracker

_current_request: contextvars.ContextVar["RequestScope | None"] = contextvars.ContextVar(
    "truecost_request", default=None
)
_current_step: contextvars.ContextVar["StepScope | None"] = contextvars.ContextVar("truecost_step", default=None)


def current_request() -> "RequestScope | None":
    return _current_request.get()


def current_step() -> "StepScope | None":
    return _current_step.get()


class _Charge:
    __slots__ = ("provider", "service", "region", "quantity", "unit", "priced", "details", "avoided")

    def __init__(self, provider, service, region, quantity, unit, priced: PricedCost, details, avoided=None):
        self.provider, self.service, self.region = provider, service, region
        self.quantity, self.unit, self.priced, self.details, self.avoided = quantity, unit, priced, details, avoided


class StepScope:
    """One step of a request. Record what it consumed; the event is emitted on exit."""

    __slots__ = (
        "request",
        "kind",
        "name",
        "span_id",
        "outcome",
        "details",
        "source",
        "_charges",
        "_t0",
        "_token",
        "_otel_span",
        "_avoided",
        "_wall_start",
    )

    def __init__(self, request: "RequestScope", kind: str, name: str | None = None) -> None:
        if kind not in STEP_KINDS:
            raise ValueError(f"unknown step kind {kind!r}; one of {', '.join(STEP_KINDS)}")
        self.request, self.kind, self.name = request, kind, name
        self.span_id = new_id()[-16:]
        self.outcome = "ok"
        self.source: str | None = None  # None: the request's
        self.details: dict[str, Any] = {}
        self._charges: list[_Charge] = []
        self._avoided: Decimal | None = None
        self._otel_span: Any = None  # (span, context) of the OpenTelemetry request span, when exporting

    @property
    def charged(self) -> bool:
        """Whether anything has been recorded on this step yet (a price, a quantity, a cost, a reason)."""
        return bool(self._charges)

    # -- recording -------------------------------------------------------------------
    def tokens(
        self, model: str, usage: Any, *, flavour: str = "openai", batch: bool = False, provider: str | None = None
    ) -> PricedCost:
        """Price a model call's usage (a provider usage object, or a TokenUsage)."""
        return self.request.tracker._charge_tokens(self, model, usage, flavour=flavour, batch=batch, provider=provider)

    def quantity(
        self,
        resource: str,
        component: str,
        quantity: Any,
        *,
        kind: str | None = None,
        region: str | None = None,
        free: Decimal = ZERO,
    ) -> PricedCost:
        """Price a quantity of a catalog resource, e.g. ('pinecone-serverless', 'read_unit', 1)."""
        return self.request.tracker._charge_quantity(
            self, resource, component, quantity, kind=kind, region=region, free=free
        )

    def cost(
        self,
        amount: Decimal | None,
        *,
        service: str | None = None,
        quantity: Any = 0,
        unit: str = "",
        reason: str | None = None,
    ) -> None:
        """Record a cost measured elsewhere (None = unknown, with a reason)."""
        self.request.tracker._charge_cost(self, amount, service=service, quantity=quantity, unit=unit, reason=reason)

    def egress(self, nbytes: int, src_region: str, dst_region: str, **kw: Any) -> PricedCost:
        from truecost.tracking.infra import charge_egress

        return charge_egress(self, nbytes, src_region, dst_region, **kw)

    def log_storage(self, nbytes: int, **kw: Any) -> PricedCost:
        from truecost.tracking.infra import charge_log_storage

        return charge_log_storage(self, nbytes, **kw)

    def avoided(self, amount: Decimal | None) -> None:
        """Cost avoided by this step (a cache hit, a downgrade to a cheaper model)."""
        if amount is not None:
            self._avoided = (self._avoided or ZERO) + amount

    def annotate(self, **details: Any) -> None:
        self.details.update(details)

    # -- lifecycle: begin/finish for steps that outlive a block (streams) --------------
    def begin(self) -> "StepScope":
        self._t0 = time.perf_counter()
        self._wall_start = self.request.tracker.clock.now()
        self.request.tracker._otel_start_step(self)
        return self

    def finish(self, exc: BaseException | None = None) -> None:
        latency_ms = (time.perf_counter() - self._t0) * 1000.0
        if exc is not None and self.outcome == "ok":
            self.outcome = "error"
            self.details.setdefault("error", f"{type(exc).__name__}: {exc}")
        self.request.tracker._finish_step(self, latency_ms)

    def __enter__(self) -> "StepScope":
        self.begin()
        self._token = _current_step.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _current_step.reset(self._token)
        self.finish(exc)

    async def __aenter__(self) -> "StepScope":
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.__exit__(exc_type, exc, tb)


class RequestScope:
    """One request: an id, a trace, an attribution, where it was recorded, and the events of its steps."""

    def __init__(
        self, tracker: "Tracker", request_id: str | None, attribution: Attribution, source: str | None = None
    ) -> None:
        self.tracker = tracker
        self.source = tracker.source if source is None else source
        self.id = request_id or new_id()
        self.attribution = attribution
        self.trace_id = new_id()
        self.span_id = self.trace_id[-16:]
        self.events: list[CostEvent] = []
        self._token: Any = None  # the contextvars Token while the request is current
        self._otel_span: Any = None

    def step(self, kind: str, name: str | None = None) -> StepScope:
        return StepScope(self, kind, name)

    @property
    def total(self) -> Decimal:
        # exact: at 28 digits, adding a few 28-digit costs could round, and a store summing
        # NUMERIC exactly would then disagree with the x-truecost-cost-usd header in the last digit
        with localcontext(prec=100):
            return +sum((e.cost for e in self.events if e.cost is not None), ZERO)

    @property
    def unknown(self) -> int:
        return sum(1 for e in self.events if e.cost is None)

    def by_step(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for e in self.events:
            out[e.step] = out.get(e.step, ZERO) + (e.cost or ZERO)
        return out

    def __enter__(self) -> "RequestScope":
        self._token = _current_request.set(self)
        self.tracker._otel_start_request(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _current_request.reset(self._token)
        self.tracker._otel_end_request(self, exc)

    async def __aenter__(self) -> "RequestScope":
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.__exit__(exc_type, exc, tb)


__all__ = ["RequestScope", "StepScope", "current_request", "current_step", "TokenUsage"]
