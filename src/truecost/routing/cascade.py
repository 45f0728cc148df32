"""Cascades: call the weak model first, accept its answer when a confidence signal passes.

Signals: the mean token log-probability of the weak answer (from an upstream that returns
logprobs, such as `truecost local-model`), or an answer-aware ``GapScorer`` (see
``scorer.FeatureSpec(answer=True)``). The weak call is always paid: a cascade's cost is the
weak call for every request plus the strong call for every escalation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


def mean_logprob(response: dict[str, Any]) -> float | None:
    """Mean token log-probability of an OpenAI-shaped response's first choice (None without logprobs)."""
    try:
        content = response["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    values = [t["logprob"] for t in content or [] if isinstance(t, dict) and t.get("logprob") is not None]
    return float(np.mean(values)) if values else None


@dataclass
class LogprobCascade:
    """Accept the weak answer when its mean token log-probability >= threshold."""

    threshold: float

    def accept(self, response: dict[str, Any]) -> tuple[bool, str]:
        lp = mean_logprob(response)
        if lp is None:
            return False, "no logprobs in the weak answer: escalate"
        if lp >= self.threshold:
            return True, f"mean logprob {lp:.3f} >= {self.threshold:.3f}"
        return False, f"mean logprob {lp:.3f} < {self.threshold:.3f}: escalate"

    @classmethod
    def calibrate(
        cls,
        logprobs: Sequence[float],
        weak_good: Sequence[bool],
        max_escalation: float | None = None,
        min_accepted_precision: float | None = None,
    ) -> "LogprobCascade":
        """Pick the threshold on labelled weak answers: escalate at most a share, or keep accepted answers precise."""
        lp = np.asarray(logprobs, dtype=float)
        good = np.asarray(weak_good, dtype=bool)
        if len(lp) == 0 or len(lp) != len(good):
            raise ValueError("need one label per logprob, and at least one")
        order = np.argsort(-lp)  # accept the most confident first
        if max_escalation is not None:
            k = int(np.ceil((1 - max_escalation) * len(lp)))
            return cls(float(lp[order][k - 1]) if k > 0 else float("inf"))
        if min_accepted_precision is not None:
            precision = np.cumsum(good[order]) / np.arange(1, len(lp) + 1)
            ok = np.nonzero(precision >= min_accepted_precision)[0]
            return cls(float(lp[order][ok.max()]) if len(ok) else float("inf"))
        raise ValueError("give max_escalation or min_accepted_precision")
