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
import dataclasses
import functools
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from truecost.errors import InvalidAttributionError, TruecostError, UpstreamError
from truecost.gateway.admission import (Admission, Estimate, attribution_for, estimate, estimated_prompt_tokens,
                                        own_attribution)
from truecost.gateway.budgets import BudgetExceeded, BudgetGuard, BudgetUnavailable, BudgetUnpriced
from truecost.gateway.config import Candidate, GatewayConfig
from truecost.gateway.errors import GatewayError
from truecost.gateway.metrics import Metrics
from truecost.gateway.ratelimit import RateLimited
from truecost.gateway.planning import load_router_artifact, make_router, plan  # noqa: F401  (re-exported)
from truecost.gateway.validation import validate_chat, validate_embeddings
from truecost.pricing.cost import price_tokens
from truecost.pricing.usage import CallUsage, normalise, normalise_call
from truecost.routing.cascade import LogprobCascade, mean_logprob
from truecost.tracking.scope import RequestScope, StepScope
from truecost.tracking.tracker import Tracker
from truecost.types import ZERO, Attribution, TokenUsage
from truecost.upstream.errors import UpstreamAuthError, UpstreamHTTPError, UpstreamStreamCut, UpstreamTimeout

log = logging.getLogger("truecost.gateway")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_USAGE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

__all__ = ["GatewayError", "Pipeline", "Result", "attribution_for", "load_router_artifact"]


@dataclass
class Result:
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

    def step(self, kind: str, name: str | None) -> StepScope:
        s = StepScope(self.req, kind, name).begin()
        if self.client_id:
            s.annotate(client_request_id=self.client_id)
        self.open_steps.append(s)
        return s

    def finish(self, step: StepScope, exc: BaseException | None = None) -> None:
        if step in self.open_steps:
            self.open_steps.remove(step)
            step.finish(exc)

    def unknown(self, step: StepScope, model: str, reason: str, billable: bool = True) -> None:
        """A cost we cannot know; if the provider may bill it, the budget is charged the admission estimate."""
        step.cost(None, service=model, reason=reason)
        if billable:
            step.annotate(budget_charge_usd=str(self.admission.estimate))


@dataclass
class Served:
    cand: Any
    resp: dict
    usage: Any
    cacheable: bool = True


def _safe_usage(usage: Any, depth: int = 0) -> Any:
    """The numbers of an upstream usage object, kept for the ledger; never free text an upstream wrote."""
    if isinstance(usage, dict) and depth < 3:
        return {k: _safe_usage(v, depth + 1) for k, v in list(usage.items())[:32]
                if isinstance(k, str) and _USAGE_KEY.fullmatch(k)}
    if isinstance(usage, (int, float)) and not isinstance(usage, bool):
        return usage
    return None


