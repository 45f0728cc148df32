"""The Verifier seam: would these two requests get the same answer?

A verifier looks at a pair -- a new request and a stored one, with their vectors and, after a
miss, both answers -- and returns a ``Verdict``: its calibrated probability that one answer
serves both, or ``None`` when it cannot judge that pair (no answers yet, out of budget).
Each verifier declares what it needs and what it costs in ``capabilities``:

* ``QUERIES``  judges from the two requests alone (query-pair model, known classes): the
  cache may ask it at lookup time, about every candidate, before deciding to hit;
* ``ANSWERS``  needs both answers (answer agreement): only after a miss, when the fresh
  answer exists;
* ``BUDGETED`` each verdict costs requests or money (an LLM judge): asked only about the
  one pair the policy learns from, and it abstains when its budget is spent;
* ``FEEDBACK`` verdicts arrive later, about hits already served (client feedback):
  ``SemanticCache.feedback(request_id, correct)``; ``verify`` always abstains.

The policy combines whatever sources are configured with a ``VerifierPanel``
(``truecost.cache.panel``), which weighs each by its measured reliability.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

QUERIES, ANSWERS, BUDGETED, FEEDBACK = "queries", "answers", "budgeted", "feedback"
CAPABILITIES = frozenset({QUERIES, ANSWERS, BUDGETED, FEEDBACK})


@dataclass(frozen=True, slots=True)
class PairView:
    """What a verifier may look at: the new request and a stored one (answers only after a miss)."""

    query: str
    other: str
    vector: np.ndarray | None = None
    other_vector: np.ndarray | None = None
    answer: str | None = None
    other_answer: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    p_same: float  # calibrated probability that one answer serves both requests
    source: str

    @property
    def same(self) -> bool:
        return self.p_same >= 0.5


@runtime_checkable
class Verifier(Protocol):
    name: str
    capabilities: frozenset[str]

    def verify(self, pairs: Sequence[PairView]) -> list[Verdict | None]:
        """One verdict (or None: cannot judge) per pair, in order."""


def answer_text(body: Mapping) -> str:
    try:
        return str(body["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


class _AnswerVerifier:
    """Base of the answer-agreement verifiers: abstain unless both answers are there."""

    capabilities = frozenset({ANSWERS})
    name = "answers"
    p_agree, p_disagree = 0.999, 0.001

    def same(self, answer_a: str, answer_b: str) -> bool:
        raise NotImplementedError

    def verify(self, pairs: Sequence[PairView]) -> list[Verdict | None]:
        return [
            None
            if p.answer is None or p.other_answer is None
            else Verdict(self.p_agree if self.same(p.answer, p.other_answer) else self.p_disagree, self.name)
            for p in pairs
        ]


class NormalisedMatch(_AnswerVerifier):
    """Same answer text after case, whitespace and punctuation are folded: cheap and strict.

    With generated free text two right answers rarely agree word for word, so a disagreement
    is weak evidence (``p_disagree``); with templated answers it is the answer's identity.
    """

    _strip = re.compile(r"[\W_]+", re.UNICODE)

    def __init__(self, p_agree: float = 0.999, p_disagree: float = 0.001) -> None:
        self.p_agree, self.p_disagree = p_agree, p_disagree
        self.name = "answers:normalised"

    def same(self, answer_a: str, answer_b: str) -> bool:
        return self._strip.sub(" ", answer_a.casefold()).strip() == self._strip.sub(" ", answer_b.casefold()).strip()


class EmbeddingMatch(_AnswerVerifier):
    """Cosine similarity of the two answers' embeddings at or above a threshold."""

    def __init__(self, embedder, threshold: float = 0.92, p_agree: float = 0.99, p_disagree: float = 0.01) -> None:
        self.embedder, self.threshold = embedder, threshold
        self.p_agree, self.p_disagree = p_agree, p_disagree
        self.name = f"answers:embedding>={threshold}"

    def same(self, answer_a: str, answer_b: str) -> bool:
        v = self.embedder.embed_batch([answer_a, answer_b])
        return float(np.dot(v[0], v[1])) >= self.threshold


class JudgeMatch(_AnswerVerifier):
    """Any callable judge of two answers (e.g. a model behind an OpenAI-compatible endpoint)."""

    def __init__(self, judge: Callable[[str, str], bool], name: str = "answers:judge") -> None:
        self.judge, self.name = judge, name

    def same(self, answer_a: str, answer_b: str) -> bool:
        return bool(self.judge(answer_a, answer_b))


