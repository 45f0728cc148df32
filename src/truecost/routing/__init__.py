"""Which model should serve this request? Routers decide; they never call models."""

from truecost.routing.decision import RouteDecision, RouteRequest, Router

__all__ = ["RouteDecision", "RouteRequest", "Router"]
