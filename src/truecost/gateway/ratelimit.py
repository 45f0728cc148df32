"""Per-key requests-per-minute and tokens-per-minute limits: two token buckets per key, in memory.

Each limit is a bucket holding at most one minute's allowance (``rpm`` requests, ``tpm``
tokens), refilled continuously at allowance / 60 per second, full at the start. A key may
therefore burst its whole per-minute allowance at once, then is held to the steady rate;
over any long stretch it gets exactly its limit. A request is admitted only when BOTH
buckets hold enough (1 request, its estimated tokens); nothing is taken from either when it
is refused, and ``RateLimited.retry_after`` is the exact time until both would hold enough.
A request whose estimate alone exceeds ``tpm`` can never pass: ``RateLimited`` with
``retry_after=None`` (answer 429 without ``retry-after``, or 400).

After the call, ``adjust`` corrects the tokens bucket by the difference between the estimate
and the actual usage (a bucket may go into debt -- at most one minute's allowance -- when the
call used more than estimated; the following requests wait it off).

Limits are per replica: with N replicas behind a load balancer a key can get up to N times
its limits. Memory is bounded: at most ``max_keys`` keys are tracked (least recently used
forgotten first, which only ever forgives). ``check`` and ``adjust`` are O(1) and thread-safe.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Callable

_EPSILON = 1e-9


class RateLimited(Exception):
    """429: ``which`` limit (rpm | tpm) is exhausted; retry after ``retry_after`` seconds (None: never)."""

    def __init__(self, which: str, retry_after: float | None, limit: int, requested: int = 1) -> None:
        self.which, self.retry_after, self.limit, self.requested = which, retry_after, limit, requested
        unit = "requests" if which == "rpm" else "tokens"
        if retry_after is None:
            msg = f"this request needs {requested:,} tokens, more than the key's limit of {limit:,} tokens per minute"
        else:
            msg = f"rate limit of {limit:,} {unit} per minute reached; retry in {retry_after:.2f} s"
        super().__init__(msg)

    @property
    def retry_after_header(self) -> str | None:
        """The ``retry-after`` header value: whole seconds, rounded up (at least 1), or None."""
        return None if self.retry_after is None else str(max(1, math.ceil(self.retry_after - _EPSILON)))


class _State:
    __slots__ = ("requests", "tokens", "rpm", "tpm", "at")

    def __init__(self, rpm: int | None, tpm: int | None, at: float) -> None:
        self.rpm, self.tpm, self.at = rpm, tpm, at
        self.requests = float(rpm or 0)
        self.tokens = float(tpm or 0)

    def refill(self, rpm: int | None, tpm: int | None, now: float) -> None:
        elapsed = max(0.0, now - self.at)
        self.at = max(self.at, now)
        if rpm != self.rpm:  # the key's limit changed: a new limit starts full, a lower one caps what is left
            self.requests = float(rpm or 0) if self.rpm is None else min(self.requests, float(rpm or 0))
            self.rpm = rpm
        if tpm != self.tpm:
            self.tokens = float(tpm or 0) if self.tpm is None else min(self.tokens, float(tpm or 0))
            self.tpm = tpm
        if rpm:
            self.requests = min(float(rpm), self.requests + elapsed * rpm / 60.0)
        if tpm:
            self.tokens = min(float(tpm), self.tokens + elapsed * tpm / 60.0)


class RateLimiter:
    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys, self._clock = max_keys, clock
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key_name: str, rpm: int | None, tpm: int | None, tokens: int = 0, now: float | None = None) -> None:
        """Admit one request of ``tokens`` estimated tokens for the key, or raise RateLimited (taking nothing)."""
        if rpm is None and tpm is None:
            return
        if tpm is not None and tokens > tpm:
            raise RateLimited("tpm", None, tpm, tokens)
        now = self._clock() if now is None else now
        with self._lock:
            state = self._states.get(key_name)
            if state is None:
                state = self._states[key_name] = _State(rpm, tpm, now)
                if len(self._states) > self.max_keys:
                    self._states.popitem(last=False)
            else:
                self._states.move_to_end(key_name)
                state.refill(rpm, tpm, now)
            wait_r = (1.0 - state.requests) * 60.0 / rpm if rpm and state.requests < 1.0 - _EPSILON else 0.0
            wait_t = (tokens - state.tokens) * 60.0 / tpm if tpm and state.tokens < tokens - _EPSILON else 0.0
            if wait_r > 0.0 or wait_t > 0.0:
                which = "rpm" if wait_r >= wait_t else "tpm"
                limit = (rpm if which == "rpm" else tpm) or 0  # the one that is waited on is set
                raise RateLimited(which, max(wait_r, wait_t), limit, 1 if which == "rpm" else tokens)
            if rpm:
                state.requests -= 1.0
            if tpm:
                state.tokens -= tokens

    def adjust(self, key_name: str, estimated: int, actual: int, now: float | None = None) -> None:
        """After the call: give back what the estimate overcounted, or take what it missed (debt <= 1 minute)."""
        if estimated == actual:
            return
        with self._lock:
            state = self._states.get(key_name)
            if state is None or not state.tpm:
                return
            state.refill(state.rpm, state.tpm, self._clock() if now is None else now)
            state.tokens = min(float(state.tpm), max(-float(state.tpm), state.tokens + estimated - actual))

    def reset(self, key_name: str) -> None:
        with self._lock:
            self._states.pop(key_name, None)

    def __len__(self) -> int:
        return len(self._states)
