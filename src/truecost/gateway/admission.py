"""Stage 1 of the request path: who pays (the trust model), how much may this cost, may it run.

Trust model: a virtual key's cost center, team, tenant and environment are authoritative.
Client headers may add ``x-truecost-feature`` and ``x-truecost-tags``; they may set another
attribution field only when the key lists it in ``allow_attribution_headers``. Headers a key
may not set are ignored (and counted), never an error, so a client cannot probe them. With no
keys configured (development mode) every header is believed. Budgets match the key's own
attribution and the billed one alike, so an allowed header adds a budget, never removes one.

The admission estimate is deliberately high: prompt characters / 3 (messages, tools,
functions, response format), plus ``max_tokens`` (or the model's maximum output, else
``DEFAULT_MAX_OUTPUT``) for each of ``n`` choices, priced at the dearest candidate.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping, Sequence

from truecost.gateway.config import ATTRIBUTION_HEADER_FIELDS
from truecost.pricing.cost import price_tokens
from truecost.types import ZERO, Attribution, TokenUsage

DEFAULT_MAX_OUTPUT = 8_192  # output tokens assumed when neither the request nor the catalog bounds them
PROMPT_FIELDS = ("messages", "tools", "functions", "response_format", "tool_choice", "input")


def attribution_for(key: Any, headers: Mapping[str, str], on_ignored=None) -> Attribution:
    """The attribution a request is billed to: the key's, plus what the key lets headers add."""
    tags = {}
    for part in (headers.get("x-truecost-tags") or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            if k.strip():
                tags[k.strip()] = v.strip()
    if key is None:  # development mode: no keys configured
        allowed: Sequence[str] = ATTRIBUTION_HEADER_FIELDS
        base = _EMPTY
    else:
        allowed = key.allow_attribution_headers
        base = _key_attribution(key.cost_center, key.team, key.tenant, key.environment)
    overrides = {}
    for f in ATTRIBUTION_HEADER_FIELDS:
        value = headers.get("x-truecost-" + f.replace("_", "-"))
        if value is None:
            continue
        if f in allowed and value.strip():
            overrides[f] = value.strip()
        elif on_ignored is not None:
            on_ignored(f)
    feature = (headers.get("x-truecost-feature") or "").strip() or None
    if feature is None and not tags and not overrides:
        return base
    return base.merged(feature=feature, tags=tags, **overrides)


_EMPTY = Attribution()


@functools.lru_cache(maxsize=4096)
def _key_attribution(cost_center, team, tenant, environment) -> Attribution:
    return Attribution(cost_center=cost_center, team=team, tenant=tenant, environment=environment)


def own_attribution(key: Any) -> Attribution | None:
    if key is None:
        return None
    return _key_attribution(key.cost_center, key.team, key.tenant, key.environment)


def prompt_chars(body: Mapping[str, Any]) -> int:
    return sum(len(json.dumps(body[f], ensure_ascii=False)) for f in PROMPT_FIELDS if body.get(f) is not None)


def estimated_prompt_tokens(body: Mapping[str, Any]) -> int:
    """What a provider bills for a prompt we could not count exactly: characters / 4 (flagged estimated)."""
    return prompt_chars(body) // 4 + 1


def output_bound(body: Mapping[str, Any], version) -> int:
    """The most output tokens this request can be billed for: max tokens x n choices."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if not limit and version is not None:
        limit = (version.attributes or {}).get("max_output_tokens")
    return int(limit or DEFAULT_MAX_OUTPUT) * int(body.get("n") or 1)


@dataclass
class Estimate:
    cost: Decimal  # what admission holds against budgets
    tokens: int  # what admission counts against a tokens-per-minute limit
    unpriced: str | None = None  # a candidate model without a price, if any


def estimate(tracker, body: Mapping[str, Any], models: Sequence[str], output_tokens: int | None = None) -> Estimate:
    """A conservative estimate: prompt chars / 3 in, the output bound out, at the dearest candidate's prices
    (``output_tokens=0`` for calls that bill input only, such as embeddings)."""
    prompt = prompt_chars(body) // 3 + 1
    at = tracker.clock.now()
    worst, unpriced, out_tokens = ZERO, None, 0
    for model in dict.fromkeys(models):
        version, reason, _p, _s = tracker.price_version(model, None, at)
        out = output_bound(body, version) if output_tokens is None else output_tokens
        out_tokens = max(out_tokens, out)
        cost = price_tokens(version, TokenUsage(input=prompt, output=out), unknown_reason=reason).cost
        if cost is None:
            unpriced = unpriced or model
        else:
            worst = max(worst, cost)
    return Estimate(worst, prompt + out_tokens, unpriced)


@dataclass
class Admission:
    """What admission reserved for one request; released exactly once by ``Pipeline.settle``."""

    budget_keys: list = field(default_factory=list)
    estimate: Decimal = ZERO  # the request's own calls: what an unknown billable cost of it is charged
    reserve: Decimal = ZERO  # held beside it for the cache judge its miss may ask (charged only by a judge call)
    tokens: int = 0
    key_name: str | None = None
    settled: bool = False
