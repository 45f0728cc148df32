"""Non-LLM accounting: network egress, log storage, reserved capacity."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from truecost.clock import new_id
from truecost.ledger.events import CostEvent
from truecost.pricing.cost import tidy
from truecost.types import ZERO, Attribution, PricedCost, to_decimal

if TYPE_CHECKING:
    from truecost.tracking.scope import StepScope
    from truecost.tracking.tracker import Tracker

GB = Decimal(1_000_000_000)  # providers bill decimal gigabytes


def egress_path(src_region: str, dst_region: str, src_zone: str | None = None, dst_zone: str | None = None) -> str:
    """Which priced network path a transfer takes."""
    if dst_region == "internet" or src_region == "internet":
        return "internet"
    if src_region != dst_region:
        return "inter_region"
    if src_zone and dst_zone and src_zone != dst_zone:
        return "cross_zone"
    return "same_zone"


def charge_egress(
    step: "StepScope",
    nbytes: int,
    src_region: str,
    dst_region: str,
    *,
    provider: str = "aws",
    src_zone: str | None = None,
    dst_zone: str | None = None,
) -> PricedCost:
    """Bytes x the price of the path between two regions; monthly free allowances applied in-process."""
    gb = to_decimal(nbytes, "bytes") / GB
    path = egress_path(src_region, dst_region, src_zone, dst_zone)
    tracker = step.request.tracker
    resource = f"{provider}/{path}"
    version, _reason, _p, _s = tracker.price_version(resource, "egress", step._wall_start)
    free = ZERO
    if version is not None and version.free_per_month:
        month = step._wall_start.strftime("%Y-%m")
        free = tracker.allowance_free((resource, month), gb, version.free_per_month)
    step.annotate(egress_path=path, src_region=src_region, dst_region=dst_region, bytes=int(nbytes))
    return step.quantity(resource, "transfer", gb, kind="egress", region=f"{src_region}->{dst_region}", free=free)


def charge_log_storage(
    step: "StepScope",
    nbytes: int,
    *,
    tier: str = "aws/s3-standard",
    retention_days: int = 30,
    replicas: int = 1,
    ingest: str | None = None,
) -> PricedCost:
    """Bytes x storage price x retention x replicas (+ ingest per GB when an ingest service is named).

    The whole retention period is charged to the request that wrote the bytes, so a
    request's cost is final when it ends.
    """
    if retention_days < 0 or replicas < 1:
        raise ValueError("retention_days must be >= 0 and replicas >= 1")
    gb = to_decimal(nbytes, "bytes") / GB
    gb_months = tidy(gb * Decimal(retention_days) / Decimal(30) * replicas)
    step.annotate(log_bytes=int(nbytes), retention_days=retention_days, replicas=replicas)
    priced = step.quantity(tier, "storage", gb_months, kind="storage")
    if ingest:
        extra = step.quantity(ingest, "ingest", gb, kind="log_ingest")
        if priced.cost is None or extra.cost is None:
            return PricedCost(
                cost=None,
                lines=priced.lines + extra.lines,
                unknown_reason=priced.unknown_reason or extra.unknown_reason,
            )
        return PricedCost(cost=priced.cost + extra.cost, lines=priced.lines + extra.lines)
    return priced


@dataclass(slots=True)
class _Use:
    request_id: str
    attribution: Attribution
    trace_id: str
    busy_seconds: Decimal


class CapacityPool:
    """Reserved (warm) capacity, shared by the requests it served, idle time reported apart.

    Each request is charged its busy seconds at the per-instance-second price; at
    ``settle`` the idle remainder of the window's cost becomes one ``unallocated`` event
    (request_id None), so the pool's whole bill is always in the ledger.
    """

    def __init__(
        self, tracker: "Tracker", resource: str, instances: int, *, owner: Attribution, name: str = "reserved capacity"
    ) -> None:
        if instances < 1:
            raise ValueError("instances must be >= 1")
        self.tracker, self.resource, self.instances, self.owner, self.name = tracker, resource, instances, owner, name
        self._uses: list[_Use] = []
        self._lock = threading.Lock()

    def use(self, request, busy_seconds: float) -> None:
        with self._lock:
            self._uses.append(
                _Use(request.id, request.attribution, request.trace_id, to_decimal(busy_seconds, "busy_seconds"))
            )

    def settle(self, start: datetime, end: datetime) -> list[CostEvent]:
        """Emit the events for the window [start, end) and forget its uses."""
        with self._lock:
            uses, self._uses = self._uses, []
        version, reason, provider, service = self.tracker.price_version(self.resource, "compute", start)
        window_s = Decimal(str((end - start).total_seconds()))
        capacity_s = window_s * self.instances
        events = []
        hourly = None if version is None else version.rates["instance"]
        per_s = None if hourly is None else hourly / Decimal(3600)
        total = None if hourly is None else hourly * capacity_s / Decimal(3600)
        busy = sum((u.busy_seconds for u in uses), ZERO)
        scale = Decimal(1) if busy <= capacity_s or busy == 0 else capacity_s / busy  # overloaded: share it all
        allocated = ZERO
        for u in uses:
            cost = None if hourly is None else tidy(hourly * u.busy_seconds * scale / Decimal(3600))
            allocated += cost or ZERO
            events.append(
                self._event(u.request_id, u.attribution, u.trace_id, start, u.busy_seconds * scale, per_s, cost, reason)
            )
        idle_s = capacity_s - busy * scale
        idle_cost = None if total is None else tidy(total - allocated)
        events.append(
            self._event(
                None,
                self.owner,
                None,
                start,
                idle_s,
                per_s,
                idle_cost,
                reason,
                extra={"unallocated": True, "utilisation": float(busy * scale / capacity_s) if capacity_s else None},
            )
        )
        for e in events:
            for sink in self.tracker.sinks:
                sink(e)
        return events

    def _event(self, request_id, attribution, trace_id, ts, seconds, per_s, cost, reason, extra=None) -> CostEvent:
        version_provider = self.resource.split("/", 1)[0] if "/" in self.resource else None
        details: dict[str, Any] = {"instances": self.instances}
        if cost is None:
            details["unknown_reason"] = reason or "no price"
        details.update(extra or {})
        return CostEvent(
            id=new_id(),
            request_id=request_id,
            ts=ts,
            step="reserved_capacity",
            name="unallocated idle capacity" if request_id is None else self.name,
            provider=version_provider,
            service=self.resource.split("/")[-1],
            quantity=seconds,
            unit="instance-seconds",
            unit_price=per_s,
            cost=cost,
            attribution=attribution,
            trace_id=trace_id,
            details=details,
            source=self.tracker.source,
        )
