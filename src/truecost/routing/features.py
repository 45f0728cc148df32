"""Features for routing scorers: prompt text statistics, and answer-aware checks of a weak answer.

Multiple-choice structure (how many options, how alike they are, a negated stem, "all of
the above") is read from the request's last item: a few-shot preamble is shared by every
request and says nothing about this one.

The answer-aware features are a cheap verifier (FrugalGPT's idea of scoring the weak
model's answer): arithmetic written in the answer is re-computed, the question's numbers
are looked for in the answer, the final number's form and size are checked, hedging
words counted. They need no model and cost microseconds.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

_NUM = r"-?\d[\d,]*(?:\.\d+)?"
_NUM_RE = re.compile(_NUM)
_EQ_RE = re.compile(rf"({_NUM}(?:\s*[-+*/x×÷]\s*{_NUM})+)\s*=\s*\$?({_NUM})")
_FINAL_RE = re.compile(rf"(?:answer is|####)\s*:?\s*\$?\s*({_NUM})", re.I)
_HEDGE_RE = re.compile(
    r"\b(approximately|about|assum\w*|however|but|wait|mistake|actually|round\w*|cannot|"
    r"not possible|unclear)\b",
    re.I,
)
# One alternation tried at every position is slow on long prompts; the same matches, split
# into patterns with literal prefixes and C-speed character counts, cost a fraction.
_CODE_RES = (
    re.compile(r"```"),
    re.compile(r"\b(?:def|class|import) "),
    re.compile(r"\breturn\b"),
    re.compile(r"[;{][ \t\r\f\v]*$", re.M),
)
_MATH_WORDS_RE = re.compile(r"\b(?:solve|calculate|prove)\b", re.I)
_DROP_DIGITS = str.maketrans("", "", "0123456789")
_DROP_MATH_SYMBOLS = str.maketrans("", "", "=+-*/^")

_OPTION_RE = re.compile(r"^\s*\(?([A-J])[.):]\s*(.*)$", re.M)
_NEGATED_RE = re.compile(r"\b(NOT|EXCEPT|LEAST|FALSE|INCORRECT|never)\b")
_ABOVE_RE = re.compile(r"\b(all|none|both) of (the above|these)\b", re.I)
_STATEMENTS_RE = re.compile(r"\bStatement\s+(\d|I{1,3})\b")
_NUMERIC_OPTION_RE = re.compile(r"[-+$\d.,/ %()^*x]+")

BASE_FEATURES = ("log_chars", "digit_share", "math_share", "lines", "code", "question_marks")
CHOICE_FEATURES = (
    "options",
    "option_log_chars",
    "option_length_spread",
    "option_length_cv",
    "numeric_options",
    "option_overlap",
    "all_of_the_above",
    "negated_stem",
    "statements",
    "stem_log_chars",
    "blanks",
)
PROMPT_FEATURES = BASE_FEATURES + CHOICE_FEATURES
ANSWER_FEATURES = (
    "eq_good",
    "eq_bad",
    "eq_bad_share",
    "eq_all_good",
    "log_len",
    "lines",
    "final_marker",
    "last_is_int",
    "last_negative",
    "numbers",
    "question_numbers_used",
    "final_matches_last_eq",
    "final_magnitude",
    "final_decimal",
    "hedges",
    "length_ratio",
)


def _num(s: str) -> float:
    return float(s.replace(",", ""))


def prompt_features(text: str) -> list[float]:
    n = max(len(text), 1)
    digits = len(text) - len(text.translate(_DROP_DIGITS))
    maths = (
        len(text) - len(text.translate(_DROP_MATH_SYMBOLS)) + text.count("\\frac") + len(_MATH_WORDS_RE.findall(text))
    )
    code = any(r.search(text) for r in _CODE_RES)
    return [
        math.log1p(len(text)),
        digits / n,
        maths / n * 10,
        math.log1p(text.count("\n")),
        1.0 if code else 0.0,
        math.log1p(text.count("?")),
    ]


def choice_features(text: str) -> list[float]:
    """The structure of a multiple-choice item, read from the last paragraph block of ``text``."""
    item = text.rstrip().rsplit("\n\n", 1)[-1]
    options = [o.strip() for _letter, o in _OPTION_RE.findall(item)]
    stem = _OPTION_RE.split(item, maxsplit=1)[0] if options else item
    lengths = [len(o) for o in options] or [0]
    words = [set(o.lower().split()) for o in options]
    overlap = max((len(a & b) / max(len(a | b), 1) for i, a in enumerate(words) for b in words[i + 1 :]), default=0.0)
    mean = sum(lengths) / len(lengths)
    return [
        float(len(options)),
        math.log1p(mean),
        math.log1p(max(lengths)) - math.log1p(min(lengths)),
        float(np.std(lengths)) / (mean + 1.0),
        sum(bool(_NUMERIC_OPTION_RE.fullmatch(o)) for o in options) / len(options) if options else 0.0,
        overlap,
        1.0 if _ABOVE_RE.search(item) else 0.0,
        1.0 if _NEGATED_RE.search(stem) else 0.0,
        1.0 if _STATEMENTS_RE.search(item) else 0.0,
        math.log1p(len(stem)),
        float(stem.count("_")),
    ]


def _safe_eval(expr: str) -> float | None:
    expr = expr.replace(",", "").replace("x", "*").replace("×", "*").replace("÷", "/")
    if not re.fullmatch(r"[-+*/.\d\s]+", expr) or "**" in expr:
        return None
    try:
        return float(eval(expr, {"__builtins__": {}}, {}))  # digits and + - * / only, checked above
    except (ArithmeticError, SyntaxError, ValueError):
        return None


def answer_features(question: str, answer: str) -> list[float]:
    good = bad = 0
    eqs = _EQ_RE.findall(answer)
    for lhs, rhs in eqs:
        value = _safe_eval(lhs)
        if value is None:
            continue
        ok = abs(value - _num(rhs)) <= 1e-6 * max(1.0, abs(value))
        good += ok
        bad += not ok
    numbers = [_num(x) for x in _NUM_RE.findall(answer)]
    q_numbers = [_num(x) for x in _NUM_RE.findall(question)]
    last = numbers[-1] if numbers else None
    last_eq = _num(eqs[-1][1]) if eqs else None
    used = np.mean([any(abs(x - y) < 1e-9 for y in numbers) for x in q_numbers]) if q_numbers else 1.0
    magnitude = (
        (math.log1p(abs(last)) - math.log1p(max((abs(x) for x in q_numbers), default=1.0))) if last is not None else 0.0
    )
    return [
        good,
        bad,
        bad / (good + bad) if good + bad else 0.0,
        1.0 if bad == 0 and good > 0 else 0.0,
        math.log1p(len(answer)),
        answer.count("\n"),
        1.0 if _FINAL_RE.search(answer) else 0.0,
        1.0 if last is not None and float(last).is_integer() else 0.0,
        1.0 if last is not None and last < 0 else 0.0,
        len(numbers),
        float(used),
        1.0 if last is not None and last_eq is not None and abs(last - last_eq) < 1e-9 else 0.0,
        magnitude,
        1.0 if last is not None and not float(last).is_integer() else 0.0,
        len(_HEDGE_RE.findall(answer)),
        math.log1p(len(answer)) - math.log1p(len(question)),
    ]


def prompt_matrix(texts: Sequence[str], names: Sequence[str] = PROMPT_FEATURES) -> np.ndarray:
    """One row per text, the columns ``names`` (an artifact's own feature list, in its order)."""
    unknown = [n for n in names if n not in PROMPT_FEATURES]
    if unknown:
        raise ValueError(f"unknown prompt features: {', '.join(unknown)}")
    choice = any(n in CHOICE_FEATURES for n in names)
    rows = [prompt_features(t) + (choice_features(t) if choice else [0.0] * len(CHOICE_FEATURES)) for t in texts]
    cols = [PROMPT_FEATURES.index(n) for n in names]
    return np.array(rows, dtype=np.float64).reshape(len(texts), len(PROMPT_FEATURES))[:, cols]


def answer_matrix(questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    return np.array([answer_features(q, a) for q, a in zip(questions, answers)], dtype=np.float64).reshape(
        len(answers), len(ANSWER_FEATURES)
    )
