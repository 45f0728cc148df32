"""Equivalence checks: are two answers the same answer? (the feedback the online policy learns from)"""

from __future__ import annotations

import re
from typing import Callable, Protocol

import numpy as np


class Equivalence(Protocol):
    def same(self, answer_a: str, answer_b: str) -> bool: ...


def answer_text(body: dict) -> str:
    try:
        return str(body["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


class NormalisedMatch:
    """Same text after case, whitespace and punctuation are folded: cheap and strict."""

    _strip = re.compile(r"[\W_]+", re.UNICODE)

    def same(self, answer_a: str, answer_b: str) -> bool:
        fold = lambda s: self._strip.sub(" ", s.casefold()).strip()  # noqa: E731
        return fold(answer_a) == fold(answer_b)


class EmbeddingMatch:
    """Cosine similarity of the two answers' embeddings at or above a threshold."""

    def __init__(self, embedder, threshold: float = 0.92) -> None:
        self.embedder, self.threshold = embedder, threshold

    def same(self, answer_a: str, answer_b: str) -> bool:
        v = self.embedder.embed_batch([answer_a, answer_b])
        return float(np.dot(v[0], v[1])) >= self.threshold


class JudgeMatch:
    """Any callable judge (e.g. a small model behind an OpenAI-compatible endpoint)."""

    def __init__(self, judge: Callable[[str, str], bool]) -> None:
        self.judge = judge

    def same(self, answer_a: str, answer_b: str) -> bool:
        return bool(self.judge(answer_a, answer_b))
