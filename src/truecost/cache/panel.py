"""Combining verifier sources, each weighed by its measured reliability.

A ``VerifierPanel`` holds the configured sources in order of trust (most trusted first: e.g.
client feedback or known classes, then an LLM judge, then answer agreement, then the
query-pair model). For a pair, every source that can judge it gives a probability; the panel
pools them in log-odds, each scaled by its weight:

    logit P(same) = sum_i w_i * logit(p_i)

A source's weight starts at 1 (its own calibration is believed) and is measured online
against the most trusted source that judged the same pair (the reference): with ``n`` pairs
and an observed accuracy ``a`` against the reference, where the source claimed accuracy ``c``
(the mean of max(p, 1 - p) of its verdicts), ``w = clip((2a - 1) / (2c - 1), 0, 1)``,
shrunk toward 1 by ``prior_pairs`` pseudo-pairs. A source that agrees with the reference as
often as it claims keeps full weight; one no better than chance gets none.

Lookup-time sources (``QUERIES`` without ``BUDGETED``) score the candidates before the policy
decides; after a miss, all sources judge the first candidate class (the pair the policy
learns from), budgeted ones included, and the cheap ones judge the other classes too.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Mapping, Sequence, cast

from truecost.cache.verifier import ANSWERS, BUDGETED, FEEDBACK, QUERIES, PairView, Verdict, Verifier


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))


@dataclass
class Reliability:
    """Agreement of one source with the reference, and what it claimed."""

    pairs: int = 0
    agreed: float = 0.0
    claimed: float = 0.0  # sum of max(p, 1 - p)
    prior_pairs: float = 20.0

    def weight(self) -> float:
        if self.pairs == 0:
            return 1.0
        a = self.agreed / self.pairs
        c = max(self.claimed / self.pairs, 0.5 + 1e-6)
        measured = min(1.0, max(0.0, (2 * a - 1) / (2 * c - 1)))
        return (self.prior_pairs + self.pairs * measured) / (self.prior_pairs + self.pairs)

    def as_dict(self) -> dict:
        return {
            "pairs": self.pairs,
            "agreement": self.agreed / self.pairs if self.pairs else None,
            "claimed": self.claimed / self.pairs if self.pairs else None,
            "weight": round(self.weight(), 4),
        }


@dataclass
class PanelVerdict:
    p_same: float
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return self.p_same >= 0.5


class VerifierPanel:
    """Pools the verdicts of the configured sources (most trusted first)."""

    def __init__(self, sources: Sequence[Verifier], prior_pairs: float = 20.0) -> None:
        sources = list(sources)
        for s in sources:
            unknown = set(s.capabilities) - {QUERIES, ANSWERS, BUDGETED, FEEDBACK}
            if unknown or not s.capabilities:
                raise ValueError(f"verifier {s.name!r} declares unknown capabilities {sorted(unknown)}")
        self.sources = sources
        self.reliability = {s.name: Reliability(prior_pairs=prior_pairs) for s in sources}
        self._lock = threading.Lock()

    @property
    def lookup_sources(self) -> list[Verifier]:
        """Sources cheap enough to score every candidate at lookup time."""
        return [s for s in self.sources if QUERIES in s.capabilities and BUDGETED not in s.capabilities]

    @property
    def accepts_feedback(self) -> bool:
        return any(FEEDBACK in s.capabilities for s in self.sources)

    @property
    def judges(self) -> bool:
        """True when some source can judge a pair (not only report on served hits)."""
        return any(s.capabilities - {FEEDBACK} for s in self.sources)

    def pool(self, verdicts: Sequence[Verdict]) -> float:
        with self._lock:
            z = sum(
                self.reliability[v.source].weight() * _logit(v.p_same)
                if v.source in self.reliability
                else _logit(v.p_same)
                for v in verdicts
            )
        return _sigmoid(z)

    def lookup_scores(self, pairs: Sequence[PairView]) -> list[float | None]:
        """Pooled P(same) of the lookup-time sources for each candidate pair (None: no source)."""
        sources = self.lookup_sources
        if not sources or not pairs:
            return [None] * len(pairs)
        per_source = [s.verify(pairs) for s in sources]
        out: list[float | None] = []
        for i in range(len(pairs)):
            vs: list[Verdict] = []
            for verdicts in per_source:
                v = verdicts[i]
                if v is not None:
                    vs.append(v)
            out.append(self.pool(vs) if vs else None)
        return out

    @property
    def budgeted_sources(self) -> list[Verifier]:
        return [s for s in self.sources if BUDGETED in s.capabilities and s.capabilities - {FEEDBACK}]

    def prejudge(self, pair: PairView) -> list[Verdict]:
        """The budgeted sources' verdicts on one pair, asked ahead (an LLM judge may take seconds: the cache
        asks before it takes its lock, then hands them to ``judge(..., budgeted=...)``)."""
        return [v for s in self.budgeted_sources for v in s.verify([pair]) if v is not None]

    def judge(
        self,
        pairs: Sequence[PairView],
        allow_budgeted: bool = True,
        budgeted: Sequence[Sequence[Verdict]] | None = None,
    ) -> list[PanelVerdict | None]:
        """After a miss: every source that can judge the pairs (budgeted ones only if allowed; ``budgeted``:
        their verdicts already asked with ``prejudge``, one list per pair, and they are not asked again)."""
        verdicts: list[list[Verdict]] = [list(budgeted[i]) if budgeted is not None else [] for i in range(len(pairs))]
        for s in self.sources:
            if not s.capabilities - {FEEDBACK} or (
                BUDGETED in s.capabilities and (not allow_budgeted or budgeted is not None)
            ):
                continue
            for i, v in enumerate(s.verify(pairs)):
                if v is not None:
                    verdicts[i].append(v)
        out: list[PanelVerdict | None] = []
        for vs in verdicts:
            if not vs:
                out.append(None)
                continue
            self._measure(vs)
            out.append(PanelVerdict(self.pool(vs), vs))
        return out

    def observe(self, verdicts: Sequence[Verdict], reference_same: bool) -> None:
        """Score each verdict against a truth that arrived later (client feedback on a served hit)."""
        with self._lock:
            for v in verdicts:
                r = self.reliability.get(v.source)
                if r is not None:
                    r.pairs += 1
                    r.agreed += float(v.same == reference_same)
                    r.claimed += max(v.p_same, 1 - v.p_same)

    def _measure(self, verdicts: list[Verdict]) -> None:
        """The most trusted source that spoke is the reference for the others on this pair."""
        order = {s.name: i for i, s in enumerate(self.sources)}
        ranked = sorted(verdicts, key=lambda v: order.get(v.source, len(order)))
        if len(ranked) > 1:
            self.observe(ranked[1:], ranked[0].same)

    def state(self) -> dict:
        with self._lock:
            return {name: r.as_dict() for name, r in self.reliability.items()}


def as_panel(verifier: Verifier | Sequence[Verifier] | VerifierPanel | None) -> VerifierPanel | None:
    if verifier is None or isinstance(verifier, VerifierPanel):
        return verifier
    if isinstance(verifier, (list, tuple)):
        return VerifierPanel(verifier)
    return VerifierPanel([cast(Verifier, verifier)])


# -- configuration: one name -> factory table, used by validation and construction alike ----------
def _embedding_match(arg: str | None, embedder):
    from truecost.cache.verifier import EmbeddingMatch

    return EmbeddingMatch(embedder, float(arg) if arg else 0.92)


def _query_pair(arg: str | None, embedder):
    from truecost.cache.query_verifier import QueryPairVerifier

    return QueryPairVerifier(embedder).check()  # built at start-up: an embedder without a head is refused there


def _normalised(arg: str | None, embedder):
    from truecost.cache.verifier import NormalisedMatch

    return NormalisedMatch()


def _feedback(arg: str | None, embedder):
    from truecost.cache.verifier import ClientFeedback

    return ClientFeedback()


def _supplied(arg: str | None, embedder):
    raise LookupError("built by the composer (an LLM judge needs an upstream): pass it to make_verifiers")


def _cosine_arg(arg: str | None) -> None:
    if arg is not None and not 0 < float(arg) < 1:
        raise ValueError
    return None


def _no_arg(arg: str | None) -> None:
    if arg is not None:
        raise ValueError
    return None


# name -> (argument check, factory(arg, embedder)); a spec lists sources most trusted first, joined by '+'
VERIFIERS = {
    "feedback": (_no_arg, _feedback),  # client reports on served hits
    "normalised": (_no_arg, _normalised),  # answer agreement: the same text after folding
    "embedding": (_cosine_arg, _embedding_match),  # answer agreement: answer embeddings at cosine >= arg (0.92)
    "query": (_no_arg, _query_pair),  # the shipped query-pair verifier, on the cache's embedder
    "judge": (_no_arg, _supplied),  # an LLM judge (truecost.cache.judge), budgeted; the composer supplies it
}


def parse_verifier_spec(spec: str) -> list[tuple[str, str | None]]:
    """'embedding:0.9+query' -> [('embedding', '0.9'), ('query', None)]; ValueError naming what is wrong."""
    out = []
    for part in str(spec).split("+"):
        name, sep, arg = part.strip().partition(":")
        if name not in VERIFIERS:
            raise ValueError(
                f"unknown verifier {name!r} in {spec!r}; sources are {', '.join(VERIFIERS)} "
                "(most trusted first, joined by '+', e.g. 'feedback+embedding:0.9+query')"
            )
        try:
            VERIFIERS[name][0](arg if sep else None)
        except ValueError:
            raise ValueError(f"bad argument {arg!r} for verifier {name!r} in {spec!r}") from None
        out.append((name, arg if sep else None))
    if len({n for n, _ in out}) != len(out):
        raise ValueError(f"a verifier is named twice in {spec!r}")
    return out


def make_verifiers(spec: str, embedder, supplied: Mapping[str, Verifier] | None = None) -> VerifierPanel:
    """The panel a spec names, built on the cache's embedder; ``supplied``: sources built by the composer, by
    name (e.g. ``{"judge": Budgeted(LLMJudge(complete), ...)}``). A name it needs and lacks is a LookupError."""
    supplied = supplied or {}
    sources = []
    for name, arg in parse_verifier_spec(spec):
        if name in supplied:
            sources.append(supplied[name])
        elif VERIFIERS[name][1] is _supplied:
            raise LookupError(f"verifier {name!r} in {spec!r} is not configured")
        else:
            sources.append(VERIFIERS[name][1](arg, embedder))
    return VerifierPanel(sources)
