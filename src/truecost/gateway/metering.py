"""Pricing what the request path used: the upstream's usage on a step, estimates when a stream carried
none, the saving of a cheaper model, cache lookups, and the Prometheus counters of each answer."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

from truecost.errors import TruecostError, UpstreamError
from truecost.gateway.admission import estimated_prompt_tokens
from truecost.gateway.config import Candidate
from truecost.gateway.exchange import Exchange
from truecost.gateway.metrics import Metrics
from truecost.pricing.cost import price_tokens
from truecost.pricing.usage import CallUsage, normalise, normalise_call
from truecost.tracking.cache_accounting import record_cache_lookup
from truecost.tracking.scope import RequestScope, StepScope
from truecost.tracking.tracker import Tracker
from truecost.types import Attribution, TokenUsage
from truecost.upstream.base import NativeUsage, StreamChunk
from truecost.upstream.errors import UpstreamStreamCut, UpstreamTimeout

_USAGE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
CHUNK_ESTIMATE = "prompt: request characters / 4; output: one token per chunk received"


def safe_usage(usage: Any, depth: int = 0) -> Any:
    """The numbers of an upstream usage object, kept for the ledger; never free text an upstream wrote."""
    if isinstance(usage, dict) and depth < 3:
        return {
            k: safe_usage(v, depth + 1)
            for k, v in list(usage.items())[:32]
            if isinstance(k, str) and _USAGE_KEY.fullmatch(k)
        }
    if isinstance(usage, (int, float)) and not isinstance(usage, bool):
        return usage
    return None


@dataclass
class StreamTally:
    """What one streamed call delivered so far: chunks, the last chunk, and the usage the stream reported."""

    chunks: int = 0
    usage: Any = None
    native: NativeUsage | None = None
    last: dict | None = None

    def add(self, chunk: StreamChunk) -> None:
        self.chunks += 1
        self.usage = chunk.usage or self.usage
        self.native = chunk.native_usage or self.native
        self.last = chunk.data

    @property
    def reported(self) -> bool:
        return bool(self.usage or self.native)


class Meter:
    """Prices a request's steps on the tracker and counts its answers in the metrics."""

    def __init__(
        self, tracker: Tracker, metrics: Metrics, price_attributes: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        # per upstream: deployment facts that select a price (region=regional...), see UpstreamConfig
        self.tracker, self.metrics = tracker, metrics
        self.price_attributes = {n: dict(a) for n, a in (price_attributes or {}).items() if a}

    def charge(
        self,
        ex: Exchange,
        step: StepScope,
        cand: Candidate,
        usage: Any,
        native: NativeUsage | None,
        response: Any = None,
    ) -> Any:
        """Price the upstream's usage (with the call's service tier, read from the response, and the upstream's
        configured price attributes); malformed or contradictory usage is recorded as unknown, with its numbers.
        Returns the (OpenAI-shaped) usage that was priced, or None."""
        model = cand.model
        try:
            if native is not None:
                step.tokens(model, self._deployment(normalise_call(native.usage, native.flavour), cand))
            elif usage:
                step.tokens(model, self._deployment(normalise_call(usage, "openai", response=response), cand))
            else:
                ex.unknown(step, model, "upstream response carried no usage")
                return None
        except (TruecostError, TypeError, ValueError, KeyError, AttributeError) as exc:
            ex.unknown(step, model, f"malformed usage from the upstream ({type(exc).__name__}: {str(exc)[:160]})")
            step.annotate(raw_usage=safe_usage(native.usage if native is not None else usage))
            self.metrics.inc("truecost_malformed_usage_total", model=model)
            return None
        return usage

    def _deployment(self, call: CallUsage, cand: Candidate) -> CallUsage:
        """The call with its upstream's configured price attributes; what the response states wins."""
        attrs = self.price_attributes.get(cand.upstream)
        return call if not attrs else dataclasses.replace(call, attributes={**attrs, **call.attributes})

    def estimate(self, ex: Exchange, step: StepScope, model: str, chunks: int) -> None:
        """Some servers (llama.cpp) send no usage in streams: estimate it, and say so on the step."""
        step.tokens(model, TokenUsage(input=estimated_prompt_tokens(ex.body), output=chunks))
        step.annotate(usage_estimated_from_chunks=True, usage_estimate=CHUNK_ESTIMATE)

    def charge_partial(
        self, ex: Exchange, step: StepScope, cand: Candidate, tally: StreamTally, exc: BaseException, hung_up: bool
    ) -> None:
        """A stream that ended early: the provider bills the prompt and what it generated, usage or not."""
        model = cand.model
        if tally.reported:
            self.charge(ex, step, cand, tally.usage, tally.native)
        elif tally.chunks or hung_up or isinstance(exc, UpstreamStreamCut):
            self.estimate(ex, step, model, tally.chunks)
        else:
            why = exc if isinstance(exc, UpstreamError) else type(exc).__name__
            ex.unknown(step, model, f"failed before any output: {why}", billable=isinstance(exc, UpstreamTimeout))
        if hung_up:
            step.annotate(client_disconnected=True)
        ex.finish(step, exc if isinstance(exc, Exception) else RuntimeError("client disconnected"))

    def downgrade_saving(self, usage: Any, served: str, strong: str) -> Decimal | None:
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
            cost = price_tokens(version, tokens, unknown_reason=reason).cost
            if cost is None:
                return None
            costs.append(cost)
        return max(costs[0] - costs[1], Decimal(0))

    def lookup(self, req: RequestScope, lookup: Any) -> Any:
        """Price a cache lookup; return the cached entry on a hit."""
        entry = lookup.entry if lookup.hit else None
        record_cache_lookup(
            req,
            hit=lookup.hit,
            status=lookup.status,
            embed_model=None,
            embed_tokens=0,
            embed_ms=lookup.embed_ms,
            search_ms=lookup.search_ms + lookup.decide_ms,
            answer_model=entry.model if entry else None,
            answer_usage=entry.usage if entry else None,
            similarity=lookup.similarity,
        )
        self.metrics.inc("truecost_cache_lookups_total", status=lookup.status)
        return entry

    def count(self, req: RequestScope, model: str, attribution: Attribution, overhead: float | None) -> None:
        """An answered request in the metrics: its cost per step, its tokens, the gateway's overhead."""
        m = self.metrics
        m.inc("truecost_requests_total", model=model, cost_center=attribution.cost_center or "")
        for e in req.events:
            if e.cost is not None:
                m.inc(
                    "truecost_cost_usd_total",
                    float(e.cost),
                    model=model,
                    step=e.step,
                    cost_center=attribution.cost_center or "",
                )
            tokens = e.details.get("tokens")
            if tokens:
                m.inc("truecost_tokens_total", sum(tokens.values()), model=model)
        if overhead is not None:
            m.observe_overhead(overhead)
