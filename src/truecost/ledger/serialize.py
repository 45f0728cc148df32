"""CostEvent <-> plain JSON-able dicts (spool files, --json output, exports)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from truecost.ledger.events import CostEvent, check_source
from truecost.types import Attribution


def _dec(v: Any) -> Decimal | None:
    return None if v is None else Decimal(str(v))


def event_to_dict(e: CostEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "request_id": e.request_id,
        "ts": e.ts.isoformat(),
        "step": e.step,
        "name": e.name,
        "provider": e.provider,
        "service": e.service,
        "region": e.region,
        "quantity": str(e.quantity),
        "unit": e.unit,
        "unit_price": None if e.unit_price is None else str(e.unit_price),
        "cost": None if e.cost is None else str(e.cost),
        "currency": e.currency,
        "attribution": e.attribution.as_dict(),
        "trace_id": e.trace_id,
        "span_id": e.span_id,
        "parent_span_id": e.parent_span_id,
        "latency_ms": e.latency_ms,
        "outcome": e.outcome,
        "avoided_cost": None if e.avoided_cost is None else str(e.avoided_cost),
        "details": e.details,
        "source": e.source,
    }


def _source(d: dict[str, Any]) -> str:
    """A line written before events had a source: its ``details["source"]`` if it names one, else "unknown"."""
    if d.get("source") is not None:
        return str(d["source"])
    legacy = (d.get("details") or {}).get("source")
    try:
        return check_source(legacy)
    except ValueError:
        return "unknown"


def event_from_dict(d: dict[str, Any]) -> CostEvent:
    a = dict(d.get("attribution") or {})
    tags = a.pop("tags", {}) or {}
    return CostEvent(
        id=d["id"],
        request_id=d.get("request_id"),
        ts=datetime.fromisoformat(d["ts"]),
        step=d["step"],
        name=d.get("name"),
        provider=d.get("provider"),
        service=d.get("service"),
        region=d.get("region"),
        quantity=Decimal(d.get("quantity", "0")),
        unit=d.get("unit", ""),
        unit_price=_dec(d.get("unit_price")),
        cost=_dec(d.get("cost")),
        currency=d.get("currency", "USD"),
        attribution=Attribution(**a, tags=tuple(tags.items())),
        trace_id=d.get("trace_id"),
        span_id=d.get("span_id"),
        parent_span_id=d.get("parent_span_id"),
        latency_ms=d.get("latency_ms"),
        outcome=d.get("outcome", "ok"),
        avoided_cost=_dec(d.get("avoided_cost")),
        details=d.get("details") or {},
        source=_source(d),
    )
