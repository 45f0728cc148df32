"""The request path as five explicit stages, testable without HTTP.

1. **admit**: the key (authenticated by the app) may use the alias; attribution follows the
   trust model (``admission.py``); rate limits; budget admission with a conservative estimate.
2. **look up**: the semantic cache, inside the request's scope (tenant, else the key).
3. **plan**: the alias's router orders its candidates (``planning.py``).
4. **call**: candidates in order, falling back only before the first byte; the cascade wraps
   this stage (weak call, accept or escalate).
5. **settle**, by structure: every admitted request goes through ``Pipeline.settle`` exactly
   once, whatever happened (success, upstream failure, exception, client hang-up,
   cancellation). Settling finishes any step still open, so a call the provider may bill
   always has its ledger row; releases the budget admission with the real cost; corrects the
   tokens-per-minute estimate; closes the request's span.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import time
from decimal import Decimal
from typing import Any, Awaitable, Callable, Mapping, Sequence

from truecost.cache.verifier import answer_text
from truecost.errors import InvalidAttributionError, TruecostError, UpstreamError
from truecost.gateway.admission import Admission, Estimate, attribution_for, estimate, own_attribution
from truecost.gateway.cache_judge import judging_for
from truecost.gateway.budgets import BudgetExceeded, BudgetGuard, BudgetUnavailable, BudgetUnpriced, LocalBudgetGuard
from truecost.gateway.config import Candidate, GatewayConfig
from truecost.gateway.errors import GatewayError
from truecost.gateway.exchange import Exchange, Result, Served
from truecost.gateway.feedback import owner_of
from truecost.gateway.metering import Meter
from truecost.gateway.metrics import Metrics
from truecost.gateway.planning import load_router_artifact, make_router, plan  # noqa: F401  (re-exported)
from truecost.gateway.ratelimit import RateLimited, RateLimiter
from truecost.gateway.streaming import replay, stream_answer
from truecost.gateway.validation import validate_chat, validate_embeddings
from truecost.pii import scrub
from truecost.routing.cascade import LogprobCascade, mean_logprob
from truecost.tracking.scope import StepScope
from truecost.tracking.tracker import Tracker
from truecost.types import ZERO
from truecost.upstream.base import Upstream, UpstreamResponse
from truecost.upstream.errors import UpstreamTimeout, UpstreamUnsupported

log = logging.getLogger("truecost.gateway")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

__all__ = ["GatewayError", "Pipeline", "Result", "attribution_for", "load_router_artifact"]


class Pipeline:
    """The request path. Its collaborators are built once by the composition root and passed in: the upstream
    clients by name, the cache (or None), the budget guard, the rate limiter (or None)."""

    def __init__(
        self,
        config: GatewayConfig,
        tracker: Tracker,
        upstreams: Mapping[str, Upstream],
        metrics: Metrics | None = None,
        cache: Any = None,
        budgets: BudgetGuard | None = None,
        limiter: RateLimiter | None = None,
        judge_reserve: Decimal = ZERO,
    ) -> None:
        self.config, self.tracker, self.upstreams, self.cache = config, tracker, upstreams, cache
        self.judge_reserve = judge_reserve  # held at admission for the cache judge a miss may ask (cache_judge.py)
        self.metrics = metrics or Metrics()
        self.budgets: BudgetGuard = budgets if budgets is not None else LocalBudgetGuard(config.budgets)
        self.limiter = limiter
        self.routers = {alias: make_router(r, tracker) for alias, r in config.routes.items() if r.strategy != "cascade"}
        self.cascades = {
            alias: LogprobCascade(r.min_mean_logprob)
            for alias, r in config.routes.items()
            if r.strategy == "cascade" and r.min_mean_logprob is not None
        }  # config: a cascade has one
        self.meter = Meter(tracker, self.metrics, {n: dict(u.price_attributes) for n, u in config.upstreams.items()})

    # -- entry points -----------------------------------------------------------------
    async def chat(self, body: Any, key: Any, headers: Mapping[str, str]) -> Result:
        t0 = time.perf_counter()
        validate_chat(body, max_n=self.config.limits.max_n)
        candidates = self._candidates(body["model"], key)
        cascade = self.cascades.get(body["model"])
        if cascade is not None:  # the weak model answers first; the strong one only on low confidence
            rc = self.config.routes[body["model"]]
            rank = {rc.weak: 0, rc.strong: 1}
            candidates, route = sorted(candidates, key=lambda c: rank.get(c.model, 2)), None
        else:
            candidates, route = plan(self.routers.get(body["model"]), body, candidates, headers)
            if route is not None:
                self.metrics.inc("truecost_route_decisions_total", model=route.model)
        ex = await self.admit(body, key, headers, [c.model for c in candidates], t0)
        return await self._settled(ex, self._serve_chat(ex, candidates, route, cascade))

    async def embeddings(self, body: Any, key: Any, headers: Mapping[str, str]) -> Result:
        t0 = time.perf_counter()
        validate_embeddings(body)
        candidates = self._candidates(body["model"], key)
        ex = await self.admit(body, key, headers, [c.model for c in candidates], t0, output_tokens=0)
        return await self._settled(ex, self._serve_embeddings(ex, candidates))

    async def _settled(self, ex: Exchange, serve: Awaitable[Result]) -> Result:
        """Run the serving stages; settle exactly once -- now, or when a stream's response ends."""
        try:
            result = await serve
        except BaseException:
            await self.settle(ex)
            raise
        if result.stream is None:
            await self.settle(ex)
        else:
            result.close = functools.partial(self.settle, ex)
        return result

    # -- stage 1: admit ----------------------------------------------------------------
    def _candidates(self, alias: str, key: Any) -> list[Candidate]:
        candidates = self.config.models.get(alias)
        if candidates is None:
            raise GatewayError(
                404,
                f"unknown model {alias[:200]!r}; this gateway serves: {', '.join(sorted(self.visible(key)))}",
                code="model_not_found",
                param="model",
            )
        if key is not None and key.models is not None and alias not in key.models:
            raise GatewayError(
                403,
                f"API key {key.name!r} may not use model {alias!r}",
                "permission_error",
                "model_not_allowed",
                param="model",
            )
        return candidates

    def visible(self, key: Any) -> list[str]:
        """The aliases ``key`` may call (every alias in development mode)."""
        return [a for a in self.config.models if key is None or key.models is None or a in key.models]

    async def admit(
        self,
        body: dict,
        key: Any,
        headers: Mapping[str, str],
        models: list[str],
        t0: float,
        output_tokens: int | None = None,
    ) -> Exchange:
        try:
            attribution = attribution_for(
                key,
                headers,
                on_ignored=lambda f: self.metrics.inc("truecost_attribution_headers_ignored_total", field=f),
            )
        except InvalidAttributionError as exc:  # a tag or feature header the ledger cannot store faithfully
            raise GatewayError(400, f"attribution header refused: {exc}", code="invalid_attribution") from None
        limiter = self.limiter if key is not None and (key.rpm or key.tpm) else None
        limited = limiter is not None
        est = (
            estimate(self.tracker, body, models, output_tokens)
            if (self.config.budgets or limited)
            else Estimate(ZERO, 0)
        )
        reserve = self.judge_reserve if self.config.budgets and self._may_judge(body, headers, output_tokens) else ZERO
        if limiter is not None:
            self._rate_limit(limiter, key, est.tokens)
        admission = Admission(
            estimate=est.cost, reserve=reserve, tokens=est.tokens, key_name=key.name if limited else None
        )
        own = own_attribution(key)
        attributions = [attribution] if own is None or own is attribution else [own, attribution]
        held = Estimate(est.cost + reserve, est.tokens, est.unpriced)
        await self._admit_budgets(admission, attributions, held, attribution.cost_center)
        client_id = headers.get("x-request-id")
        client_id = client_id if client_id and _CLIENT_ID.fullmatch(client_id) else None
        joins = client_id is not None and (key is None or "request_id" in key.allow_attribution_headers)
        # unguessable (128 random bits); the client's id only for a key trusted to join its own request
        req = self.tracker.request(client_id if joins else os.urandom(16).hex(), attribution, source="gateway")
        self.tracker.open_request(req)
        scope = (
            f"tenant:{attribution.tenant}"
            if attribution.tenant
            else f"key:{key.name}"
            if key is not None
            else "anonymous"
        )
        return Exchange(body, key, headers, attribution, req, admission, scope, t0, None if joins else client_id)

    def _may_judge(self, body: Mapping[str, Any], headers: Mapping[str, str], output_tokens: int | None) -> bool:
        """Can this request's miss ask the cache judge? Only a chat answer the cache may store: not a stream, not
        a request that skips the cache, not embeddings."""
        return (
            bool(self.judge_reserve)
            and self.cache is not None
            and output_tokens is None
            and not body.get("stream")
            and headers.get("x-truecost-cache", "").strip().lower() != "bypass"
        )

    def check_rate(self, key: Any) -> None:
        """One request (no tokens) against the key's per-minute limits: what a cache feedback report costs it."""
        if key is not None and self.limiter is not None and (key.rpm or key.tpm):
            self._rate_limit(self.limiter, key, 0)

    def _rate_limit(self, limiter: RateLimiter, key: Any, tokens: int) -> None:
        try:
            limiter.check(key.name, key.rpm, key.tpm, tokens, time.time())
        except RateLimited as exc:
            self.metrics.inc("truecost_rate_limited_total", limit=exc.which)
            headers = {"retry-after": exc.retry_after_header} if exc.retry_after_header else {}
            raise GatewayError(
                429, f"API key {key.name!r}: {exc}", "rate_limit_error", "rate_limited", headers
            ) from None

    async def _admit_budgets(
        self, admission: Admission, attributions: list, est: Estimate, cost_center: str | None
    ) -> None:
        try:
            admission.budget_keys = await self._budget_call(
                functools.partial(self.budgets.admit, attributions, est.cost, unpriced_model=est.unpriced)
            )
        except BudgetExceeded as exc:
            self._release_tokens(admission)
            self.metrics.inc("truecost_budget_refusals_total", cost_center=cost_center or "")
            raise GatewayError(429, str(exc), "budget_exceeded", "budget_exceeded") from None
        except BudgetUnpriced as exc:
            self._release_tokens(admission)
            raise GatewayError(403, str(exc), "budget_exceeded", "unpriced_model") from None
        except BudgetUnavailable as exc:  # cannot check the budget: refuse rather than overspend
            self._release_tokens(admission)
            raise GatewayError(503, f"{exc}; retry later", "service_unavailable", "budget_store_unavailable") from None
        for alert in self.budgets.take_alerts():  # soft budgets passed: visible in metrics and the log, never silent
            log.warning("truecost: %s", alert)
            self.metrics.inc("truecost_budget_alerts_total")

    def _release_tokens(self, admission: Admission, actual: int = 0) -> None:
        if admission.key_name is not None and self.limiter is not None:
            self.limiter.adjust(admission.key_name, admission.tokens, actual)

    async def _budget_call(self, fn: Callable[[], Any]) -> Any:
        """In-process budgets answer inline; a shared (PostgreSQL) guard does network I/O, so it runs in a
        worker thread and a slow or unreachable database never stalls the event loop for other requests."""
        if self.budgets.remote:
            return await asyncio.to_thread(fn)
        return fn()

    # -- stage 5: settle (exactly once, for every admitted request) ------------------------
    async def settle(self, ex: Exchange) -> None:
        if ex.admission.settled:
            return
        ex.admission.settled = True
        try:
            for step in list(ex.open_steps):  # interrupted mid-call: the provider may bill it, so it is recorded
                if not step.charged:
                    ex.unknown(step, step.name or "", "interrupted before the upstream answered")
                ex.finish(step, RuntimeError("interrupted"))
            if ex.admission.budget_keys:  # only budgeted requests pay for the sums below
                await self._budget_call(
                    functools.partial(
                        self.budgets.settle,
                        ex.admission.budget_keys,
                        ex.admission.estimate + ex.admission.reserve,
                        ex.budget_actual(),
                    )
                )
        finally:
            if ex.admission.key_name is not None:
                used = sum(sum(e.details.get("tokens", {}).values()) for e in ex.req.events if e.step == "generate")
                self._release_tokens(ex.admission, used)
            self.tracker.close_request(ex.req, None)

    # -- stages 2-4 for chat ------------------------------------------------------------
    async def _serve_chat(
        self, ex: Exchange, candidates: list[Candidate], route: Any, cascade: LogprobCascade | None
    ) -> Result:
        if self.cache is not None:
            await self._look_up(ex, self.cache)
        if ex.lookup is not None:
            hit = self.meter.lookup(ex.req, ex.lookup)
            if hit is not None:
                return self._cached(ex, hit)
        if ex.body.get("stream") and cascade is None:
            return Result(
                stream=stream_answer(ex, candidates, self.upstreams, self.meter, self.settle),
                headers={"x-request-id": ex.req.id, "x-truecost-cache": "regenerate" if ex.regenerate_of else "bypass"},
            )
        if cascade is not None:
            served = await self._cascade(ex, candidates, cascade)
        else:
            served = await self._call(ex, candidates, route)
        return await self._respond(ex, served, whole_answer=cascade is not None)

    async def _look_up(self, ex: Exchange, cache: Any) -> None:
        """Stage 2. A hit is remembered under the request id and the key (who alone may report on it); the same
        client asking again for what it was just served (or skipping the cache for it) is a regenerate."""
        owner = owner_of(ex.key)
        try:
            if ex.headers.get("x-truecost-cache", "").lower() == "bypass":
                via = "bypass"
                if cache.regenerate_window is not None:
                    ex.regenerate_of = await asyncio.to_thread(cache.skipped, ex.body, ex.scope, owner=owner)
            else:
                via = "repeat"
                ex.lookup = await asyncio.to_thread(cache.lookup, ex.body, ex.scope, request_id=ex.req.id, owner=owner)
                ex.regenerate_of = ex.lookup.regenerate_of
        except TruecostError as exc:  # the cache's store is down: answer from upstream, say so in metrics
            log.warning("truecost: cache lookup skipped: %s", type(exc).__name__)
            self.metrics.inc("truecost_cache_errors_total", op="lookup")
        if ex.regenerate_of is not None:  # the client did not take the hit: it goes upstream, and is not stored
            self.metrics.inc("truecost_cache_regenerations_total", via=via)

    async def _generate(
        self, ex: Exchange, cand: Candidate, call: dict, fallback: bool
    ) -> tuple[UpstreamResponse, Any, StepScope]:
        """One upstream call as a `generate` step (left open for the caller to annotate and finish)."""
        step = ex.step("generate", cand.model)
        t_up = time.perf_counter()
        try:
            answer = await self.upstreams[cand.upstream].complete(call)
        except UpstreamError as exc:
            ex.upstream_ms += (time.perf_counter() - t_up) * 1000
            # a timed-out call may still be billed; a refused one is not
            ex.unknown(step, cand.model, f"upstream error: {exc}", billable=isinstance(exc, UpstreamTimeout))
            ex.finish(step, exc)
            self.metrics.inc("truecost_upstream_errors_total", model=cand.model)
            raise
        call_ms = (time.perf_counter() - t_up) * 1000
        ex.upstream_ms += call_ms
        usage = self.meter.charge(ex, step, cand, answer.usage, answer.native_usage, answer.body)
        if cand.self_hosted:
            self.tracker.charge_compute(step, call_ms)
        step.annotate(upstream=cand.upstream, fallback=fallback)
        return answer, usage, step

    async def _call(self, ex: Exchange, candidates: list[Candidate], route: Any) -> Served:
        last_error: Exception | None = None
        for i, cand in enumerate(candidates):
            try:
                answer, usage, step = await self._generate(ex, cand, {**ex.body, "model": cand.wire_model}, i > 0)
            except UpstreamError as exc:
                last_error = exc
                continue
            if route is not None:
                strong = self.config.routes[ex.body["model"]].strong
                step.annotate(route_strategy=route.strategy, route_reason=route.reason, route_score=route.score)
                if cand.model != strong:  # served below the strong model: record what that saved
                    step.avoided(self.meter.downgrade_saving(usage, cand.model, strong))
                    step.outcome = "routed"
            ex.finish(step)
            return Served(cand, answer.body, usage)
        raise ex.all_failed(last_error)

    async def _cascade(self, ex: Exchange, candidates: list[Candidate], cascade: LogprobCascade) -> Served:
        """The call stage, wrapped: the weak model answers first (with logprobs); escalate when unsure."""
        rc = self.config.routes[ex.body["model"]]
        last_error: Exception | None = None
        declined: Served | None = None
        for i, cand in enumerate(candidates):
            call = {**ex.body, "model": cand.wire_model, "stream": False}
            call.pop("stream_options", None)
            if cand.model == rc.weak:  # some servers (llama.cpp) send logprobs only with top_logprobs set
                call["logprobs"] = True
                call.setdefault("top_logprobs", 1)
            try:
                answer, usage, step = await self._generate(ex, cand, call, i > 0 and declined is None)
            except UpstreamError as exc:
                last_error = exc
                continue
            resp = answer.body
            if cand.model == rc.weak and any(c.model == rc.strong for c in candidates[i + 1 :]):
                accepted, why = cascade.accept(resp)
                step.annotate(route_strategy="cascade", route_reason=why, route_score=mean_logprob(resp))
                if not accepted:  # the weak call is paid all the same: it stays on the request
                    step.outcome = "escalated"
                    ex.finish(step)
                    self.metrics.inc("truecost_cascade_escalations_total", model=cand.model)
                    declined = Served(cand, resp, usage, cacheable=False)  # a declined answer is never reused
                    continue
                step.avoided(self.meter.downgrade_saving(usage, cand.model, rc.strong))
                step.outcome = "routed"
            elif declined is not None:
                step.annotate(route_strategy="cascade", route_reason="escalated from " + declined.cand.model)
            ex.finish(step)
            return Served(cand, resp, usage)
        if declined is not None:  # the escalation failed: the weak answer is better than none
            log.warning(
                "truecost: cascade escalation for %r failed (%s); serving the weak answer", ex.body["model"], last_error
            )
            return declined
        raise ex.all_failed(last_error)

    async def _respond(self, ex: Exchange, served: Served, whole_answer: bool) -> Result:
        body, resp, cand, usage = ex.body, served.body, served.cand, served.usage
        if whole_answer and not body.get("logprobs"):  # asked for by the cascade, not by the client
            for choice in resp.get("choices") or []:
                choice.pop("logprobs", None)
        if served.cacheable and usage is not None and ex.lookup is not None and ex.lookup.key is not None:
            docs = [d.strip() for d in ex.headers.get("x-truecost-doc-ids", "").split(",") if d.strip()]
            try:  # before settle: an LLM judge the store asks is a step of this request (cache_judge.py)
                with judging_for(ex):
                    await asyncio.to_thread(
                        self.cache.store, ex.lookup, resp, usage=usage, model=cand.model, doc_ids=docs
                    )
            except TruecostError as exc:  # not stored this time; the answer still goes out
                log.warning("truecost: cache store skipped: %s", type(exc).__name__)
                self.metrics.inc("truecost_cache_errors_total", op="store")
        cost = ex.req.total if ex.req.unknown == 0 else None
        overhead = (time.perf_counter() - ex.t0) * 1000 - ex.upstream_ms
        self.meter.count(ex.req, cand.model, ex.attribution, overhead)
        resp["model"] = resp.get("model") or cand.model
        if self.config.log_prompts:
            _log_exchange(ex.req.id, body, resp)
        headers = {
            "x-request-id": ex.req.id,
            "x-truecost-cache": "regenerate" if ex.regenerate_of else "miss" if ex.lookup is not None else "bypass",
            "x-truecost-model": cand.model,
            "x-truecost-cost-usd": str(cost) if cost is not None else "unknown",
            "x-truecost-overhead-ms": f"{overhead:.3f}",
        }
        if body.get("stream"):  # a cascade decided on the whole answer: replay it as a stream
            return Result(stream=replay(resp, body, usage), headers=headers)
        return Result(body=resp, headers=headers)

    def _cached(self, ex: Exchange, entry: Any) -> Result:
        req = ex.req
        avoided = ex.avoided()
        self.metrics.inc("truecost_cache_avoided_usd_total", float(avoided))
        headers = {
            "x-request-id": req.id,
            "x-truecost-cache": "hit",
            "x-truecost-model": entry.model or "",
            "x-truecost-cost-usd": str(req.total) if req.unknown == 0 else "unknown",
            "x-truecost-avoided-usd": str(avoided),
            "x-truecost-overhead-ms": f"{(time.perf_counter() - ex.t0) * 1000:.3f}",
        }
        answer = {**entry.answer, "id": f"cached-{req.id}"}
        if ex.body.get("stream"):
            return Result(stream=replay(answer, ex.body), headers=headers)
        answer["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return Result(body=answer, headers=headers)

    # -- stages 2-4 for embeddings ------------------------------------------------------
    async def _serve_embeddings(self, ex: Exchange, candidates: Sequence[Candidate]) -> Result:
        last_error: Exception | None = None
        for cand in candidates:
            upstream = self.upstreams[cand.upstream]
            if not upstream.supports_embeddings:  # declared: nothing is called, nothing is billed
                last_error = UpstreamUnsupported(f"upstream {cand.upstream!r} has no embeddings endpoint")
                continue
            step = ex.step("embed", cand.model)
            try:
                answer = await upstream.embed({**ex.body, "model": cand.wire_model})
            except UpstreamError as exc:
                ex.unknown(step, cand.model, f"upstream error: {exc}", billable=isinstance(exc, UpstreamTimeout))
                ex.finish(step, exc)
                last_error = exc
                continue
            usage = answer.usage if isinstance(answer.usage, dict) else {}
            self.meter.charge(
                ex,
                step,
                cand,
                {"prompt_tokens": usage.get("prompt_tokens")} if usage.get("prompt_tokens") is not None else None,
                None,
            )
            ex.finish(step)
            return Result(
                body=answer.body,
                headers={
                    "x-request-id": ex.req.id,
                    "x-truecost-model": cand.model,
                    "x-truecost-cost-usd": str(ex.req.total) if ex.req.unknown == 0 else "unknown",
                },
            )
        raise ex.all_failed(last_error)


def _log_exchange(request_id: str, body: dict, resp: dict) -> None:
    """Only with ``log_prompts: true``: the last user message and the answer, PII-scrubbed."""
    user = next(
        (
            m.get("content")
            for m in reversed(body.get("messages") or [])
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        "",
    )
    prompt = user if isinstance(user, str) else json.dumps(user)
    log.info(
        "truecost: request %s prompt=%r answer=%r",
        request_id,
        scrub(prompt[:2000])[0],
        scrub(answer_text(resp)[:2000])[0],
    )
