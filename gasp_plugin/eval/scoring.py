"""Scoring rules of the spatial benchmarks, as pure functions of predictions and answers.

Standard library only: the All-Angles Bench task under ``gasp_plugin/eval/tasks/`` loads this file
inside lmms-eval, whatever Python runs it.

- **Exact match** of a multiple-choice answer: the option letter the model chose
  (:func:`extract_choice`) equals the answer's letter, case-insensitively.
- **Mean relative accuracy** (VSI-Bench, numeric answers): the mean over theta in
  ``{0.50, 0.55, ..., 0.95}`` (:data:`MRA_THRESHOLDS`) of ``1[|pred - gt| / gt <= 1 - theta]``.
  A relative error exactly on a boundary counts as within (``tolerance``): gt 10, pred 12 is within
  ``1 - 0.80``. lmms-eval's ``vsibench`` compares in plain floats, where ``1 - 0.8`` is
  ``0.19999999999999996``, so it scores that case 0.6, not 0.7; ``tolerance=0`` reproduces it.
- **Per-category accuracy** (All-Angles Bench): the mean of 0/1 scores per category; ``overall`` is
  the mean over all questions (as the benchmark's own evaluation, VLMEvalKit's ``report_acc``,
  computes it) and ``category_mean`` the unweighted mean of the category accuracies.

Scores are fractions in [0, 1].
"""

from __future__ import annotations

import math
import re
import string
from collections import defaultdict
from typing import Iterable, Sequence

__all__ = ["MRA_THRESHOLDS", "MRA_TOLERANCE", "extract_choice", "exact_match", "to_number",
           "mean_relative_accuracy", "category_accuracy", "option_letters", "ALL_ANGLES_CATEGORIES"]

#: theta of VSI-Bench's MRA as the paper defines it: 0.50, 0.55, ..., 0.95
MRA_THRESHOLDS: tuple[float, ...] = tuple(round(0.50 + 0.05 * k, 2) for k in range(10))
#: default tolerance of the MRA comparison: a relative error on a boundary counts as within
MRA_TOLERANCE = 1e-9

#: the six task categories of All-Angles Bench's released question file (its ``category`` field)
ALL_ANGLES_CATEGORIES: tuple[str, ...] = ("attribute_identification", "camera_pose_estimation", "counting",
                                          "manipulation", "relative_direction", "relative_distance")


def extract_choice(response: str, letters: str = "ABC") -> str:
    """The option letter a free-text response chose, or ``''``.

    In order: a response that is only the letter (``'B'``, ``'(B)'``, ``'B.'``, ``'b'``); an explicit
    statement (``'the answer is (B)'``, ``'Answer: B'``: the last one); a letter followed by ``.`` or
    ``)`` at the start (``'B. left'``, ``'(B) left'``). Only ``letters`` count, so the ``A`` of
    ``'A chair'`` is not read as option A unless A is followed by ``.``/``)``.
    """
    text = str(response).strip()
    valid = re.escape(letters.upper())
    match = re.fullmatch(rf"\(?([{valid}])\)?\.?", text, flags=re.IGNORECASE)
    if match:
        return match.group(1).upper()
    found = re.findall(rf"\b(?i:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*\(?([{valid}])\b\)?", text)
    if found:
        return found[-1].upper()
    match = re.match(rf"\(?([{valid}])[\.\)]", text)
    if match:
        return match.group(1).upper()
    return ""


def exact_match(response: str, answer: str, letters: str = "ABC") -> float:
    """1.0 when the letter chosen in ``response`` is ``answer``'s (``'B'``, ``'(B)'``), else 0.0."""
    chosen = extract_choice(response, letters)
    expected = extract_choice(answer, letters)
    if not expected:
        raise ValueError(f"answer {answer!r} is not one of the option letters {letters!r}")
    return float(chosen == expected)


def to_number(text) -> float | None:
    """The first number in ``text`` (``'3'``, ``'about 2.5 m'``, ``'-1'``), or None."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = re.search(r"-?\d+(?:\.\d+)?", str(text))
    return float(match.group(0)) if match else None


def mean_relative_accuracy(pred, gt, thresholds: Sequence[float] = MRA_THRESHOLDS,
                           tolerance: float = MRA_TOLERANCE) -> float:
    """VSI-Bench's MRA of one numeric answer: the share of ``thresholds`` theta with
    ``|pred - gt| / gt <= 1 - theta + tolerance``. A prediction that is not a number scores 0.

    ``gt`` must be a positive number (VSI-Bench's numeric answers are counts, lengths and areas).
    """
    target = to_number(gt)
    if target is None or not target > 0:
        raise ValueError(f"ground truth {gt!r}: mean relative accuracy needs a positive number")
    if not thresholds:
        raise ValueError("thresholds: at least one theta is needed")
    value = to_number(pred)
    if value is None or not math.isfinite(value):
        return 0.0
    relative = abs(value - target) / target
    return sum(relative <= 1.0 - t + tolerance for t in thresholds) / len(thresholds)


def category_accuracy(records: Iterable[tuple[str, float]]) -> dict:
    """Accuracy per category from ``(category, score)`` pairs (scores 0/1, or fractions).

    Returns ``{"categories": {name: accuracy}, "counts": {name: n}, "overall": mean over all
    records, "category_mean": unweighted mean over categories}``; empty input gives NaN figures.
    """
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for category, score in records:
        sums[category] += float(score)
        counts[category] += 1
    total = sum(counts.values())
    per = {c: sums[c] / counts[c] for c in sorted(counts)}
    return {
        "categories": per,
        "counts": dict(sorted(counts.items())),
        "overall": sum(sums.values()) / total if total else float("nan"),
        "category_mean": sum(per.values()) / len(per) if per else float("nan"),
    }


def option_letters(count: int) -> str:
    """``'ABC'`` for three options."""
    if not 1 <= count <= 26:
        raise ValueError(f"an option count of 1..26 is needed, got {count}")
    return string.ascii_uppercase[:count]
