"""Agreement between HER2 scores: the product's against a pathologist's.

Scores are the ordinal classes 0, 1+, 2+, 3+ (as indices 0..3, or their
names); a prediction may also be "not evaluable" (``None``), which counts as
unscored and is left out of the agreement figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import UserInputError
from .scoring import NOT_EVALUABLE, SCORE_NAMES

__all__ = ["score_index", "cohen_kappa", "Agreement", "agreement"]


def score_index(value: Any) -> int | None:
    """0..3 from ``0``, ``"0"``, ``"1+"``, ``"HER2 2+"``, ``3``...; None for "not evaluable"."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and 0 <= int(value) <= 3:
        return int(value)
    text = str(value).strip()
    if text.lower() == NOT_EVALUABLE:
        return None
    text = text.upper().removeprefix("HER2").strip()
    for i, name in enumerate(SCORE_NAMES):
        if text in (name, name.rstrip("+")):
            return i
    raise UserInputError(f"{value!r} is not a HER2 score", hint="use 0, 1+, 2+ or 3+")


def cohen_kappa(truth: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, *,
                weights: str | None = None,
                n_classes: int = 4) -> float:
    """Cohen's kappa of two ratings 0..n-1; ``weights`` None, "linear" or "quadratic".

    1 for perfect agreement, 0 for chance; NaN when chance agreement is perfect
    (a single class on both sides).
    """
    t = np.asarray(truth, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise UserInputError("kappa needs two ratings of the same length",
                             hint="pair every prediction with its truth")
    if t.size == 0:
        return float("nan")
    conf = np.zeros((n_classes, n_classes))
    np.add.at(conf, (t, p), 1.0)
    expected = np.outer(conf.sum(axis=1), conf.sum(axis=0)) / conf.sum()
    i, j = np.indices((n_classes, n_classes))
    if weights is None:
        w = (i != j).astype(float)
    elif weights == "linear":
        w = np.abs(i - j).astype(float)
    elif weights == "quadratic":
        w = ((i - j) ** 2).astype(float)
    else:
        raise UserInputError(f"unknown kappa weights {weights!r}", hint="None, 'linear' or 'quadratic'")
    denom = float((w * expected).sum())
    if denom == 0.0:
        return float("nan")
    return float(1.0 - (w * conf).sum() / denom)


@dataclass(frozen=True)
class Agreement:
    """Agreement figures over the cases that were scored (``n``) and how many were not."""

    n: int
    unscored: int
    exact: float
    within_one: float
    kappa: float
    quadratic_kappa: float
    two_step_errors: int  # |prediction - truth| >= 2
    negative_called_positive: int  # truth 0, prediction 2+ or 3+
    confusion: list[list[int]]  # rows truth 0..3, columns prediction 0..3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(truth: Sequence[Any], pred: Sequence[Any]) -> Agreement:
    """Agreement of predictions with the truth (scores as indices or names; None = unscored)."""
    if len(truth) != len(pred):
        raise UserInputError(f"{len(truth)} truths but {len(pred)} predictions",
                             hint="pair every prediction with its truth")
    t_all = [score_index(t) for t in truth]
    if any(t is None for t in t_all):
        raise UserInputError("every case needs a truth score 0, 1+, 2+ or 3+",
                             hint="remove cases without a pathologist's score")
    p_all = [score_index(p) for p in pred]
    pairs = [(t, p) for t, p in zip(t_all, p_all, strict=True) if p is not None]
    t = np.array([a for a, _ in pairs], dtype=np.int64)
    p = np.array([b for _, b in pairs], dtype=np.int64)
    conf = np.zeros((4, 4), dtype=np.int64)
    np.add.at(conf, (t, p), 1)
    n = len(pairs)
    return Agreement(
        n=n,
        unscored=len(t_all) - n,
        exact=float((t == p).mean()) if n else float("nan"),
        within_one=float((np.abs(t - p) <= 1).mean()) if n else float("nan"),
        kappa=cohen_kappa(t, p),
        quadratic_kappa=cohen_kappa(t, p, weights="quadratic"),
        two_step_errors=int((np.abs(t - p) >= 2).sum()),
        negative_called_positive=int(((t == 0) & (p >= 2)).sum()),
        confusion=conf.tolist(),
    )