class Pipeline:
    def __init__(self, config: GatewayConfig, tracker: Tracker, upstreams: Mapping[str, Any],
                 metrics: Metrics | None = None, cache=None, budgets=None, limiter=None) -> None:
        self.config, self.tracker, self.upstreams, self.cache = config, tracker, upstreams, cache
        self.metrics = metrics or Metrics()
        self.budgets = budgets if budgets is not None else BudgetGuard(config.budgets)
        self.limiter = limiter
        self.routers = {alias: make_router(r, tracker) for alias, r in config.routes.items() if r.strategy != "cascade"}
        self.cascades = {alias: LogprobCascade(r.min_mean_logprob) for alias, r in config.routes.items()
                         if r.strategy == "cascade"}
        # per upstream: deployment facts that select a price (region=regional...), see UpstreamConfig
        self.price_attributes = {n: dict(u.price_attributes) for n, u in config.upstreams.items() if u.price_attributes}

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
    def _candidates(self, alias: str, key: Any):
        candidates = self.config.models.get(alias)
        if candidates is None:
            raise GatewayError(404, f"unknown model {alias[:200]!r}; this gateway serves: "
                                    f"{', '.join(sorted(self._visible(key)))}", code="model_not_found", param="model")
        if key is not None and key.models is not None and alias not in key.models:
            raise GatewayError(403, f"API key {key.name!r} may not use model {alias!r}", "permission_error",
                               "model_not_allowed", param="model")
        return candidates

    def _visible(self, key: Any) -> list[str]:
        return [a for a in self.config.models if key is None or key.models is None or a in key.models]

    async def admit(self, body: dict, key: Any, headers: Mapping[str, str], models: list[str], t0: float,
                    output_tokens: int | None = None) -> Exchange:
        try:
            attribution = attribution_for(key, headers, on_ignored=lambda f: self.metrics.inc(
                "truecost_attribution_headers_ignored_total", field=f))
        except InvalidAttributionError as exc:  # a tag or feature header the ledger cannot store faithfully
            raise GatewayError(400, f"attribution header refused: {exc}", code="invalid_attribution") from None
        limited = key is not None and self.limiter is not None and (key.rpm or key.tpm)
        est = (estimate(self.tracker, body, models, output_tokens) if (self.config.budgets or limited)
               else Estimate(ZERO, 0))
        if limited:
            try:
                self.limiter.check(key.name, key.rpm, key.tpm, est.tokens, time.time())
            except RateLimited as exc:
                self.metrics.inc("truecost_rate_limited_total", limit=exc.which)
                headers = {"retry-after": exc.retry_after_header} if exc.retry_after_header else {}
                raise GatewayError(429, f"API key {key.name!r}: {exc}", "rate_limit_error", "rate_limited",
                                   headers) from None
        admission = Admission(estimate=est.cost, tokens=est.tokens, key_name=key.name if limited else None)
        try:
            own = own_attribution(key)
            attributions = [attribution] if own is None or own is attribution else [own, attribution]
            admission.budget_keys = await self._budget_call(functools.partial(
                self.budgets.admit, attributions, est.cost, unpriced_model=est.unpriced))
        except BudgetExceeded as exc:
            self._release_tokens(admission)
            self.metrics.inc("truecost_budget_refusals_total", cost_center=attribution.cost_center or "")
            raise GatewayError(429, str(exc), "budget_exceeded", "budget_exceeded") from None
        except BudgetUnpriced as exc:
            self._release_tokens(admission)
            raise GatewayError(403, str(exc), "budget_exceeded", "unpriced_model") from None
        except BudgetUnavailable as exc:  # cannot check the budget: refuse rather than overspend
            self._release_tokens(admission)
            raise GatewayError(503, f"{exc}; retry later", "service_unavailable", "budget_store_unavailable") from None
        if self.budgets.alerts:  # soft budgets passed: visible in metrics and the log, never silent
            for alert in self.budgets.alerts:
                log.warning("truecost: %s", alert)
                self.metrics.inc("truecost_budget_alerts_total")
            self.budgets.alerts.clear()
        client_id = headers.get("x-request-id")
        client_id = client_id if client_id and _CLIENT_ID.fullmatch(client_id) else None
        joins = client_id is not None and (key is None or "request_id" in key.allow_attribution_headers)
        # unguessable (128 random bits); the client's id only for a key trusted to join its own request
        req = self.tracker.request(client_id if joins else os.urandom(16).hex(), attribution, source="gateway")
        self.tracker.open_request(req)
        scope = (f"tenant:{attribution.tenant}" if attribution.tenant else
                 f"key:{key.name}" if key is not None else "anonymous")
        return Exchange(body, key, headers, attribution, req, admission, scope, t0, None if joins else client_id)

    def _release_tokens(self, admission: Admission, actual: int = 0) -> None:
        if admission.key_name is not None:
            self.limiter.adjust(admission.key_name, admission.tokens, actual)

    async def _budget_call(self, fn: Callable[[], Any]) -> Any:
        """In-process budgets answer inline; a shared (PostgreSQL) guard does network I/O, so it runs in a
        worker thread and a slow or unreachable database never stalls the event loop for other requests."""
        if getattr(self.budgets, "remote", False):
            return await asyncio.to_thread(fn)
        return fn()

    # -- stage 5: settle (exactly once, for every admitted request) ------------------------
    async def settle(self, ex: Exchange) -> None:
        if ex.admission.settled:
            return
        ex.admission.settled = True
        try:
            for step in list(ex.open_steps):  # interrupted mid-call: the provider may bill it, so it is recorded
                if not step._charges:
                    ex.unknown(step, step.name or "", "interrupted before the upstream answered")
                ex.finish(step, RuntimeError("interrupted"))
            if ex.admission.budget_keys:  # only budgeted requests pay for the sums below
                charged = sum((Decimal(e.details["budget_charge_usd"]) for e in ex.req.events
                               if e.cost is None and e.details.get("budget_charge_usd") is not None), ZERO)
                await self._budget_call(functools.partial(self.budgets.settle, ex.admission.budget_keys,
                                                          ex.admission.estimate, ex.req.total + charged))
        finally:
            if ex.admission.key_name is not None:
                used = sum(sum(e.details.get("tokens", {}).values()) for e in ex.req.events if e.step == "generate")
                self._release_tokens(ex.admission, used)
            self.tracker.close_request(ex.req, None)

    # -- stages 2-4 for chat ------------------------------------------------------------
    async def _serve_chat(self, ex: Exchange, candidates, route, cascade) -> Result:
        if self.cache is not None and ex.headers.get("x-truecost-cache", "").lower() != "bypass":
            try:
                ex.lookup = await asyncio.to_thread(self.cache.lookup, ex.body, ex.scope)
            except TruecostError as exc:  # the cache's store is down: answer from upstream, say so in metrics
                log.warning("truecost: cache lookup skipped: %s", type(exc).__name__)
                self.metrics.inc("truecost_cache_errors_total", op="lookup")
        if ex.lookup is not None:
            hit = self._record_lookup(ex.req, ex.lookup)
            if hit is not None:
                return self._cached(ex, hit)
        if ex.body.get("stream") and cascade is None:
            return Result(stream=self._stream(ex, candidates),
                          headers={"x-request-id": ex.req.id, "x-truecost-cache": "bypass"})
        if cascade is not None:
            served = await self._cascade(ex, candidates, cascade)
        else:
            served = await self._call(ex, candidates, route)
        return await self._respond(ex, served, whole_answer=cascade is not None)

    async def _generate(self, ex: Exchange, cand, call: dict, fallback: bool) -> tuple[dict, Any, StepScope]:
        """One upstream call as a `generate` step (left open for the caller to annotate and finish)."""
        step = ex.step("generate", cand.model)
        t_up = time.perf_counter()
        try:
            resp = await self.upstreams[cand.upstream].complete(call)
        except UpstreamError as exc:
            ex.upstream_ms += (time.perf_counter() - t_up) * 1000
            # a timed-out call may still be billed; a refused one is not
            ex.unknown(step, cand.model, f"upstream error: {exc}", billable=isinstance(exc, UpstreamTimeout))
            ex.finish(step, exc)
            self.metrics.inc("truecost_upstream_errors_total", model=cand.model)
            raise
        call_ms = (time.perf_counter() - t_up) * 1000
        ex.upstream_ms += call_ms
        usage = self._charge(ex, step, cand, resp.get("usage"), resp.pop("_truecost_usage", None), resp)
        if cand.self_hosted:
            self.tracker.charge_compute(step, call_ms)
        step.annotate(upstream=cand.upstream, fallback=fallback)
        return resp, usage, step

    def _charge(self, ex: Exchange, step: StepScope, cand: Candidate, usage: Any, native: Any,
                response: Any = None) -> Any:
        """Price the upstream's usage (with the call's service tier, read from the response, and the upstream's
        configured price attributes); malformed or contradictory usage is recorded as unknown, with its numbers."""
        model = cand.model
        try:
            if native:
                step.tokens(model, self._deployment(normalise_call(native["usage"], native["flavour"]), cand))
            elif usage:
                step.tokens(model, self._deployment(normalise_call(usage, "openai", response=response), cand))
            else:
                ex.unknown(step, model, "upstream response carried no usage")
                return None
        except (TruecostError, TypeError, ValueError, KeyError, AttributeError) as exc:
            ex.unknown(step, model, f"malformed usage from the upstream ({type(exc).__name__}: {str(exc)[:160]})")
            step.annotate(raw_usage=_safe_usage(native.get("usage") if isinstance(native, dict) else usage))
            self.metrics.inc("truecost_malformed_usage_total", model=model)
            return None
        return usage

    def _deployment(self, call: CallUsage, cand: Candidate) -> CallUsage:
        """The call with its upstream's configured price attributes; what the response states wins."""
        attrs = self.price_attributes.get(cand.upstream)
        return call if not attrs else dataclasses.replace(call, attributes={**attrs, **call.attributes})

    async def _call(self, ex: Exchange, candidates, route) -> Served:
        last_error: Exception | None = None
        for i, cand in enumerate(candidates):
            try:
                resp, usage, step = await self._generate(ex, cand, {**ex.body, "model": cand.wire_model}, i > 0)
            except UpstreamError as exc:
                last_error = exc
                continue
            if route is not None:
                strong = self.config.routes[ex.body["model"]].strong
                step.annotate(route_strategy=route.strategy, route_reason=route.reason, route_score=route.score)
                if cand.model != strong:  # served below the strong model: record what that saved
                    step.avoided(self._downgrade_saving(usage, cand.model, strong))
                    step.outcome = "routed"
            ex.finish(step)
            return Served(cand, resp, usage)
        raise self._all_failed(ex, last_error)

    async def _cascade(self, ex: Exchange, candidates, cascade) -> Served:
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
                resp, usage, step = await self._generate(ex, cand, call, i > 0 and declined is None)
            except UpstreamError as exc:
                last_error = exc
                continue
            if cand.model == rc.weak and any(c.model == rc.strong for c in candidates[i + 1:]):
                accepted, why = cascade.accept(resp)
                step.annotate(route_strategy="cascade", route_reason=why, route_score=mean_logprob(resp))
                if not accepted:  # the weak call is paid all the same: it stays on the request
                    step.outcome = "escalated"
                    ex.finish(step)
                    self.metrics.inc("truecost_cascade_escalations_total", model=cand.model)
                    declined = Served(cand, resp, usage, cacheable=False)  # a declined answer is never reused
                    continue
                step.avoided(self._downgrade_saving(usage, cand.model, rc.strong))
                step.outcome = "routed"
            elif declined is not None:
                step.annotate(route_strategy="cascade", route_reason="escalated from " + declined.cand.model)
            ex.finish(step)
            return Served(cand, resp, usage)
        if declined is not None:  # the escalation failed: the weak answer is better than none
            log.warning("truecost: cascade escalation for %r failed (%s); serving the weak answer",
                        ex.body["model"], last_error)
            return declined
        raise self._all_failed(ex, last_error)

    def _all_failed(self, ex: Exchange, last_error: Exception | None) -> GatewayError:
        headers = {"x-request-id": ex.req.id}
        if isinstance(last_error, UpstreamAuthError):  # our credentials, not the client's
            return GatewayError(502, f"every candidate for {ex.body['model']!r} failed: the gateway's own credentials "
                                     "for the upstream were refused (an operator must fix the upstream API key)",
                                "upstream_error", "upstream_auth_failed", headers)
        status = last_error.status if isinstance(last_error, UpstreamHTTPError) and 400 <= last_error.status < 500 else 502
        if status == 429 and getattr(last_error, "retry_after", None):
            headers["retry-after"] = str(max(1, int(last_error.retry_after + 0.999)))
        return GatewayError(status, f"every candidate for {ex.body['model']!r} failed; last error: {last_error}",
                            "upstream_error", "upstream_failed", headers)

    async def _respond(self, ex: Exchange, served: Served, whole_answer: bool) -> Result:
        body, resp, cand, usage = ex.body, served.resp, served.cand, served.usage
        if whole_answer and not body.get("logprobs"):  # asked for by the cascade, not by the client
            for choice in resp.get("choices") or []:
                choice.pop("logprobs", None)
        if served.cacheable and usage is not None and ex.lookup is not None and ex.lookup.key is not None:
            docs = [d.strip() for d in ex.headers.get("x-truecost-doc-ids", "").split(",") if d.strip()]
            try:
                await asyncio.to_thread(self.cache.store, ex.lookup, resp, usage=usage, model=cand.model, doc_ids=docs)
            except TruecostError as exc:  # not stored this time; the answer still goes out
                log.warning("truecost: cache store skipped: %s", type(exc).__name__)
                self.metrics.inc("truecost_cache_errors_total", op="store")
        cost = ex.req.total if ex.req.unknown == 0 else None
        overhead = (time.perf_counter() - ex.t0) * 1000 - ex.upstream_ms
        self._count(ex.req, cand.model, ex.attribution, overhead)
        resp["model"] = resp.get("model") or cand.model
        if self.config.log_prompts:
            self._log_exchange(ex.req.id, body, resp)
        headers = {"x-request-id": ex.req.id, "x-truecost-cache": "miss" if ex.lookup is not None else "bypass",
                   "x-truecost-model": cand.model, "x-truecost-cost-usd": str(cost) if cost is not None else "unknown",
                   "x-truecost-overhead-ms": f"{overhead:.3f}"}
        if body.get("stream"):  # a cascade decided on the whole answer: replay it as a stream
            return Result(stream=self._replay(resp, body, usage), headers=headers)
        return Result(body=resp, headers=headers)

    @staticmethod
    async def _replay(answer: dict, body: dict, usage: Any = None) -> AsyncIterator[bytes]:
        from truecost.cache.replay import replay_chunks

        include = bool((body.get("stream_options") or {}).get("include_usage"))
        for chunk in replay_chunks(answer, include_usage=include, usage=usage):
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    # -- stages 2-4 for embeddings ------------------------------------------------------
    async def _serve_embeddings(self, ex: Exchange, candidates) -> Result:
        last_error: Exception | None = None
        for cand in candidates:
            step = ex.step("embed", cand.model)
            try:
                resp = await self.upstreams[cand.upstream].embed({**ex.body, "model": cand.wire_model})
            except UpstreamError as exc:
                ex.unknown(step, cand.model, f"upstream error: {exc}", billable=isinstance(exc, UpstreamTimeout))
                ex.finish(step, exc)
                last_error = exc
                continue
            usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
            self._charge(ex, step, cand, {"prompt_tokens": usage.get("prompt_tokens")}
                         if usage.get("prompt_tokens") is not None else None, None)
            ex.finish(step)
            return Result(body=resp, headers={"x-request-id": ex.req.id, "x-truecost-model": cand.model,
                                              "x-truecost-cost-usd": str(ex.req.total) if ex.req.unknown == 0 else "unknown"})
        raise self._all_failed(ex, last_error)

    # -- the streaming call stage -----------------------------------------------------------
    async def _stream(self, ex: Exchange, candidates) -> AsyncIterator[bytes]:
        """SSE bytes. Fallback only before the first chunk; a cut afterwards ends with an error event."""
        sent_any = False
        last_error: Exception | None = None
        want_usage = bool((ex.body.get("stream_options") or {}).get("include_usage"))
        try:
            before_upstream_ms: float | None = None  # a stream's overhead: the gateway's time before the first call
            for i, cand in enumerate(candidates):
                step = ex.step("generate", cand.model)
                t_up = time.perf_counter()
                if before_upstream_ms is None:
                    before_upstream_ms = (t_up - ex.t0) * 1000
                got = {"usage": None, "native": None, "chunks": 0, "last": None}
                upstream_stream = self.upstreams[cand.upstream].stream({**ex.body, "model": cand.wire_model})
                try:
                    async for chunk in upstream_stream:
                        got["chunks"] += 1
                        got["usage"] = chunk.get("usage") or got["usage"]
                        got["native"] = chunk.pop("_truecost_usage", None) or got["native"]
                        got["last"] = chunk
                        if chunk.get("usage") and not chunk.get("choices") and not want_usage:
                            continue  # the caller did not ask for the usage chunk
                        sent_any = True
                        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                except UpstreamError as exc:
                    last_error = exc
                    self._charge_partial(ex, step, cand, got, exc, hung_up=False)
                    if sent_any or isinstance(exc, UpstreamStreamCut):
                        err = GatewayError(502, f"upstream stream failed mid-way: {exc}", "upstream_error", "stream_cut")
                        yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
                        return
                    continue
                except BaseException as exc:  # the client went away (or we were cancelled): charge what was used
                    self._charge_partial(ex, step, cand, got, exc, hung_up=True)
                    raise
                finally:
                    await upstream_stream.aclose()  # closes the upstream response: the upstream call is cancelled
                if got["usage"] or got["native"]:
                    self._charge(ex, step, cand, got["usage"], got["native"], got["last"])
                else:  # some servers (llama.cpp) send no usage in streams: estimate, and say so
                    self._estimate_usage(ex, step, cand.model, got["chunks"])
                if cand.self_hosted:
                    self.tracker.charge_compute(step, (time.perf_counter() - t_up) * 1000)
                step.annotate(streamed_chunks=got["chunks"], upstream=cand.upstream, fallback=i > 0)
                ex.finish(step)
                self._count(ex.req, cand.model, ex.attribution, before_upstream_ms)
                yield b"data: [DONE]\n\n"
                return
            err = self._all_failed(ex, last_error)
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
        finally:
            await self.settle(ex)

    def _estimate_usage(self, ex: Exchange, step: StepScope, model: str, chunks: int) -> None:
        step.tokens(model, TokenUsage(input=estimated_prompt_tokens(ex.body), output=chunks))
        step.annotate(usage_estimated_from_chunks=True,
                      usage_estimate="prompt: request characters / 4; output: one token per chunk received")

    def _charge_partial(self, ex: Exchange, step: StepScope, cand: Candidate, got: dict, exc: BaseException,
                        hung_up: bool) -> None:
        """A stream that ended early: the provider bills the prompt and what it generated, usage or not."""
        model = cand.model
        if got["usage"] or got["native"]:
            self._charge(ex, step, cand, got["usage"], got["native"])
        elif got["chunks"] or hung_up or isinstance(exc, UpstreamStreamCut):
            self._estimate_usage(ex, step, model, got["chunks"])
        else:
            ex.unknown(step, model, f"failed before any output: {exc}" if isinstance(exc, UpstreamError)
                       else f"failed before any output: {type(exc).__name__}", billable=isinstance(exc, UpstreamTimeout))
        if hung_up:
            step.annotate(client_disconnected=True)
        ex.finish(step, exc if isinstance(exc, Exception) else RuntimeError("client disconnected"))

    # -- helpers --------------------------------------------------------------------------
    def _downgrade_saving(self, usage, served: str, strong: str) -> Decimal | None:
        """What the same tokens would have cost on the strong model, minus what they cost on the one that served."""
        if not usage:
            return None
        at = self.tracker.clock.now()
        try:
            tokens = normalise(usage, "openai")
        except (TruecostError, TypeError, ValueError):
            return None
        costs = []
        for model in (strong, served):
            version, reason, _p, _s = self.tracker.price_version(model, None, at)
            costs.append(price_tokens(version, tokens, unknown_reason=reason).cost)
        if None in costs:
            return None
        return max(costs[0] - costs[1], Decimal(0))

    def _record_lookup(self, req: RequestScope, lookup):
        """Price the lookup; return the cached entry on a hit."""
        from truecost.tracking.cache_accounting import record_cache_lookup

        entry = lookup.entry if lookup.hit else None
        record_cache_lookup(req, hit=lookup.hit, status=lookup.status, embed_model=None, embed_tokens=0,
                            embed_ms=lookup.embed_ms, search_ms=lookup.search_ms + lookup.decide_ms,
                            answer_model=entry.model if entry else None, answer_usage=entry.usage if entry else None,
                            similarity=lookup.similarity)
        self.metrics.inc("truecost_cache_lookups_total", status=lookup.status)
        return entry

    @staticmethod
    def _log_exchange(request_id: str, body: dict, resp: dict) -> None:
        """Only with ``log_prompts: true``: the last user message and the answer, PII-scrubbed."""
        from truecost.cache.equivalence import answer_text
        from truecost.pii import scrub

        user = next((m.get("content") for m in reversed(body.get("messages") or [])
                     if isinstance(m, dict) and m.get("role") == "user"), "")
        prompt = user if isinstance(user, str) else json.dumps(user)
        log.info("truecost: request %s prompt=%r answer=%r", request_id, scrub(prompt[:2000])[0],
                 scrub(answer_text(resp)[:2000])[0])

    def _cached(self, ex: Exchange, entry) -> Result:
        req = ex.req
        avoided = sum((e.avoided_cost for e in req.events if e.avoided_cost is not None), Decimal(0))
        self.metrics.inc("truecost_cache_avoided_usd_total", float(avoided))
        headers = {"x-request-id": req.id, "x-truecost-cache": "hit", "x-truecost-model": entry.model or "",
                   "x-truecost-cost-usd": str(req.total) if req.unknown == 0 else "unknown",
                   "x-truecost-avoided-usd": str(avoided),
                   "x-truecost-overhead-ms": f"{(time.perf_counter() - ex.t0) * 1000:.3f}"}
        answer = {**entry.answer, "id": f"cached-{req.id}"}
        if ex.body.get("stream"):
            return Result(stream=self._replay(answer, ex.body), headers=headers)
        answer["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return Result(body=answer, headers=headers)

    def _count(self, req: RequestScope, model: str, attribution: Attribution, overhead: float | None) -> None:
        m = self.metrics
        m.inc("truecost_requests_total", model=model, cost_center=attribution.cost_center or "")
        for e in req.events:
            if e.cost is not None:
                m.inc("truecost_cost_usd_total", float(e.cost), model=model, step=e.step,
                      cost_center=attribution.cost_center or "")
            tokens = e.details.get("tokens")
            if tokens:
                m.inc("truecost_tokens_total", sum(tokens.values()), model=model)
        if overhead is not None:
            m.observe_overhead(overhead)
