"""The cache's LLM judge through the real gateway: its budget, its ledger steps, its failures, its weight.

The gateway runs in process, over HTTP, in front of two small upstreams: one answers by intent (so the
answer-agreement check is meaningful), the other is the judge, answering yes or no by a rule the test
controls (the intents of the two requests it is shown), or failing, or hanging, or lying.
"""

import json
import logging
import random
import re
import time
from decimal import Decimal, localcontext

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.e2e.test_gateway_feedback import INTENTS, PRE, SUF, _intent_upstream, completion_reply
from tests.support.mock_upstream import ServerThread
from truecost.gateway.app import build
from truecost.gateway.config import hash_key, parse_config
from truecost.ledger import LedgerFilter
from truecost.pricing.catalog import PriceCatalog
from truecost.pricing.cost import price_tokens
from truecost.pricing.usage import normalise_call

JUDGE_USAGE = {"prompt_tokens": 140, "completion_tokens": 1, "total_tokens": 141}
SECRET = "judge-upstream-secret-7f3a"  # what a failing judge upstream says: never in the ledger or the log
KEY = "sk-judge-a"


def _intent(text):
    return next((i for i, cores in INTENTS.items() if any(c in text for c in cores)), "other")


def _judge_upstream() -> Starlette:
    """Answers the judge's prompt: ``mode`` rule (yes when both quoted requests share an intent), liar (the
    opposite), fail (HTTP 500 with a secret in the body), slow (longer than the judge's timeout), garbage (neither word,
    and the secret: a reply is read, never kept)."""
    state = {"calls": 0, "mode": "rule"}

    async def chat(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        state["calls"] += 1
        mode = state["mode"]
        if mode == "fail":
            return JSONResponse({"error": {"message": f"internal error, token {SECRET}"}}, status_code=500)
        if mode == "slow":
            import asyncio

            await asyncio.sleep(3)
        quoted = re.findall(r'request: ("(?:[^"\\]|\\.)*")', body["messages"][-1]["content"])
        a, b = (_intent(json.loads(q)) for q in quoted[:2])
        reply = {"rule": "Yes." if a == b else "No.", "liar": "No." if a == b else "Yes."}.get(
            mode, f"Not sure ({SECRET})"
        )
        return completion_reply(f"judge-{state['calls']}", body["model"], reply, JUDGE_USAGE)

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.judge = state
    return app


@pytest.fixture(scope="module")
def upstreams():
    with ServerThread(_intent_upstream()) as intents, ServerThread(_judge_upstream()) as judge:
        yield intents, judge


class Gw:
    def __init__(self, server, judge_server):
        self.server, self.url, self.app = server, server.url, server.server.config.app
        self.judge_state = judge_server.server.config.app.state.judge

    @property
    def cache(self):
        return self.app.state.pipeline.cache

    def chat(self, text, user):
        body = {"model": "support", "messages": [{"role": "user", "content": text}], "user": user}
        return httpx.post(
            self.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=30
        )

    def warm(self, n, seed=0):
        rng, out = random.Random(seed), []
        for i in range(n):
            text = rng.choice(PRE) + rng.choice(INTENTS[rng.choice(list(INTENTS))]) + rng.choice(SUF)
            r = self.chat(text, f"u-{seed}-{i}")
            assert r.status_code == 200, r.text
            out.append(r)
        return out

    def judge_events(self):
        self.app.state.writer.flush()
        return self.app.state.store.query(LedgerFilter(steps=("cache_judge",)))

    def events(self, request_id):
        self.app.state.writer.flush()
        return self.app.state.store.query(LedgerFilter(request_id=request_id))

    def metric(self, outcome):
        text = httpx.get(self.url + "/metrics").text
        found = re.search(rf'^truecost_cache_judge_calls_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    def judge_state_of_panel(self):
        panel = self.cache.verifiers
        name = next(s.name for s in panel.sources if "judge" in s.name)
        return panel.state()[name]


@pytest.fixture
def gateway(tmp_path, upstreams):
    """``gateway(mode="rule", **judge)`` -> a started Gw whose judge upstream answers in ``mode``."""
    intents, judge_server = upstreams
    started = []

    def make(mode="rule", equivalence="normalised+judge", budgets=(), **judge):
        judge_server.server.config.app.state.judge.update(calls=0, mode=mode)
        judge_conf = {"upstream": "judges", "model": "gpt-5-nano", "requests_per_hour": 1000, "timeout": 1, **judge}
        config = parse_config(
            {
                "ledger": str(tmp_path / f"gw{len(started)}.db"),
                "compute": "aws/c7i.xlarge",
                "upstreams": {
                    "intents": {"base_url": intents.url + "/v1", "timeout": 5, "max_retries": 0},
                    "judges": {"base_url": judge_server.url + "/v1", "timeout": 5, "max_retries": 0},
                },
                "models": {
                    "support": {"candidates": [{"upstream": "intents", "model": "gpt-6-luna"}]},
                    "judge": {"candidates": [{"upstream": "judges", "model": judge_conf["model"]}]},
                },
                "keys": [{"name": "a", "key_sha256": hash_key(KEY), "tenant": "acme", "cost_center": "cc-judge"}],
                "budgets": list(budgets),
                "cache": {
                    "enabled": True,
                    "embedder": "static-tuned",
                    "policy": "online",
                    "target_error": 0.05,
                    "equivalence": equivalence,
                    "judge": judge_conf,
                },
            }
        )
        server = ServerThread(build(config)).__enter__()
        started.append(server)
        return Gw(server, judge_server)

    yield make
    for server in started:
        server.__exit__(None, None, None)


def _catalog_cost(model, usage):
    return price_tokens(PriceCatalog.load().price_for(model), normalise_call(usage, "openai")).cost


def test_the_judge_is_called_at_most_requests_per_hour_times_each_a_priced_step_of_its_request(gateway):
    gw = gateway(requests_per_hour=7)
    responses = gw.warm(60)
    assert gw.judge_state["calls"] == 7  # misses with a neighbour to judge outnumber the budget
    assert gw.metric("refused_budget") > 0 and gw.metric("yes") + gw.metric("no") == 7
    events = gw.judge_events()
    assert len(events) == 7
    expected = _catalog_cost("gpt-5-nano", JUDGE_USAGE)
    assert expected is not None and expected > 0
    by_id = {r.headers["x-request-id"]: r for r in responses}
    for e in events:
        assert e.cost == expected and e.source == "gateway" and e.service == "gpt-5-nano"
        assert e.request_id in by_id  # the request whose miss triggered it, as the client knows it
        assert e.attribution.cost_center == "cc-judge" and e.attribution.tenant == "acme"
        assert e.details.get("judge_outcome") in ("yes", "no")
        r = by_id[e.request_id]
        assert r.headers["x-truecost-cache"] == "miss"
        steps = gw.events(e.request_id)
        assert {s.step for s in steps} >= {"cache_lookup", "generate", "cache_judge"}
        # recorded before the request was settled: the cost the client was told includes the judge's call
        with localcontext(prec=100):
            assert Decimal(r.headers["x-truecost-cost-usd"]) == +sum(s.cost for s in steps)


def test_the_panel_measures_the_judge_against_answer_agreement(gateway):
    honest = gateway(mode="rule")
    honest.warm(80)
    state = honest.judge_state_of_panel()
    assert state["pairs"] >= 10 and state["agreement"] >= 0.9 and state["weight"] > 0.9
    liar = gateway(mode="liar")
    liar.warm(80)
    lied = liar.judge_state_of_panel()
    assert lied["pairs"] >= 10 and lied["agreement"] < 0.2 and lied["weight"] < 0.6


@pytest.mark.parametrize("mode, outcome", [("fail", "error"), ("slow", "timeout"), ("garbage", "unclear")])
def test_a_failing_judge_abstains_the_client_never_sees_it_and_its_words_are_kept_nowhere(
    gateway, caplog, mode, outcome
):
    gw = gateway(mode=mode, requests_per_hour=4)
    with caplog.at_level(logging.DEBUG):
        t0 = time.perf_counter()
        gw.warm(30)
    assert gw.judge_state["calls"] >= 4 and gw.metric(outcome) == 4
    events = gw.judge_events()
    assert len(events) == 4
    for e in events:
        assert e.details.get("judge_outcome") == outcome
        if outcome == "unclear":  # an answer it could not read: priced all the same
            assert e.cost == _catalog_cost("gpt-5-nano", JUDGE_USAGE)
        else:
            assert e.cost is None and e.outcome == "error" and outcome in e.details["unknown_reason"]
        # a timed-out call may be billed: its budget is charged what admission held for it; an error is not
        held = gw.app.state.pipeline.judge_reserve
        assert e.details.get("budget_charge_usd") == (str(held) if outcome == "timeout" else None)
    assert SECRET not in json.dumps([e.details for e in events]) and SECRET not in caplog.text
    assert gw.judge_state_of_panel()["pairs"] == 0  # an abstention is no evidence
    if mode == "slow":  # four timeouts of one second each, not four of the judge upstream's three
        assert time.perf_counter() - t0 < 30 * 1 + 4 * 2.5


def test_an_unpriced_judge_with_a_dollar_budget_is_never_called_and_start_up_says_so(gateway, caplog):
    with caplog.at_level(logging.WARNING, logger="truecost.gateway"):
        gw = gateway(model="judge-local-unpriced")
    assert "judge-local-unpriced" in caplog.text and "never be called" in caplog.text
    gw.warm(30)
    assert gw.judge_state["calls"] == 0 and gw.metric("refused_unpriced") > 0 and gw.judge_events() == []


def test_an_unpriced_judge_budgeted_by_requests_alone_records_an_unknown_cost_never_zero(gateway):
    gw = gateway(model="judge-local-unpriced", dollars_per_day=None, requests_per_hour=3)
    gw.warm(30)
    events = gw.judge_events()
    assert gw.judge_state["calls"] == 3 and len(events) == 3
    assert all(e.cost is None and e.details.get("unknown_reason") for e in events)


def test_a_hard_budget_holds_the_judge_call_a_miss_may_make(gateway):
    """Admission holds the most one judge call may cost on top of the request's own estimate: the judge's
    calls are the request's steps, so without that a request admitted with a little headroom left could
    pass a hard limit by its judge call (an expensive judge here: o1-pro)."""

    def budget(limit):
        return {"cost_center": "cc-judge", "period": "day", "limit_usd": str(limit), "hard": True}

    tight = gateway(model="o1-pro", budgets=[budget("0.5")])
    reserve = tight.app.state.pipeline.judge_reserve
    assert Decimal("0.5") < reserve < Decimal("4")  # ~18,200 prompt tokens (bytes) at $150/M: the worst a call costs
    r = tight.chat("how long does a refund take", "b-0")  # its own estimate (~$0.004) fits; with the judge's, not
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
    assert tight.judge_state["calls"] == 0
    limit = reserve + Decimal("0.3")
    gw = gateway(model="o1-pro", budgets=[budget(limit)])
    rng, codes = random.Random(3), []
    for i in range(200):
        r = gw.chat(rng.choice(PRE) + rng.choice(INTENTS[rng.choice(list(INTENTS))]) + rng.choice(SUF), f"b-{i}")
        codes.append(r.status_code)
        if r.status_code != 200:
            assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded", r.text
            break
    judged = gw.judge_events()
    assert codes[-1] == 429 and len(judged) >= 5 and max(e.cost for e in judged) < reserve
    gw.app.state.writer.flush()
    spent = sum(e.cost for e in gw.app.state.store.query(LedgerFilter()) if e.cost is not None)
    assert spent <= limit, spent
