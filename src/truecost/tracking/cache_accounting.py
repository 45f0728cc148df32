"""Price a cache lookup: what it cost (embedding + search) and, on a hit, what it avoided.

Works on plain values so that tracking does not depend on the cache room: the caller
passes the lookup's embedding tokens and timings, and on a hit the stored answer's model
and usage. Net savings = avoided - lookup costs, both summed from the ledger.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Mapping

from truecost.tracking.scope import RequestScope
from truecost.types import TokenUsage


def record_cache_lookup(
    req: RequestScope,
    *,
    hit: bool,
    status: str,
    embed_model: str | None,
    embed_tokens: int,
    embed_ms: float,
    search_ms: float,
    answer_model: str | None = None,
    answer_usage: Mapping[str, Any] | TokenUsage | None = None,
    flavour: str = "openai",
    similarity: float | None = None,
) -> Decimal | None:
    """Record a ``cache_lookup`` step; return the avoided cost of a hit (None if unknown)."""
    with req.step("cache_lookup", status) as s:
        if embed_model and embed_tokens:
            s.tokens(embed_model, TokenUsage(input=embed_tokens), flavour=flavour)
        # Local embedding and in-process search are priced as CPU time on the tracker's compute.
        local_ms = (0.0 if embed_model and embed_tokens else embed_ms) + search_ms
        req.tracker.charge_compute(s, local_ms)
        s.annotate(cache=status, similarity=similarity, embed_ms=round(embed_ms, 3), search_ms=round(search_ms, 3))
        avoided = None
        if hit:
            s.outcome = "cache_hit"
        if hit and answer_model and answer_usage is not None:
            version, reason, _p, _s = req.tracker.price_version(answer_model, None, s._wall_start)
            from truecost.errors import InvalidQuantityError
            from truecost.pricing.cost import price_tokens
            from truecost.pricing.usage import normalise

            try:
                priced = price_tokens(version, normalise(answer_usage, flavour), unknown_reason=reason)
            except InvalidQuantityError as exc:  # the stored answer's usage is missing or malformed: avoided unknown
                s.annotate(avoided_unknown_reason=f"stored usage unusable: {exc}")
                return None
            avoided = priced.cost
            if avoided is None:
                s.annotate(avoided_unknown_reason=priced.unknown_reason)
            s.avoided(avoided)
    return avoided