class KnownClassVerifier:
    """The in-memory verifier: requests whose known class is equal get the same answer.

    ``classes`` maps a request text to its class (an FAQ id, an intent); a text without a class,
    or whose class is in ``never_same`` (e.g. "out of scope"), is never the same as another.
    ``unknown="abstain"`` abstains instead when either text has no class.
    """

    capabilities = frozenset({QUERIES})

    def __init__(
        self,
        classes: Mapping[str, str],
        never_same: Sequence[str] = (),
        unknown: str = "different",
        name: str = "known-class",
        confidence: float = 0.999,
    ) -> None:
        if unknown not in ("different", "abstain"):
            raise ValueError("unknown must be 'different' or 'abstain'")
        self.classes, self.never, self.unknown = classes, frozenset(never_same), unknown
        self.name, self.confidence = name, confidence

    def verify(self, pairs: Sequence[PairView]) -> list[Verdict | None]:
        out: list[Verdict | None] = []
        for p in pairs:
            a, b = self.classes.get(p.query), self.classes.get(p.other)
            if (a is None or b is None) and self.unknown == "abstain":
                out.append(None)
                continue
            same = a is not None and a == b and a not in self.never
            out.append(Verdict(self.confidence if same else 1 - self.confidence, self.name))
        return out


class ClientFeedback:
    """Marks that clients report wrong (and right) hits: ``SemanticCache.feedback(request_id, correct)``.

    It never judges a pair itself (``verify`` abstains); its reports reach the policy as
    observations of hits actually served.
    """

    capabilities = frozenset({FEEDBACK})
    name = "client-feedback"

    def verify(self, pairs: Sequence[PairView]) -> list[Verdict | None]:
        return [None] * len(pairs)


class Budgeted:
    """Wrap a costly verifier (an LLM judge) with a budget: requests per hour and dollars per day.

    ``cost_per_call`` is the price of one verdict in USD (Decimal), or a function of the pair
    giving it (an estimate before the call: an LLM judge's prompt grows with the texts); an
    unknown price (None) with a dollar limit set means no call at all (``refused_unpriced``
    counts them). Within budget, pairs are passed to the wrapped verifier one call each; beyond
    it, it abstains. A call that then fails still counts: the provider may bill it.
    """

    def __init__(
        self,
        inner: Verifier,
        requests_per_hour: int | None = None,
        dollars_per_day: Decimal | None = None,
        cost_per_call: Decimal | Callable[[PairView], Decimal | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner, self.clock = inner, clock
        self.requests_per_hour, self.dollars_per_day, self.cost_per_call = (
            requests_per_hour,
            dollars_per_day,
            cost_per_call,
        )
        self.name = f"budgeted({inner.name})"
        self.capabilities = frozenset(inner.capabilities | {BUDGETED})
        self._calls: list[float] = []
        self._spend: list[tuple[float, Decimal]] = []
        self._lock = threading.Lock()
        self.calls = self.refused = self.refused_unpriced = 0
        self.spent_usd = Decimal(0)

    def _admit(self, pair: PairView) -> bool:
        now = self.clock()
        price = self.cost_per_call(pair) if callable(self.cost_per_call) else self.cost_per_call
        with self._lock:
            self._calls = [t for t in self._calls if t > now - 3600]
            self._spend = [(t, c) for t, c in self._spend if t > now - 86400]
            if self.dollars_per_day is not None and price is None:
                self.refused_unpriced += 1
                return False
            if self.requests_per_hour is not None and len(self._calls) >= self.requests_per_hour:
                self.refused += 1
                return False
            cost = price or Decimal(0)
            if (
                self.dollars_per_day is not None
                and sum((c for _, c in self._spend), Decimal(0)) + cost > self.dollars_per_day
            ):
                self.refused += 1
                return False
            self._calls.append(now)
            self._spend.append((now, cost))
            self.calls += 1
            self.spent_usd += cost
            return True

    def verify(self, pairs: Sequence[PairView]) -> list[Verdict | None]:
        out: list[Verdict | None] = []
        for p in pairs:
            v = self.inner.verify([p])[0] if self._admit(p) else None
            out.append(None if v is None else Verdict(v.p_same, self.name))
        return out
