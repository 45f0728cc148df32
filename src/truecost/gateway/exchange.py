"""What travels through the request path: the admitted request (``Exchange``), the answer a candidate
served (``Served``) and what the app sends back (``Result``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from truecost.gateway.admission import Admission
from truecost.gateway.config import Candidate
from truecost.gateway.errors import GatewayError
from truecost.tracking.scope import RequestScope, StepScope
from truecost.types import ZERO, Attribution
from truecost.upstream.errors import UpstreamAuthError, UpstreamHTTPError


@dataclass
class Result:
    """A JSON ``body`` or a ``stream`` of server-sent-event bytes, with the gateway's headers."""

    body: dict | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    close: Callable[[], Awaitable[None]] | None = None  # streams: the app awaits it when the response ends


@dataclass
class Exchange:
    """One admitted request on its way through the stages."""

    body: dict
    key: Any
    headers: Mapping[str, str]
    attribution: Attribution
    req: RequestScope
    admission: Admission
    scope: str  # the cache partition: tenant, else the key, else anonymous
    t0: float
    client_id: str | None = None
    upstream_ms: float = 0.0
    lookup: Any = None
    open_steps: list[StepScope] = field(default_factory=list)
    regenerate_of: str | None = None  # the request id of the cache hit this client just refused by asking again

    def step(self, kind: str, name: str | None) -> StepScope:
        s = StepScope(self.req, kind, name).begin()
        if self.client_id:
            s.annotate(client_request_id=self.client_id)
        if self.regenerate_of:
            s.annotate(regenerate_of=self.regenerate_of)
        self.open_steps.append(s)
        return s

    def finish(self, step: StepScope, exc: BaseException | None = None) -> None:
        if step in self.open_steps:
            self.open_steps.remove(step)
            step.finish(exc)

    def unknown(self, step: StepScope, model: str, reason: str, billable: bool = True) -> None:
        """A cost we cannot know; if the provider may bill it, the budget is charged the admission estimate."""
        step.cost(None, service=model, reason=reason)
        if billable:  # a cache judge's call was held apart from the request's own (Admission.reserve)
            held = self.admission.reserve if step.kind == "cache_judge" else self.admission.estimate
            step.annotate(budget_charge_usd=str(held))

    def budget_actual(self) -> Decimal:
        """What the request's budgets are charged: the known costs, plus the estimate of each unknown cost
        the provider may bill (``budget_charge_usd``)."""
        charged = sum(
            (
                Decimal(e.details["budget_charge_usd"])
                for e in self.req.events
                if e.cost is None and e.details.get("budget_charge_usd") is not None
            ),
            ZERO,
        )
        return self.req.total + charged

    def avoided(self) -> Decimal:
        """What the cache or the router saved this request."""
        return sum((e.avoided_cost for e in self.req.events if e.avoided_cost is not None), ZERO)

    def all_failed(self, last_error: Exception | None) -> GatewayError:
        """The answer when no candidate served: the last upstream error, redacted, in the API's shape."""
        headers = {"x-request-id": self.req.id}
        model = self.body["model"]
        if isinstance(last_error, UpstreamAuthError):  # our credentials, not the client's
            return GatewayError(
                502,
                f"every candidate for {model!r} failed: the gateway's own credentials "
                "for the upstream were refused (an operator must fix the upstream API key)",
                "upstream_error",
                "upstream_auth_failed",
                headers,
            )
        http = last_error if isinstance(last_error, UpstreamHTTPError) else None
        status = http.status if http is not None and 400 <= http.status < 500 else 502
        if status == 429 and http is not None and http.retry_after:
            headers["retry-after"] = str(max(1, int(http.retry_after + 0.999)))
        return GatewayError(
            status,
            f"every candidate for {model!r} failed; last error: {last_error}",
            "upstream_error",
            "upstream_failed",
            headers,
        )


@dataclass
class Served:
    """A candidate's answer: the body for the client and the (OpenAI-shaped) usage it was charged for."""

    cand: Candidate
    body: dict
    usage: Any
    cacheable: bool = True
