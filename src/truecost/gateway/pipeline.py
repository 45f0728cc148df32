"""The request path, as one function testable without HTTP.

parse -> attribution -> budget -> route (alias candidates) -> call with fallbacks ->
price every step -> ledger (batch writer, off the hot path) -> response headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, AsyncIterator, Mapping

from truecost.errors import ConfigError, TruecostError, UpstreamError
from truecost.gateway.budgets import BudgetExceeded, BudgetGuard, BudgetUnavailable
from truecost.gateway.config import GatewayConfig, KeyConfig
from truecost.gateway.metrics import Metrics
from truecost.pricing.cost import price_tokens, strong_call_premium
from truecost.routing.cascade import LogprobCascade, mean_logprob
from truecost.routing.decision import RouteRequest
from truecost.routing.rules import RulesRouter
from truecost.tracking.scope import RequestScope, StepScope
from truecost.tracking.tracker import Tracker
from truecost.types import Attribution, TokenUsage
from truecost.upstream.errors import UpstreamHTTPError, UpstreamStreamCut


log = logging.getLogger("truecost.gateway")


class GatewayError(Exception):
    """An error with an OpenAI-shaped body and an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": None}}


@dataclass
class Result:
    body: dict | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


def validate_chat(body: Any) -> None:
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise GatewayError(400, "'model' must be a non-empty string", code="invalid_model")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise GatewayError(400, "'messages' must be a non-empty array")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise GatewayError(400, f"messages[{i}] must be an object with a 'role'")
        if "content" in m and not isinstance(m["content"], (str, list, type(None))):
            raise GatewayError(400, f"messages[{i}].content must be a string, an array of parts, or null")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise GatewayError(400, "'stream' must be a boolean")
    mt = body.get("max_tokens")
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
        raise GatewayError(400, "'max_tokens' must be a positive integer")


