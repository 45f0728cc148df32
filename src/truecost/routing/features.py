"""Features for routing scorers: prompt text statistics, and answer-aware checks of a weak answer.

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
_HEDGE_RE = re.compile(r"\b(approximately|about|assum\w*|however|but|wait|mistake|actually|round\w*|cannot|"
                       r"not possible|unclear)\b", re.I)
_CODE_RE = re.compile(r"```|\bdef |\bclass |\bimport |;\s*$|\{\s*$|\breturn\b", re.M)
_MATH_RE = re.compile(r"[=+\-*/^]|\\frac|\bsolve\b|\bcalculate\b|\bprove\b", re.I)

PROMPT_FEATURES = ("log_chars", "digit_share", "math_share", "lines", "code", "question_marks")
ANSWER_FEATURES = ("eq_good", "eq_bad", "eq_bad_share", "eq_all_good", "log_len", "lines", "final_marker",
                   "last_is_int", "last_negative", "numbers", "question_numbers_used", "final_matches_last_eq",
                   "final_magnitude", "final_decimal", "hedges", "length_ratio")


def _num(s: str) -> float:
    return float(s.replace(",", ""))


def prompt_features(text: str) -> list[float]:
    n = max(len(text), 1)
    return [math.log1p(len(text)), sum(c.isdigit() for c in text) / n, len(_MATH_RE.findall(text)) / n * 10,
            math.log1p(text.count("\n")), 1.0 if _CODE_RE.search(text) else 0.0, math.log1p(text.count("?"))]


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
    used = (np.mean([any(abs(x - y) < 1e-9 for y in numbers) for x in q_numbers]) if q_numbers else 1.0)
    magnitude = (math.log1p(abs(last)) - math.log1p(max((abs(x) for x in q_numbers), default=1.0))) if last is not None else 0.0
    return [good, bad, bad / (good + bad) if good + bad else 0.0, 1.0 if bad == 0 and good > 0 else 0.0,
            math.log1p(len(answer)), answer.count("\n"), 1.0 if _FINAL_RE.search(answer) else 0.0,
            1.0 if last is not None and float(last).is_integer() else 0.0, 1.0 if last is not None and last < 0 else 0.0,
            len(numbers), float(used),
            1.0 if last is not None and last_eq is not None and abs(last - last_eq) < 1e-9 else 0.0,
            magnitude, 1.0 if last is not None and not float(last).is_integer() else 0.0,
            len(_HEDGE_RE.findall(answer)), math.log1p(len(answer)) - math.log1p(len(question))]


def prompt_matrix(texts: Sequence[str]) -> np.ndarray:
    return np.array([prompt_features(t) for t in texts], dtype=np.float64).reshape(len(texts), len(PROMPT_FEATURES))


def answer_matrix(questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    return np.array([answer_features(q, a) for q, a in zip(questions, answers)],
                    dtype=np.float64).reshape(len(answers), len(ANSWER_FEATURES))
