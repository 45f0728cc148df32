"""OpenTelemetry export: one span per request and per step, with GenAI semantic-convention
attributes (``gen_ai.*``) and cost attributes (``gen_ai.usage.cost``, ``truecost.*``).

The spans' ids become the ledger events' trace and span ids, so traces and the ledger join.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from truecost.ledger.events import CostEvent
    from truecost.tracking.scope import RequestScope, StepScope
    from truecost.tracking.tracker import Tracker

_OPERATION = {"generate": "chat", "validate": "chat", "embed": "embeddings"}


def _trace_api():
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - exercised only without the extra
        from truecost.errors import MissingExtraError

        raise MissingExtraError("OpenTelemetry export", "pip install 'truecost[otel]'") from None
    return trace


def start_request_span(tracker: "Tracker", req: "RequestScope") -> None:
    trace = _trace_api()
    span = tracker.otel_tracer.start_span("truecost.request")
    ctx = span.get_span_context()
    req.trace_id = f"{ctx.trace_id:032x}"
    req.span_id = f"{ctx.span_id:016x}"
    for field, value in req.attribution.as_dict().items():
        if field != "tags" and value is not None:
            span.set_attribute(f"truecost.attribution.{field}", value)
    span.set_attribute("truecost.request_id", req.id)
    req._otel_span = (span, trace.set_span_in_context(span))


def end_request_span(req: "RequestScope", exc: BaseException | None) -> None:
    span, _ = req._otel_span
    span.set_attribute("truecost.cost_usd", float(req.total))
    span.set_attribute("truecost.unknown_price_steps", req.unknown)
    if exc is not None:
        span.record_exception(exc)
    span.end()


def start_step_span(tracker: "Tracker", s: "StepScope") -> None:
    parent = s.request._otel_span[1] if s.request._otel_span else None
    span = tracker.otel_tracer.start_span(f"truecost.step.{s.kind}", context=parent)
    s.span_id = f"{span.get_span_context().span_id:016x}"
    s._otel_span = span


def end_step_span(s: "StepScope", events: list["CostEvent"]) -> None:
    span = s._otel_span
    attrs: dict[str, Any] = {
        "truecost.step": s.kind,
        "truecost.request_id": s.request.id,
        "truecost.outcome": s.outcome,
    }
    if s.name:
        attrs["truecost.step_name"] = s.name
    known = [e.cost for e in events if e.cost is not None]
    if known and len(known) == len(events):
        attrs["gen_ai.usage.cost"] = float(sum(known))
        attrs["truecost.cost_usd"] = str(sum(known))
    else:
        attrs["truecost.cost_unknown"] = True
    avoided = [e.avoided_cost for e in events if e.avoided_cost is not None]
    if avoided:
        attrs["truecost.avoided_cost_usd"] = str(sum(avoided))
    for e in events:
        tokens = e.details.get("tokens")
        if tokens:
            attrs["gen_ai.provider.name"] = e.provider or "unknown"
            attrs["gen_ai.request.model"] = e.service or "unknown"
            attrs["gen_ai.operation.name"] = _OPERATION.get(s.kind, "chat")
            attrs["gen_ai.usage.input_tokens"] = (
                tokens["input"] + tokens["cached_input"] + tokens["cache_write_5m"] + tokens["cache_write_1h"]
            )
            attrs["gen_ai.usage.output_tokens"] = tokens["output"] + tokens["reasoning"]
            attrs["gen_ai.usage.cache_read.input_tokens"] = tokens["cached_input"]
            attrs["gen_ai.usage.cache_creation.input_tokens"] = tokens["cache_write_5m"] + tokens["cache_write_1h"]
            attrs["gen_ai.usage.reasoning.output_tokens"] = tokens["reasoning"]
        elif e.service:
            attrs.setdefault("truecost.service", e.service)
    for field, value in s.request.attribution.as_dict().items():
        if field != "tags" and value is not None:
            attrs[f"truecost.attribution.{field}"] = value
    span.set_attributes(attrs)
    if s.outcome == "error":
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, s.details.get("error")))
    span.end()