def attribution_for(key: KeyConfig | None, headers: Mapping[str, str]) -> Attribution:
    tags = {}
    for part in (headers.get("x-truecost-tags") or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            tags[k.strip()] = v.strip()
    base = Attribution(cost_center=key.cost_center if key else None, team=key.team if key else None,
                       tenant=key.tenant if key else None, environment=key.environment if key else None)
    return base.merged(cost_center=headers.get("x-truecost-cost-center"), feature=headers.get("x-truecost-feature"),
                       tags=tags)


def load_router_artifact(path):
    """A saved prompt scorer with the embedder it was trained with (answer-aware scorers need a weak answer
    first, so they cannot decide before the call)."""
    from truecost.routing.scorer import GapScorer

    scorer = GapScorer.load(path)
    if scorer.spec.answer:
        raise TruecostError(f"{path}: an answer-aware (cascade) scorer needs the weak model's answer; "
                            "route requests with a prompt scorer (`truecost router calibrate --kind trained`)")
    if scorer.spec.embed:
        from truecost.cache.embedders import make_embedder

        wanted = scorer.meta.get("embedder") or ""
        scorer.embedder = make_embedder("minilm" if "all-MiniLM" in wanted else "static")
        if scorer.embedder.model_id != wanted:
            raise TruecostError(f"{path}: trained with embedder {wanted!r}, which this install does not have")
    return scorer


def _strong_premium(tracker: Tracker, r, meta: Mapping[str, Any]):
    """request -> expected extra dollars of the strong call (prices in force now, the artifact's
    mean output lengths); None when a price is missing, and the router then keeps the strong model."""
    outputs = meta.get("mean_output_tokens") or {}
    out_weak, out_strong = int(outputs.get("weak") or 1), int(outputs.get("strong") or 1)
    for model in (r.weak, r.strong):
        if tracker.price_version(model, None, tracker.clock.now())[0] is None:
            raise ConfigError(f"{r.artifact}: ranks requests by gain per dollar, but {model!r} has no price in "
                              "force; add it to the catalog or calibrate with --order gap")

    def premium(request: RouteRequest) -> float | None:
        at = tracker.clock.now()
        weak, strong = (tracker.price_version(m, None, at)[0] for m in (r.weak, r.strong))
        tokens = request.context_tokens or request.prompt_tokens or len(request.text) // 4 + 1
        extra = strong_call_premium(weak, strong, tokens, out_weak, out_strong)
        return None if extra is None else float(extra)

    return premium


def _make_router(r, tracker: Tracker):
    """A rules router, or a trained prompt scorer behind its calibrated threshold (loaded at startup)."""
    if r.strategy != "trained":
        return RulesRouter(r.weak, r.strong, r.max_weak_tokens)
    from truecost.routing.scorer import ScoredRouter, ShareHolder

    try:
        scorer = load_router_artifact(r.artifact)
    except TruecostError as exc:
        raise ConfigError(str(exc)) from None
    threshold = r.threshold if r.threshold is not None else scorer.meta.get("threshold")
    if threshold is None:
        raise ConfigError(f"{r.artifact}: no calibrated threshold in the artifact; set route.threshold or "
                          "save it with `truecost router calibrate ... --out`")
    extra_cost = _strong_premium(tracker, r, scorer.meta) if scorer.meta.get("order") == "gain-per-dollar" else None
    hold = None
    if r.hold == "share":
        share = scorer.meta.get("strong_share")
        if share is None:
            raise ConfigError(f"{r.artifact}: hold: share needs the calibrated strong-call share; save the artifact "
                              "with `truecost router calibrate ... --out`")
        hold = ShareHolder(float(share), float(threshold), window=r.share_window)
    return ScoredRouter(scorer, r.weak, r.strong, float(threshold), extra_cost=extra_cost, hold=hold)


class Pipeline:
    def __init__(self, config: GatewayConfig, tracker: Tracker, upstreams: Mapping[str, Any],
                 metrics: Metrics | None = None, cache=None) -> None:
        self.config, self.tracker, self.upstreams, self.cache = config, tracker, upstreams, cache
        self.metrics = metrics or Metrics()
        self.budgets = BudgetGuard(config.budgets)
        self.routers = {alias: _make_router(r, tracker) for alias, r in config.routes.items() if r.strategy != "cascade"}
        self.cascades = {alias: LogprobCascade(r.min_mean_logprob) for alias, r in config.routes.items()
                         if r.strategy == "cascade"}

    async def _budget_call(self, fn, *args):
        """In-process budgets answer inline; a shared (PostgreSQL) guard does network I/O, so it runs in a
        worker thread and a slow or unreachable database never stalls the event loop for other requests."""
        if getattr(self.budgets, "remote", False):
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def _estimate(self, model: str, body: dict) -> Decimal:
        """A conservative cost estimate for budget admission: prompt chars / 3 in, max_tokens (or 1,024) out."""
        chars = len(json.dumps(body.get("messages")))
        usage = TokenUsage(input=chars // 3 + 1, output=int(body.get("max_tokens") or 1024))
        version, reason, _p, _s = self.tracker.price_version(model, None, self.tracker.clock.now())
        priced = price_tokens(version, usage, unknown_reason=reason)
        return priced.cost if priced.cost is not None else Decimal(0)

    async def chat(self, body: Any, key: KeyConfig | None, headers: Mapping[str, str]) -> Result:
        t0 = time.perf_counter()
        validate_chat(body)
        candidates = self.config.models.get(body["model"])
        if candidates is None:
            raise GatewayError(404, f"unknown model {body['model']!r}; this gateway serves: "
                                    f"{', '.join(sorted(self.config.models))}", code="model_not_found")
        attribution = attribution_for(key, headers)
        candidates, route = self._route(body, candidates, headers)
        cascade = self.cascades.get(body["model"])
        if cascade is not None:  # the weak model answers first; the strong one only on low confidence
            rc = self.config.routes[body["model"]]
            rank = {rc.weak: 0, rc.strong: 1}
            candidates = sorted(candidates, key=lambda c: rank.get(c.model, 2))
        estimate = self._estimate(candidates[0].model, body) if self.config.budgets else Decimal(0)
        try:
            budget_keys = await self._budget_call(self.budgets.admit, attribution, estimate)
        except BudgetExceeded as exc:
            self.metrics.inc("truecost_budget_refusals_total", cost_center=attribution.cost_center or "")
            raise GatewayError(429, str(exc), "budget_exceeded", "budget_exceeded") from None
        except BudgetUnavailable as exc:  # cannot check the budget: refuse rather than overspend
            raise GatewayError(503, f"{exc}; retry later", "service_unavailable", "budget_store_unavailable") from None
        if self.budgets.alerts:  # soft budgets passed: visible in metrics and the log, never silent
            for alert in self.budgets.alerts:
                log.warning("truecost: %s", alert)
                self.metrics.inc("truecost_budget_alerts_total")
            self.budgets.alerts.clear()
        req = self.tracker.request(headers.get("x-request-id"), attribution)
        self.tracker.open_request(req)
        lookup = None
        if self.cache is not None and headers.get("x-truecost-cache", "").lower() != "bypass":
            try:
                lookup = await asyncio.to_thread(self.cache.lookup, body, attribution.tenant)
            except TruecostError as exc:  # the cache's store is down: answer from upstream, say so in metrics
                log.warning("truecost: cache lookup skipped: %s", exc)
                self.metrics.inc("truecost_cache_errors_total", op="lookup")
                lookup = None
        if lookup is not None:
            hit = self._record_lookup(req, lookup)
            if hit is not None:
                await self._budget_call(self.budgets.settle, budget_keys, estimate, req.total if req.unknown == 0 else None)
                self.tracker.close_request(req, None)
                return self._cached(req, body, hit, lookup, t0)
        if body.get("stream") and cascade is None:
            return Result(stream=self._stream(req, body, candidates, budget_keys, estimate, t0),
                          headers={"x-request-id": req.id, "x-truecost-cache": "bypass"})
        upstream_ms = 0.0
        last_error: Exception | None = None
        escalated = None  # (candidate, answer, usage) of a weak answer the cascade declined
        try:
            for i, cand in enumerate(candidates):
                step = StepScope(req, "generate", cand.model).begin()
                t_up = time.perf_counter()
                call = {**body, "model": cand.wire_model}
                if cascade is not None:  # decide on a whole answer; a stream is replayed from it
                    call.pop("stream_options", None)
                    call["stream"] = False
                    if cand.model == rc.weak:  # some servers (llama.cpp) send logprobs only with top_logprobs set
                        call["logprobs"] = True
                        call.setdefault("top_logprobs", 1)
                try:
                    resp = await self.upstreams[cand.upstream].complete(call)
                except UpstreamError as exc:
                    upstream_ms += (time.perf_counter() - t_up) * 1000
                    step.cost(None, service=cand.model, reason=f"upstream error: {exc}")
                    step.finish(exc)
                    self.metrics.inc("truecost_upstream_errors_total", model=cand.model)
                    last_error = exc
                    continue
                call_ms = (time.perf_counter() - t_up) * 1000
                upstream_ms += call_ms
                usage = resp.get("usage")
                native = resp.pop("_truecost_usage", None)  # the provider's own usage and counting rules
                if native:
                    step.tokens(cand.model, native["usage"], flavour=native["flavour"])
                elif usage:
                    step.tokens(cand.model, usage)
                else:
                    step.cost(None, service=cand.model, reason="upstream response carried no usage")
                if cand.self_hosted:
                    self.tracker.charge_compute(step, call_ms)
                step.annotate(upstream=cand.upstream, fallback=cand is not candidates[0] and escalated is None)
                if (cascade is not None and cand.model == rc.weak
                        and any(c.model == rc.strong for c in candidates[i + 1:])):
                    accepted, why = cascade.accept(resp)
                    step.annotate(route_strategy="cascade", route_reason=why, route_score=mean_logprob(resp))
                    if not accepted:  # the weak call is paid all the same: it stays on the request
                        step.outcome = "escalated"
                        step.finish()
                        self.metrics.inc("truecost_cascade_escalations_total", model=cand.model)
                        escalated = (cand, resp, usage)
                        continue
                    step.avoided(self._downgrade_saving(usage, cand.model, rc.strong))
                    step.outcome = "routed"
                if cascade is not None and escalated is not None:
                    step.annotate(route_strategy="cascade", route_reason="escalated from " + escalated[0].model)
                if route is not None:
                    strong = self.config.routes[body["model"]].strong
                    step.annotate(route_strategy=route.strategy, route_reason=route.reason, route_score=route.score)
                    if cand.model != strong:  # served below the strong model: record what that saved
                        step.avoided(self._downgrade_saving(usage, cand.model, strong))
                        step.outcome = "routed"
                step.finish()
                return await self._respond(req, body, lookup, headers, attribution, cand, resp, usage, t0, upstream_ms,
                                           cascade is not None)
            if escalated is not None:  # the escalation failed: the weak answer is better than none
                cand, resp, usage = escalated
                log.warning("truecost: cascade escalation for %r failed (%s); serving the weak answer",
                            body["model"], last_error)
                return await self._respond(req, body, lookup, headers, attribution, cand, resp, usage, t0, upstream_ms,
                                           True, cacheable=False)  # a declined answer is never reused
            status = last_error.status if isinstance(last_error, UpstreamHTTPError) and last_error.status < 500 else 502
            raise GatewayError(status, f"every candidate for {body['model']!r} failed; last error: {last_error}",
                               "upstream_error", "upstream_failed", {"x-request-id": req.id})
        finally:
            await self._budget_call(self.budgets.settle, budget_keys, estimate, req.total if req.unknown == 0 else None)
            self.tracker.close_request(req, None)

    async def _respond(self, req, body, lookup, headers, attribution, cand, resp, usage, t0, upstream_ms,
                       whole_answer: bool, cacheable: bool = True) -> Result:
        if whole_answer and not body.get("logprobs"):  # asked for by the cascade, not by the client
            for choice in resp.get("choices") or []:
                choice.pop("logprobs", None)
        if cacheable and lookup is not None and lookup.key is not None:
            docs = [d.strip() for d in headers.get("x-truecost-doc-ids", "").split(",") if d.strip()]
            try:
                await asyncio.to_thread(self.cache.store, lookup, resp, usage=usage, model=cand.model, doc_ids=docs)
            except TruecostError as exc:  # not stored this time; the answer still goes out
                log.warning("truecost: cache store skipped: %s", exc)
                self.metrics.inc("truecost_cache_errors_total", op="store")
        cost = req.total if req.unknown == 0 else None
        overhead = (time.perf_counter() - t0) * 1000 - upstream_ms
        self._count(req, cand.model, attribution, overhead)
        resp["model"] = resp.get("model") or cand.model
        if self.config.log_prompts:
            self._log_exchange(req.id, body, resp)
        out_headers = {"x-request-id": req.id, "x-truecost-cache": "miss" if lookup is not None else "bypass",
                       "x-truecost-model": cand.model, "x-truecost-cost-usd": str(cost) if cost is not None else "unknown",
                       "x-truecost-overhead-ms": f"{overhead:.3f}"}
        if body.get("stream"):  # a cascade decided on the whole answer: replay it as a stream
            from truecost.cache.replay import replay_chunks

            include = bool((body.get("stream_options") or {}).get("include_usage"))

            async def gen():
                for chunk in replay_chunks(resp, include_usage=include, usage=usage):
                    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
            return Result(stream=gen(), headers=out_headers)
        return Result(body=resp, headers=out_headers)

    async def embeddings(self, body: Any, key: KeyConfig | None, headers: Mapping[str, str]) -> Result:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise GatewayError(400, "'model' must be a non-empty string", code="invalid_model")
        inp = body.get("input")
        if not (isinstance(inp, str) or (isinstance(inp, list) and inp and all(isinstance(x, (str, int, list)) for x in inp))):
            raise GatewayError(400, "'input' must be a string or a non-empty array")
        candidates = self.config.models.get(body["model"])
        if candidates is None:
            raise GatewayError(404, f"unknown model {body['model']!r}", code="model_not_found")
        req = self.tracker.request(headers.get("x-request-id"), attribution_for(key, headers))
        last_error: Exception | None = None
        for cand in candidates:
            step = StepScope(req, "embed", cand.model).begin()
            try:
                resp = await self.upstreams[cand.upstream].embed({**body, "model": cand.wire_model})
            except UpstreamError as exc:
                step.cost(None, service=cand.model, reason=f"upstream error: {exc}")
                step.finish(exc)
                last_error = exc
                continue
            usage = resp.get("usage") or {}
            if usage.get("prompt_tokens") is not None:
                step.tokens(cand.model, {"prompt_tokens": usage["prompt_tokens"]})
            else:
                step.cost(None, service=cand.model, reason="upstream response carried no usage")
            step.finish()
            return Result(body=resp, headers={"x-request-id": req.id, "x-truecost-model": cand.model,
                                              "x-truecost-cost-usd": str(req.total) if req.unknown == 0 else "unknown"})
        raise GatewayError(502, f"every candidate for {body['model']!r} failed; last error: {last_error}",
                           "upstream_error", "upstream_failed", {"x-request-id": req.id})

    def _route(self, body: dict, candidates, headers):
        """Reorder an alias's candidates by its router's decision (weak first or strong first)."""
        router = self.routers.get(body["model"])
        if router is None:
            return candidates, None
        text = next((m.get("content") for m in reversed(body["messages"])
                     if m.get("role") == "user" and isinstance(m.get("content"), str)), "") or ""
        prompt_chars = sum(len(m["content"]) for m in body["messages"] if isinstance(m.get("content"), str))
        decision = router.route(RouteRequest(
            text, None, {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-truecost")},
            context_tokens=prompt_chars // 4 + 1))
        rank = {m: i for i, m in enumerate(decision.candidates)}
        ordered = sorted(candidates, key=lambda c: rank.get(c.model, len(rank)))
        self.metrics.inc("truecost_route_decisions_total", model=decision.model)
        return ordered, decision

    def _downgrade_saving(self, usage, served: str, strong: str) -> Decimal | None:
        """What the same tokens would have cost on the strong model, minus what they cost on the one that served."""
        if not usage:
            return None
        from truecost.pricing.usage import normalise

        at = self.tracker.clock.now()
        tokens = normalise(usage, "openai")
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

    def _cached(self, req: RequestScope, body: dict, entry, lookup, t0: float) -> Result:
        from truecost.cache.replay import replay_chunks

        avoided = sum((e.avoided_cost for e in req.events if e.avoided_cost is not None), Decimal(0))
        self.metrics.inc("truecost_cache_avoided_usd_total", float(avoided))
        headers = {"x-request-id": req.id, "x-truecost-cache": "hit", "x-truecost-model": entry.model or "",
                   "x-truecost-cost-usd": str(req.total) if req.unknown == 0 else "unknown",
                   "x-truecost-avoided-usd": str(avoided),
                   "x-truecost-overhead-ms": f"{(time.perf_counter() - t0) * 1000:.3f}"}
        answer = {**entry.answer, "id": f"cached-{req.id}"}
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))

            async def gen():
                for chunk in replay_chunks(answer, include_usage=include):
                    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
            return Result(stream=gen(), headers=headers)
        answer["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return Result(body=answer, headers=headers)

    def _count(self, req: RequestScope, model: str, attribution: Attribution, overhead: float) -> None:
        m = self.metrics
        m.inc("truecost_requests_total", model=model, cost_center=attribution.cost_center or "")
        for e in req.events:
            if e.cost is not None:
                m.inc("truecost_cost_usd_total", float(e.cost), model=model, step=e.step,
                      cost_center=attribution.cost_center or "")
            tokens = e.details.get("tokens")
            if tokens:
                m.inc("truecost_tokens_total", sum(tokens.values()), model=model)
        m.observe_overhead(overhead)

    async def _stream(self, req: RequestScope, body: dict, candidates, budget_keys, estimate, t0) -> AsyncIterator[bytes]:
        """SSE bytes. Fallback only before the first chunk; a cut afterwards ends with an error event."""
        sent_any = False
        last_error: Exception | None = None
        try:
            for cand in candidates:
                step = StepScope(req, "generate", cand.model).begin()
                t_up = time.perf_counter()
                usage = None
                chunks = 0
                upstream_stream = self.upstreams[cand.upstream].stream({**body, "model": cand.wire_model})
                try:
                    native = None
                    async for chunk in upstream_stream:
                        chunks += 1
                        usage = chunk.get("usage") or usage
                        native = chunk.pop("_truecost_usage", None) or native
                        if chunk.get("usage") and not chunk.get("choices") and not (
                                body.get("stream_options") or {}).get("include_usage"):
                            continue  # the caller did not ask for the usage chunk
                        sent_any = True
                        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                except UpstreamError as exc:
                    last_error = exc
                    self._charge_partial(step, cand.model, usage, chunks, exc)
                    if sent_any or isinstance(exc, UpstreamStreamCut):
                        err = GatewayError(502, f"upstream stream failed mid-way: {exc}", "upstream_error", "stream_cut")
                        yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
                        return
                    continue
                except BaseException as exc:  # the client went away: charge what was consumed
                    self._charge_partial(step, cand.model, usage, chunks, exc)
                    raise
                finally:
                    await upstream_stream.aclose()  # closes the upstream response: the upstream call is cancelled
                if native:
                    step.tokens(cand.model, native["usage"], flavour=native["flavour"])
                elif usage:
                    step.tokens(cand.model, usage)
                else:  # some servers (llama.cpp) send no usage in streams: estimate, and say so
                    step.tokens(cand.model, TokenUsage(input=len(json.dumps(body["messages"])) // 4, output=chunks))
                    step.annotate(usage_estimated_from_chunks=True)
                if cand.self_hosted:
                    self.tracker.charge_compute(step, (time.perf_counter() - t_up) * 1000)
                step.annotate(streamed_chunks=chunks, upstream=cand.upstream)
                step.finish()
                self._count(req, cand.model, req.attribution, 0.0)
                yield b"data: [DONE]\n\n"
                return
            err = GatewayError(502, f"every candidate for {body['model']!r} failed; last error: {last_error}",
                               "upstream_error", "upstream_failed")
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
        finally:
            await self._budget_call(self.budgets.settle, budget_keys, estimate, req.total if req.unknown == 0 else None)
            self.tracker.close_request(req, None)

    def _charge_partial(self, step: StepScope, model: str, usage, chunks: int, exc: BaseException) -> None:
        if usage:
            step.tokens(model, usage)
        elif chunks:
            # Tokens were consumed but the usage chunk never came: one content chunk ~ one token.
            step.tokens(model, TokenUsage(output=chunks))
            step.annotate(usage_estimated_from_chunks=True)
        else:
            step.cost(None, service=model, reason=f"failed before any output: {type(exc).__name__}")
        step.finish(exc if isinstance(exc, Exception) else RuntimeError("client disconnected"))
