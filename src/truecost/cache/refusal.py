"""Refusals and safety messages written as plain text: never stored in the cache.

A model that declines ("I'm sorry, but I can't help with that.") usually answers with
``finish_reason: "stop"`` and ordinary content; the structured ``refusal`` field some
providers set catches only part of them. Stored, such an answer would be served to every
later paraphrase in its scope — one unlucky refusal becomes everybody's answer.

How it decides: the first ``window`` characters (default 200) of the answer are folded
(lower case, curly apostrophes straightened, whitespace collapsed) and each pattern — a
regular expression, matched case-insensitively anywhere in that window — is searched for.
A match means "do not store". Patterns are written against the folded text, so use
straight apostrophes and single spaces.

Precision choice: the default patterns are first-person statements of inability or
unwillingness tied to what an assistant does ("i can't help", "i cannot assist",
"i'm unable to", "sorry, but i can't", "as an ai", "i must decline", "violates the content
policy"), never a lone "sorry", "unfortunately" or "cannot". So "Sorry for the wait, here
is your tracking number" and "I'm sorry to hear your parcel is late; here is how to get a
refund" are stored, and "I can't help but notice" is not taken for a refusal. An answer that
declines part of a request within its first 200 characters ("I can't provide legal advice,
but in general ...") is not stored either: a false positive costs one cache entry (a later
identical question pays for a fresh answer), a false negative serves a refusal to everyone
in the scope, so among phrasings that are refusals the list leans to recall. A refusal that
begins after the window is not seen (bounded work on long answers). English only.

Configure with ``SemanticCache(..., refusal_patterns=[...])`` (``None`` disables the detector).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

_CANT = r"(?:can't|cannot|can not|won't|will not)"
_UNABLE = r"(?:i'm|i am) (?:unable|not able|not allowed|not permitted)"

DEFAULT_PATTERNS: tuple[str, ...] = (
    # "I can't help with that", "I cannot assist", "I won't provide" (but not "I can't help but ...")
    rf"\bi {_CANT} (?:help|assist|provide|comply|fulfil|fulfill|support|answer|engage|create|generate|give|share"
    r"|write|produce|discuss|continue|do that|do this)\b(?! but\b)",
    # "I'm unable to", "I am not able to", "I'm not allowed to"
    rf"\b{_UNABLE} to\b",
    # "I'm sorry, but I can't", "Sorry, I cannot", "sorry but I'm unable"
    rf"\bsorry,? (?:but )?(?:i {_CANT}|{_UNABLE})\b",
    # "I'm afraid I can't", "I apologize, but I"
    rf"\b(?:i'm|i am) afraid i (?:{_CANT}|am unable|'m unable)\b",
    r"\bi apologi[sz]e,? but i\b",
    # "As an AI", "as an AI language model"
    r"\bas an ai\b",
    # "I must decline", "I have to refuse"
    r"\bi (?:must|have to|need to|will have to|'ll have to) (?:decline|refuse)\b",
    # "this violates the content policy", "against my guidelines"
    r"\b(?:violates?|against|breach(?:es)?|outside) (?:the |our |my |openai's )?(?:content |usage |safety )"
    r"polic(?:y|ies)\b",
    r"\b(?:against|violates?|outside) my (?:ethical )?(?:guidelines|programming|principles)\b",
)
DEFAULT_WINDOW = 200

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})


def _fold(text: str, window: int) -> str:
    head = text.lstrip()[: window * 4]  # bounded work, however long the answer
    return " ".join(head.translate(_APOSTROPHES).lower().split())[:window]


class RefusalDetector:
    """``match(text)`` -> the matched snippet when ``text`` reads as a refusal, else None."""

    def __init__(self, patterns: Iterable[str] = DEFAULT_PATTERNS, window: int = DEFAULT_WINDOW) -> None:
        if isinstance(patterns, str):
            raise TypeError("patterns must be a list of regular expressions, not one string")
        self.patterns = tuple(patterns)
        if window < 1:
            raise ValueError("window must be at least 1 character")
        self.window = window
        self._re = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE) if self.patterns else None

    def match(self, text: str) -> str | None:
        if self._re is None or not isinstance(text, str):
            return None
        m = self._re.search(_fold(text, self.window))
        return m.group(0) if m else None

    def __call__(self, text: str) -> bool:
        return self.match(text) is not None


@lru_cache(maxsize=1)
def default_detector() -> RefusalDetector:
    """The detector with the default patterns, built on first use."""
    return RefusalDetector()
