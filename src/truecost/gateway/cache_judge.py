"""The cache's LLM judge, composed by the gateway: a configured upstream behind ``truecost.cache.judge``.

The cache asks its judge from a worker thread (``SemanticCache.store`` runs in ``asyncio.to_thread``,
after a miss and before the request is settled). ``judging_for(ex)`` binds that store to its request;
the judge's ``complete`` then runs the upstream call on the gateway's event loop and records it as a
``cache_judge`` step of that request: same request id, same attribution, priced from the call's usage
through the catalog (an unpriced model: cost None with the reason, never 0). A call that fails or times
out is an abstention: the step says what kind of failure it was, never the upstream's text, and the
client's answer is unaffected. A request already settled (a client that hung up) is never judged for,
so no row is added after settle. The budget (``Budgeted``: requests per hour, dollars per day, per
replica) is checked before each call against an estimate of its cost (prompt characters / 3 tokens in,
``max_tokens`` out, at the model's catalog price).

Prometheus: ``truecost_cache_judge_calls_total{outcome}`` with outcome yes | no | unclear | error |
timeout | refused_budget | refused_unpriced | unbound (asked outside a request: not called).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterator, Sequence

from truecost.cache.judge import LLMJudge, parse_verdict
from truecost.cache.verifier import Budgeted, PairView, Verdict, answer_text
from truecost.errors import UpstreamError
from truecost.errors import ConfigError
from truecost.gateway.config import Candidate, GatewayConfig, JudgeConfig
from truecost.gateway.exchange import Exchange
from truecost.gateway.metering import Meter
from truecost.gateway.metrics import Metrics
from truecost.pricing.cost import price_tokens
from truecost.tracking.tracker import Tracker
from truecost.types import TokenUsage
from truecost.upstream.base import Upstream
from truecost.upstream.errors import UpstreamTimeout

log = logging.getLogger("truecost.gateway")
METRIC = "truecost_cache_judge_calls_total"
MAX_IN_FLIGHT = 2  # judge calls at once per replica; more are skipped (outcome "busy"), never queued


@dataclass(frozen=True)
class _Bound:
    ex: Exchange
    loop: asyncio.AbstractEventLoop


_BOUND: contextvars.ContextVar[_Bound | None] = contextvars.ContextVar("truecost_cache_judge", default=None)


@contextlib.contextmanager
def judging_for(ex: Exchange) -> Iterator[None]:
    """Within this block (and the worker threads ``asyncio.to_thread`` starts in it), judge calls are ``ex``'s."""
    token = _BOUND.set(_Bound(ex, asyncio.get_running_loop()))
    try:
        yield
    finally:
        _BOUND.reset(token)


class JudgeUnavailable(Exception):
    """The judge did not answer (its reason is counted in the metrics; no upstream text is kept)."""


