"""The Router seam and its value types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol


@dataclass(frozen=True, slots=True)
class RouteRequest:
    text: str
    prompt_tokens: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)  # headers, attribution, dataset fields
    budget_used: float | None = None  # share of the attribution's budget already spent, 0..1
    # The whole prompt's tokens (system prompt, history, retrieved context) when ``text`` is only
    # the last user message: what a call costs, not how hard the question is.
    context_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Ordered candidates: the first serves, the rest are fallbacks in order."""

    candidates: tuple[str, ...]
    reason: str
    score: float | None = None
    strategy: str = ""

    @property
    def model(self) -> str:
        return self.candidates[0]


def forced_decision(request: RouteRequest, header: str, weak: str, strong: str, strategy: str) -> RouteDecision | None:
    """The decision a ``header: strong|weak`` asks for, or None when the request does not force one."""
    forced = str(request.metadata.get(header, "")).lower()
    if forced not in ("strong", "weak"):
        return None
    first, other = (strong, weak) if forced == "strong" else (weak, strong)
    return RouteDecision((first, other), f"forced by header {header}: {forced}", None, strategy)


class Router(Protocol):
    def route(self, request: RouteRequest) -> RouteDecision: ...
