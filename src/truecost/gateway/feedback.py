"""Client feedback on cache hits: ``POST /v1/cache/feedback``.

A key says whether a hit it was served was wrong or right, naming the ``x-request-id`` the
gateway returned with it: ``{"request_id": "...", "correct": false}`` (or ``"verdict": "wrong"``).

* A key reports only on hits served to that same key (the cache remembers each hit with its
  owner: ``owner_of``), each hit once. An unknown id, another key's id, an id already reported
  and a miss all get the same 404 ``unknown_request``: the cache looks hits up by key and id
  together, so there is nothing to tell them apart by, not even time.
* "wrong" always reaches the policy; "right" only with ``cache.feedback.accept_right`` (the
  policy is shared: clients calling every hit right must not make it answer more for everyone).
* A report passes the key's request rate limit, never its budgets: it changes nothing anyone pays.
* Every report is a count in ``truecost_cache_feedback_total{verdict, outcome}`` and, accepted or
  refused, an audit row (action ``cache.feedback``, the request id as target); refused ones at most
  30 a minute per key and replica (the next row written counts those left out), so no key can bury
  the admin rows under its guesses.

Hits are remembered per replica (up to 10,000; when full, the key holding the most forgets its oldest):
a report must reach the replica that answered.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable, Mapping

from truecost.gateway.admin import _FailureGate
from truecost.gateway.errors import GatewayError
from truecost.gateway.exchange import Result


VERDICTS = {"wrong": False, "right": True}
FIELDS = ("request_id", "correct", "verdict")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # the ids the gateway returns (and accepts from clients)
UNKNOWN_REQUEST = (
    "no cache hit was served to this key under that request id "
    "(unknown, not a hit, already reported, or no longer remembered)"
)


def owner_of(key: Any) -> str:
    """Who a hit is served to, and so who may report on it: the key (``anonymous`` in development mode)."""
    return f"key:{key.name}" if key is not None else "anonymous"


def parse_feedback(body: Any) -> tuple[str, bool]:
    """``(request id, correct)`` from a report, or a 400 naming the field at fault (never echoing its value)."""
    if not isinstance(body, dict):
        raise GatewayError(400, 'request body must be a JSON object: {"request_id": "...", "correct": false}')
    unknown = sorted(str(k) for k in body if k not in FIELDS)
    if unknown:
        raise GatewayError(
            400,
            f"unknown field {unknown[0][:64]!r}; a report has request_id and correct (or verdict)",
            param=unknown[0],
        )
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise GatewayError(400, "request_id: the x-request-id the gateway returned with the hit", param="request_id")
    if "correct" in body and "verdict" in body:
        raise GatewayError(400, "send correct or verdict, not both", param="verdict")
    if "verdict" in body:
        verdict = body["verdict"]
        if not isinstance(verdict, str) or verdict not in VERDICTS:
            raise GatewayError(400, 'verdict must be "wrong" or "right"', param="verdict")
        return request_id, VERDICTS[verdict]
    correct = body.get("correct")
    if not isinstance(correct, bool):
        raise GatewayError(400, 'correct must be true or false (or send verdict: "wrong" | "right")', param="correct")
    return request_id, correct


class FeedbackDesk:
    """The handler of ``POST /v1/cache/feedback``: checks, rate limit, the cache's report, metrics and audit."""

    def __init__(self, pipeline: Any, audit: Callable[..., Any] | None = None) -> None:
        self.pipeline, self.audit = pipeline, audit
        self._gates: dict[str, _FailureGate] = {}  # refused reports' audit rows, per key (keys are few)

    async def __call__(self, body: Any, key: Any, headers: Mapping[str, str]) -> Result:
        cache, settings = self.pipeline.cache, self.pipeline.config.cache.feedback
        if cache is None:
            raise GatewayError(409, "the cache is not enabled: there are no hits to report on", code="cache_disabled")
        if not settings.enabled:
            raise GatewayError(409, "client feedback is off (cache.feedback.enabled: false)", code="feedback_disabled")
        request_id, correct = parse_feedback(body)
        self.pipeline.check_rate(key)
        panel = cache.verifiers
        report = await asyncio.to_thread(
            cache.report,
            request_id,
            correct,
            owner=owner_of(key),
            learn=not correct or settings.accept_right,
            # both verdicts believed, and client reports named as a verifier source: they may score the others
            score_verifiers=settings.accept_right and panel is not None and panel.accepts_feedback,
        )
        verdict = "right" if correct else "wrong"
        if report is None:
            self._count(verdict, "unknown_request")
            skipped = self._gates.setdefault(owner_of(key), _FailureGate()).admit()
            if skipped is not None:
                details = {"verdict": verdict, **({"rows_skipped_before": skipped} if skipped else {})}
                await self._audit(key, request_id, details, "refused:unknown_request")
            raise GatewayError(404, UNKNOWN_REQUEST, code="unknown_request", param="request_id")
        self._count(verdict, "learned" if report.learned else "recorded")
        answer = {
            "accepted": True,
            "request_id": request_id,
            "verdict": verdict,
            "cache": report.status,  # hit_semantic | hit_exact
            "learned": report.learned,  # passed to the cache's policy
        }
        await self._audit(key, request_id, {k: answer[k] for k in ("verdict", "cache", "learned")}, "ok")
        return Result(body=answer)

    def _count(self, verdict: str, outcome: str) -> None:
        self.pipeline.metrics.inc("truecost_cache_feedback_total", verdict=verdict, outcome=outcome)

    async def _audit(self, key: Any, request_id: str, details: dict, outcome: str) -> None:
        if self.audit is not None:
            actor = owner_of(key)
            await asyncio.to_thread(
                self.audit, actor, "cache.feedback", request_id, {**details, "request_id": request_id}, outcome
            )