class GatewayJudge:
    """The ``complete(messages) -> (text, usage, model)`` of an ``LLMJudge``, over one configured candidate."""

    def __init__(
        self, conf: JudgeConfig, cand: Candidate, upstream: Upstream, tracker: Tracker, meter: Meter, metrics: Metrics
    ) -> None:
        self.conf, self.cand, self.upstream = conf, cand, upstream
        self.tracker, self.meter, self.metrics = tracker, meter, metrics
        self.judge = LLMJudge(self, p_yes=conf.p_yes, p_no=conf.p_no, name=f"judge:{cand.model}")
        # calls in flight at once: each holds a worker of the default executor (lookups share it) for up to timeout
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    # -- the budget ----------------------------------------------------------------------------------
    def estimate(self, pair: PairView) -> Decimal | None:
        """An upper bound of one call's cost in USD (None: the model has no price in the catalog).

        Input tokens are bounded by the prompt's UTF-8 bytes (no byte-level BPE or byte-fallback token is shorter
        than a byte: characters / 3 is not a bound, control characters and emoji take several tokens each) plus
        each message's template tokens; priced with the upstream's configured price attributes (a regional
        uplift), as its calls are.
        """
        messages = self.judge.messages(pair)
        size = sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in messages)
        tokens = TokenUsage(input=size + 16 * len(messages), output=self.conf.max_tokens)
        version, reason, _p, _s = self.tracker.price_version(self.cand.model, None, self.tracker.clock.now())
        attributes = self.meter.price_attributes.get(self.cand.upstream)
        return price_tokens(version, tokens, attributes=attributes, unknown_reason=reason).cost

    def reserve(self) -> Decimal:
        """The most one call may cost: every quoted text at its cut, each character escaped (6 bytes).

        Admission holds it on top of a cacheable request's own estimate, since that request's miss may ask the
        judge, so a hard budget is not passed by a judge call (0 when the model has no price: see build_judge).
        """
        worst = "\x01" * self.judge.max_chars
        return self.estimate(PairView(worst, worst, other_answer=worst)) or Decimal(0)

    def unpriced_reason(self) -> str | None:
        """Why the judge's calls cannot be priced (None when its model has a price)."""
        version, reason, _p, _s = self.tracker.price_version(self.cand.model, None, self.tracker.clock.now())
        return None if version is not None else reason or "no price in force"

    def source(self) -> "CountedBudget":
        budgeted = Budgeted(
            self.judge,
            requests_per_hour=self.conf.requests_per_hour,
            dollars_per_day=self.conf.dollars_per_day,
            cost_per_call=self.estimate,
        )
        return CountedBudget(budgeted, self.metrics, self.reserve())

    # -- one call, from the cache's worker thread --------------------------------------------------------
    def __call__(self, messages: list[dict]) -> tuple[str, Any, str]:
        bound = _BOUND.get()
        if bound is None or bound.ex.admission.settled:
            self.metrics.inc(METRIC, outcome="unbound")
            raise JudgeUnavailable("no request to charge the call to")
        if not self._slots.acquire(blocking=False):  # busy: skip it rather than stall the cache's other work
            self.metrics.inc(METRIC, outcome="busy")
            raise JudgeUnavailable("busy")
        try:
            future = asyncio.run_coroutine_threadsafe(self._call(bound.ex, messages), bound.loop)
            try:
                return future.result(timeout=self.conf.timeout + 5)
            except concurrent.futures.TimeoutError:  # the loop did not run it in time: give up, cancelled there
                future.cancel()
                self.metrics.inc(METRIC, outcome="timeout")
                raise JudgeUnavailable("timed out") from None
        finally:
            self._slots.release()

    async def _call(self, ex: Exchange, messages: list[dict]) -> tuple[str, Any, str]:
        if ex.admission.settled:  # the request ended while the call waited: nothing is added after settle
            self.metrics.inc(METRIC, outcome="unbound")
            raise JudgeUnavailable("request already settled")
        cand = self.cand
        body = {"model": cand.wire_model, "messages": messages, "max_tokens": self.conf.max_tokens, "temperature": 0}
        step = ex.step("cache_judge", cand.model)
        step.annotate(upstream=cand.upstream)
        t0 = time.perf_counter()
        try:
            answer = await asyncio.wait_for(self.upstream.complete(body), self.conf.timeout)
        except (UpstreamError, asyncio.TimeoutError) as exc:
            timed_out = isinstance(exc, (UpstreamTimeout, asyncio.TimeoutError))
            outcome = "timeout" if timed_out else "error"
            # the kind of failure only: an upstream's own words never reach the ledger or the log
            ex.unknown(step, cand.model, f"cache judge call failed ({outcome}: {type(exc).__name__})", billable=False)
            step.outcome = "error"
            step.annotate(judge_outcome=outcome, may_be_billed=timed_out)
            if timed_out:  # the provider may bill it: the budget is charged what admission held for it
                step.annotate(budget_charge_usd=str(self.reserve()))
            ex.finish(step)
            self.metrics.inc(METRIC, outcome=outcome)
            raise JudgeUnavailable(outcome) from None
        self.meter.charge(ex, step, cand, answer.usage, answer.native_usage, answer.body)
        if cand.self_hosted:
            self.tracker.charge_compute(step, (time.perf_counter() - t0) * 1000)
        text = answer_text(answer.body)
        verdict = parse_verdict(text)
        outcome = "unclear" if verdict is None else "yes" if verdict else "no"
        step.annotate(judge_outcome=outcome)
        ex.finish(step)
        self.metrics.inc(METRIC, outcome=outcome)
        return text, answer.usage, cand.model


class CountedBudget:
    """The budgeted judge as the panel sees it, counting the calls its budget refused in the metrics."""

    def __init__(self, inner: Budgeted, metrics: Metrics, reserve: Decimal = Decimal(0)) -> None:
        self.inner, self.metrics = inner, metrics
        self.name, self.capabilities = inner.name, inner.capabilities
        self.reserve = reserve  # the most one call may cost, held at admission (GatewayJudge.reserve)

    def verify(self, pairs: Sequence[PairView]) -> list[Verdict | None]:
        refused, unpriced = self.inner.refused, self.inner.refused_unpriced
        out = self.inner.verify(pairs)
        if self.inner.refused > refused:
            self.metrics.inc(METRIC, self.inner.refused - refused, outcome="refused_budget")
        if self.inner.refused_unpriced > unpriced:
            self.metrics.inc(METRIC, self.inner.refused_unpriced - unpriced, outcome="refused_unpriced")
        return out


def build_judge(
    config: GatewayConfig, upstreams: dict[str, Upstream], tracker: Tracker, metrics: Metrics
) -> CountedBudget | None:
    """The budgeted judge ``cache.judge`` describes (None without one); says at start-up if it can never run."""
    conf = config.cache.judge
    if conf is None or not config.cache.enabled:
        return None
    cand = next(
        c for cands in config.models.values() for c in cands if (c.upstream, c.model) == (conf.upstream, conf.model)
    )
    prices = {n: dict(u.price_attributes) for n, u in config.upstreams.items()}
    judge = GatewayJudge(conf, cand, upstreams[conf.upstream], tracker, Meter(tracker, metrics, prices), metrics)
    reason = judge.unpriced_reason()
    refusing = [b for b in config.budgets if b.hard and b.unpriced == "refuse"]
    if reason is not None and refusing:  # its calls would be a request's unpriced spend that budget never sees
        raise ConfigError(
            f"cache.judge: model {conf.model!r} has no price ({reason}) and a hard budget refuses unpriced models "
            f"({refusing[0].field}={refusing[0].value}): price the model (a user price file) or set that "
            "budget's unpriced: allow"
        )
    if reason is not None and conf.dollars_per_day is not None:
        log.warning(
            "truecost: cache judge %r has no price (%s) and a dollar budget is set: it will never be called "
            "(add a price, or set cache.judge.dollars_per_day: null to budget by requests_per_hour alone)",
            conf.model,
            reason,
        )
    elif reason is not None:
        log.warning(
            "truecost: cache judge %r has no price (%s): its steps are recorded with an unknown cost",
            conf.model,
            reason,
        )
    return judge.source()
