"""Rules: route by what a request visibly is, before any model is trained."""

from __future__ import annotations

import re
from dataclasses import dataclass

from truecost.routing.decision import RouteDecision, RouteRequest, forced_decision
from truecost.routing.features import prompt_features

_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|\bSELECT\b|\breturn\b|=>|#include")
_STRUCTURED = re.compile(r"^\s*[\[{]|\|.*\|.*\||<\w+>.*</\w+>", re.M | re.S)
_HARD_WORDS = re.compile(
    r"\b(prove|derive|step by step|analy[sz]e|optimi[sz]e|debug|refactor|legal|contract|"
    r"diagnos\w*|calculate|compute|solve)\b",
    re.I,
)


@dataclass
class RulesRouter:
    weak: str
    strong: str
    max_weak_tokens: int = 400
    budget_downgrade_at: float = 0.9  # an attribution past 90% of its budget goes to the weak model
    force_header: str = "x-truecost-route"  # 'strong' or 'weak' forces the choice

    def score(self, request: RouteRequest) -> float:
        """A difficulty score in [0, ~5]: higher means more likely to need the strong model."""
        text = request.text
        f = prompt_features(text)
        tokens = request.prompt_tokens or len(text) // 4
        return (
            min(tokens / self.max_weak_tokens, 2.0)
            + (1.0 if _CODE.search(text) else 0.0)
            + (0.5 if _STRUCTURED.search(text) else 0.0)
            + 0.5 * min(len(_HARD_WORDS.findall(text)), 2)
            + min(f[2], 1.0)
        )

    def route(self, request: RouteRequest) -> RouteDecision:
        forced = forced_decision(request, self.force_header, self.weak, self.strong, "rules")
        if forced is not None:
            return forced
        if request.budget_used is not None and request.budget_used >= self.budget_downgrade_at:
            return RouteDecision(
                (self.weak, self.strong), f"budget {request.budget_used:.0%} used: downgraded", None, "rules"
            )
        s = self.score(request)
        if s >= 1.0:
            return RouteDecision(
                (self.strong, self.weak), f"difficulty {s:.2f} >= 1.0 (length, code, structure, task words)", s, "rules"
            )
        return RouteDecision((self.weak, self.strong), f"difficulty {s:.2f} < 1.0", s, "rules")
