"""A small regex PII scrub (emails, card numbers, IBANs, phone numbers): kernel-level, no dependencies.

Used by the demo's sanitize step and by the gateway when prompt logging is turned on.
It is a floor, not a guarantee: names and addresses pass through.
"""

from __future__ import annotations

import re

_PII = [
    (re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"), "<email>"),
    (re.compile(r"\b(?:\d[ -]?){13,19}\b"), "<card>"),
    (re.compile(r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b"), "<iban>"),
    (re.compile(r"(?:\+?\d{1,3}[ -]?)?(?:\(?\d{3}\)?[ -]?)\d{3}[ -]?\d{4}\b"), "<phone>"),
]


def scrub(text: str) -> tuple[str, int]:
    """The text with PII replaced by placeholders, and how many were found."""
    found = 0
    for pattern, token in _PII:
        text, n = pattern.subn(token, text)
        found += n
    return text, found
