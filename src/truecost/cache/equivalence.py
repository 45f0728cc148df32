"""Deprecated: the former name of ``truecost.cache.verifier`` (the Verifier seam).

Kept so existing imports (``NormalisedMatch``, ``EmbeddingMatch``, ``JudgeMatch``,
``answer_text``) keep working; import them from ``truecost.cache.verifier``. ``Equivalence``
is now ``Verifier``.
"""

from __future__ import annotations

from truecost.cache.verifier import EmbeddingMatch, JudgeMatch, NormalisedMatch, Verifier, answer_text

Equivalence = Verifier

__all__ = ["Equivalence", "EmbeddingMatch", "JudgeMatch", "NormalisedMatch", "answer_text"]
