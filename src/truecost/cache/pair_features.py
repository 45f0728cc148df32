"""Features of a pair of requests for the query-pair verifier: the embedder's vectors plus cheap lexical cues.

One function builds them for training (``scripts/train_verifier.py``) and at run time
(``truecost.cache.query_verifier``), so the two cannot drift apart. Every feature is symmetric
in the two texts. The lexical cues are what an embedding blurs:

* key terms: content words present on one side only, weighted by how rare they are (inverse
  document frequency from the verifier's training questions) -- "cancel my order" vs "cancel
  my subscription" share everything but the one word that decides the answer;
* numbers and capitalised names (entities) that differ; a negation on one side only;
* the question word ("how" vs "why"), the length ratio, word overlap.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-zA-Z0-9]+|[A-Z]{2,})\b")
NEGATIONS = frozenset(
    {"not", "no", "never", "cannot", "nor", "without", "none", "nothing", "neither", "nobody", "nowhere", "hardly"}
)
QUESTION_WORDS = (
    "how",
    "why",
    "what",
    "when",
    "where",
    "who",
    "which",
    "whom",
    "whose",
    "can",
    "should",
    "is",
    "are",
    "do",
    "does",
    "did",
    "will",
    "would",
    "could",
)
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as into onto about over under
than then so too very i me my mine we us our ours you your yours he him his she her hers it its they them
their theirs this that these those there here is am are was were be been being do does did doing have has
had having can could should would will shall may might must what's it's i'm i've i'd i'll you're we're
they're that's there's let's get got just also still please some any all more most much many such own same
other each few both up down out off again further once only s t""".split()
)
LEXICAL_NAMES = (
    "exact",
    "jaccard",
    "key_overlap",
    "only_a_idf",
    "only_b_idf",
    "only_max_idf",
    "only_min_idf",
    "substitution",
    "unmatched_min",
    "unmatched_max",
    "number_mismatch",
    "number_one_side",
    "entity_mismatch",
    "negation_mismatch",
    "question_word_mismatch",
    "length_ratio",
    "tokens_min",
)


@dataclass(frozen=True, slots=True)
class Tokens:
    folded: str
    content: frozenset[str]
    numbers: frozenset[str]
    entities: frozenset[str]
    negated: bool
    question_word: str
    length: int


def _fold(text: str) -> str:
    return " ".join(_WORD.findall(text.casefold().replace("\u2019", "'")))


@lru_cache(maxsize=65536)
def tokens(text: str) -> Tokens:
    """The lexical view of one text (cached: a cache sees the same stored texts again and again)."""
    words = _WORD.findall(text.casefold().replace("\u2019", "'"))
    negated = sum(1 for w in words if w in NEGATIONS or w.endswith("n't")) % 2 == 1
    numbers = frozenset(w for w in words if any(ch.isdigit() for ch in w))
    content = frozenset(
        w
        for w in words
        if w not in STOPWORDS
        and w not in NEGATIONS
        and not w.endswith("n't")
        and w not in QUESTION_WORDS
        and w not in numbers
    )
    entities = frozenset(m.casefold() for m in _CAPITALISED.findall(text) if m != "I")
    qw = next((w for w in words[:3] if w in QUESTION_WORDS), "")
    return Tokens(" ".join(words), content, numbers, entities, negated, qw, len(words))


class LexicalFeatures:
    """Symmetric lexical features of a text pair, weighted by an IDF table."""

    def __init__(self, idf: Mapping[str, float], unknown_idf: float) -> None:
        self.idf, self.unknown = idf, unknown_idf

    def _w(self, word: str) -> float:
        return self.idf.get(word, self.unknown)

    def pair(self, a: str, b: str) -> np.ndarray:
        ta, tb = tokens(a), tokens(b)
        shared, only_a, only_b = ta.content & tb.content, ta.content - tb.content, tb.content - ta.content
        w_shared = sum(map(self._w, shared))
        w_a, w_b = sum(map(self._w, only_a)), sum(map(self._w, only_b))
        max_a = max(map(self._w, only_a), default=0.0) / self.unknown
        max_b = max(map(self._w, only_b), default=0.0) / self.unknown
        union = len(ta.content | tb.content)
        nums = ta.numbers ^ tb.numbers
        return np.array(
            [
                float(ta.folded == tb.folded),
                len(shared) / union if union else 1.0,
                w_shared / (w_shared + w_a + w_b) if w_shared + w_a + w_b else 1.0,
                min(w_a, w_b) / self.unknown,
                max(w_a, w_b) / self.unknown,
                max(max_a, max_b),
                min(max_a, max_b),
                float(bool(only_a) and bool(only_b) and len(only_a) <= 2 and len(only_b) <= 2 and bool(shared)),
                math.log1p(min(len(only_a), len(only_b))),
                math.log1p(max(len(only_a), len(only_b))),
                float(bool(ta.numbers) and bool(tb.numbers) and bool(nums)),
                float(bool(ta.numbers) != bool(tb.numbers)),
                len(ta.entities ^ tb.entities) / max(1, len(ta.entities | tb.entities)),
                float(ta.negated != tb.negated),
                float(bool(ta.question_word) and bool(tb.question_word) and ta.question_word != tb.question_word),
                abs(math.log((ta.length + 1) / (tb.length + 1))),
                math.log1p(min(ta.length, tb.length)),
            ],
            dtype=np.float32,
        )


FEATURE_NAMES = ("cosine", *LEXICAL_NAMES)


def pair_matrix(
    va: np.ndarray, vb: np.ndarray, texts_a: Sequence[str], texts_b: Sequence[str], lexical: LexicalFeatures
) -> np.ndarray:
    """Rows of [cosine, lexical...] for unit vectors ``va[i]``, ``vb[i]`` and their texts.

    Only features whose meaning does not depend on the training domain: per-dimension vector
    products (u*v, |u-v|) describe the topics of the training questions and did not carry over
    to other traffic, so they are left out (the held-out QQP log-loss was better without them too).
    """
    va = np.asarray(va, dtype=np.float32)
    vb = np.asarray(vb, dtype=np.float32)
    cos = np.einsum("ij,ij->i", va, vb)[:, None]
    lex = (
        np.stack([lexical.pair(a, b) for a, b in zip(texts_a, texts_b)])
        if len(texts_a)
        else np.zeros((0, len(LEXICAL_NAMES)), dtype=np.float32)
    )
    return np.hstack([cos, lex]).astype(np.float32)


def document_frequencies(
    texts: Sequence[str], min_df: int = 2, max_words: int = 30000
) -> tuple[dict[str, float], float]:
    """(IDF of the content words seen in at least ``min_df`` texts, the IDF given to any other word)."""
    df: dict[str, int] = {}
    for t in texts:
        for w in tokens(t).content:
            df[w] = df.get(w, 0) + 1
    n = len(texts)
    kept = sorted((w for w, c in df.items() if c >= min_df), key=lambda w: (-df[w], w))[:max_words]
    unknown = math.log((n + 1) / (min_df - 0.5 + 1)) + 1.0 if kept else 1.0
    return {w: math.log((n + 1) / (df[w] + 1)) + 1.0 for w in kept}, unknown
