"""Counts to scores: class percentages, the cumulative guideline rules, H-score,
the majority class and the HER2 expression groups.

Every function takes the numbers of tumour cells (or tumour pixels) at 0, 1+,
2+, 3+ — counts, never averaged percentages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..config import GUIDELINES, GuidelineRule
from ..errors import UserInputError

__all__ = [
    "SCORE_NAMES",
    "NOT_EVALUABLE",
    "score_name",
    "class_percentages",
    "guideline_score",
    "h_score",
    "majority_class",
    "ULTRALOW_MIN_PERCENT",
    "EXPRESSION_GROUP_RULE",
    "expression_group",
]

#: Names of the HER2 scores 0..3 as written in reports and summary.json.
SCORE_NAMES: tuple[str, str, str, str] = ("0", "1+", "2+", "3+")
#: The score of a region that cannot be scored (see :func:`evaluability`).
NOT_EVALUABLE = "not evaluable"


def score_name(score: int | None) -> str | None:
    """``0..3 -> "0", "1+", "2+", "3+"``; ``None`` stays ``None``."""
    return None if score is None else SCORE_NAMES[int(score)]


def _counts4(class_counts: Sequence[int] | np.ndarray, what: str = "class_counts") -> np.ndarray:
    c = np.asarray(class_counts, dtype=np.int64).reshape(-1)
    if c.shape != (4,):
        raise UserInputError(
            f"{what} must hold four counts (HER2 0, 1+, 2+, 3+), got {len(c)}",
            hint="drop the background count (class 0 of a pixel map) first",
        )
    if np.any(c < 0):
        raise UserInputError(f"{what} must not be negative: {c.tolist()}", hint="pass counts")
    return c


def class_percentages(class_counts: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Percent of the total in each class, keys ``"0", "1+", "2+", "3+"``.

    They sum to 100 when anything was counted; all are 0.0 when the total is 0.
    """
    c = _counts4(class_counts)
    total = int(c.sum())
    if total == 0:
        return {k: 0.0 for k in SCORE_NAMES}
    return {k: float(100.0 * v / total) for k, v in zip(SCORE_NAMES, c, strict=True)}


def _above(value: float, threshold: float, inclusive: bool) -> bool:
    return value >= threshold if inclusive else value > threshold


def guideline_score(class_counts: Sequence[int] | np.ndarray, rule: GuidelineRule | str) -> int:
    """HER2 score 0..3 of tumor-cell (or tumor-pixel) counts by a cumulative rule.

    ``class_counts`` are the numbers at 0, 1+, 2+, 3+. With ``p3`` the percent
    at 3+, ``p2`` at >= 2+ and ``p1`` at >= 1+: 3+ if ``p3 > t3``; else 2+ if
    ``p2 > t2`` (or, for rules with ``t2_strong``, ``p3 > t2_strong``); else 1+
    if ``p1 > t1``; else 0. A threshold flagged ``inclusive`` uses ``>=``
    (the rule's wording says "at least"). Nothing counted scores 0.
    """
    if isinstance(rule, str):
        try:
            rule = GUIDELINES[rule]
        except KeyError as err:
            raise UserInputError(
                f"unknown guideline {rule!r}", hint=f"choose one of {', '.join(GUIDELINES)}"
            ) from err
    c = _counts4(class_counts)
    total = int(c.sum())
    if total == 0:
        return 0
    p3 = 100.0 * c[3] / total
    p2 = 100.0 * (c[2] + c[3]) / total
    p1 = 100.0 * (c[1] + c[2] + c[3]) / total
    inc3, inc2, inc1 = rule.inclusive
    if _above(p3, rule.t3, inc3):
        return 3
    if _above(p2, rule.t2, inc2) or (rule.t2_strong is not None and p3 > rule.t2_strong):
        return 2
    if _above(p1, rule.t1, inc1):
        return 1
    return 0


def h_score(class_counts: Sequence[int] | np.ndarray) -> float:
    """H-score ``1 * %1+ + 2 * %2+ + 3 * %3+`` (0-300) of counts at 0, 1+, 2+, 3+."""
    c = _counts4(class_counts)
    total = int(c.sum())
    if total == 0:
        return 0.0
    return float(100.0 * (c[1] + 2 * c[2] + 3 * c[3]) / total)


def majority_class(class_counts: Sequence[int] | np.ndarray) -> int | None:
    """Index 0..3 of the largest count (ties go to the higher class); None if all are 0."""
    c = _counts4(class_counts)
    if int(c.sum()) == 0:
        return None
    return int(3 - np.argmax(c[::-1]))


def _percent_positive(her2_counts: Sequence[int] | np.ndarray) -> float:
    c = _counts4(her2_counts)
    total = int(c.sum())
    return 0.0 if total == 0 else float(100.0 * (c[2] + c[3]) / total)


#: Share of tumour at >= 1+ (percent) above which a HER2 0 counts as "ultralow" rather
#: than "null": staining in a few scattered blocks or cells is taken as noise.
ULTRALOW_MIN_PERCENT = 1.0

#: The HER2 expression groups of the 2023 ASCO/CAP update and the HER2-low trials.
EXPRESSION_GROUP_RULE = (
    "HER2-positive: IHC 3+ (or 2+ with ISH amplification); HER2-low: IHC 1+, or 2+ without "
    "amplification (2+ stays 'HER2-low or positive, pending ISH' until ISH is known); "
    "HER2-ultralow: IHC 0 with faint, incomplete membrane staining in <= 10 % of tumour cells "
    f"(here: > {ULTRALOW_MIN_PERCENT:g} % at >= 1+); HER2-null: IHC 0 without membrane staining. "
    "Wolff AC et al., J Clin Oncol 2023;41:3867-72; Modi S et al. (DESTINY-Breast04), N Engl J "
    "Med 2022;387:9-20; Bardia A et al. (DESTINY-Breast06), N Engl J Med 2024;391:2110-22"
)


def expression_group(score: int | None, class_percentages: Mapping[str, float]) -> str | None:
    """HER2-null / -ultralow / -low / -positive of a 0-3+ score (None: not evaluable).

    See :data:`EXPRESSION_GROUP_RULE`; a 2+ is "HER2-low or positive (2+, pending ISH)".
    """
    if score is None:
        return None
    if score == 3:
        return "HER2-positive"
    if score == 2:
        return "HER2-low or positive (2+, pending ISH)"
    if score == 1:
        return "HER2-low"
    stained = 100.0 - float(class_percentages.get("0", 100.0))
    return "HER2-ultralow" if stained > ULTRALOW_MIN_PERCENT else "HER2-null"
