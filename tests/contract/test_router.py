"""The Router contract (route(request) -> RouteDecision), run on every router."""

import numpy as np
import pytest

from truecost.routing.decision import RouteDecision, RouteRequest, Router
from truecost.routing.rules import RulesRouter
from truecost.routing.scorer import Example, FeatureSpec, GapScorer, ScoredRouter

WEAK, STRONG = "small-model", "large-model"
REQUESTS = [
    RouteRequest("hi"),
    RouteRequest("prove step by step that the sum of two odd numbers is even " * 4),
    RouteRequest("```python\ndef f(x):\n    return x\n``` debug and refactor", prompt_tokens=40),
    RouteRequest("what is my balance", metadata={"topic": "chat"}, budget_used=0.95),
    RouteRequest("", prompt_tokens=0),
]


def _trained() -> ScoredRouter:
    rng = np.random.default_rng(0)
    train = []
    for i in range(300):
        hard = rng.random() < 0.4
        text = ("prove step by step " * 3 + "x" * 300) if hard else f"hi there {i}"
        train.append(Example(text, 1.0 if hard and rng.random() < 0.9 else 0.0, {"topic": "math" if hard else "chat"}))
    scorer = GapScorer(FeatureSpec(embed=False, categorical=("topic",))).fit(train)
    return ScoredRouter(scorer, WEAK, STRONG, threshold=0.5)


@pytest.fixture(scope="module", params=["rules", "trained"])
def router(request) -> Router:
    return RulesRouter(WEAK, STRONG) if request.param == "rules" else _trained()


@pytest.mark.parametrize("req", REQUESTS, ids=range(len(REQUESTS)))
def test_a_decision_orders_both_models_and_says_why(router, req):
    d = router.route(req)
    assert isinstance(d, RouteDecision)
    assert sorted(d.candidates) == sorted([WEAK, STRONG]) and d.model == d.candidates[0]
    assert isinstance(d.reason, str) and d.reason and d.strategy
    assert router.route(req) == d  # the same request, the same decision


@pytest.mark.parametrize("forced,first", [("strong", STRONG), ("weak", WEAK), ("STRONG", STRONG)])
def test_the_route_header_forces_the_choice(router, forced, first):
    d = router.route(RouteRequest("hi", metadata={"x-truecost-route": forced}))
    assert d.model == first and "forced" in d.reason


def test_an_unknown_forcing_value_is_ignored(router):
    assert "forced" not in router.route(RouteRequest("hi", metadata={"x-truecost-route": "maybe"})).reason
