"""Agreement figures (kappa, exact, within one) against values computed by hand."""

from __future__ import annotations

import math

import pytest

from her2_qupath.agreement import agreement, cohen_kappa, score_index
from her2_qupath.errors import UserInputError


def test_score_index_reads_every_spelling() -> None:
    assert [score_index(v) for v in (0, "0", "1+", "HER2 2+", "3", "3+", None)] == [0, 0, 1, 2, 3, 3, None]
    assert score_index("not evaluable") is None
    with pytest.raises(UserInputError, match="not a HER2 score"):
        score_index("4+")


def test_kappa_by_hand() -> None:
    # truth 0 0 1 1 2 2 3 3, prediction 0 1 1 1 2 3 3 3
    t = [0, 0, 1, 1, 2, 2, 3, 3]
    p = [0, 1, 1, 1, 2, 3, 3, 3]
    # observed agreement 6/8; marginals truth (2,2,2,2), prediction (1,3,1,3):
    # expected agreement (2*1 + 2*3 + 2*1 + 2*3) / 64 = 16/64
    assert cohen_kappa(t, p) == pytest.approx((6 / 8 - 16 / 64) / (1 - 16 / 64))
    # quadratic: both disagreements are one step (weight 1); expected weighted disagreement
    # sum_ij w_ij * r_i * c_j / n with r = (2,2,2,2), c = (1,3,1,3)
    r, c = [2, 2, 2, 2], [1, 3, 1, 3]
    exp = sum((i - j) ** 2 * r[i] * c[j] for i in range(4) for j in range(4)) / 8
    assert cohen_kappa(t, p, weights="quadratic") == pytest.approx(1 - 2 / exp)
    assert cohen_kappa([1, 2, 3], [1, 2, 3], weights="quadratic") == 1.0
    assert math.isnan(cohen_kappa([2, 2], [2, 2]))


def test_agreement_counts_serious_errors_and_leaves_out_the_unscored() -> None:
    a = agreement(["0", "0", "1+", "2+", "3+", "2+"], ["0", "2+", "1+", None, "1+", "not evaluable"])
    assert (a.n, a.unscored) == (4, 2)
    assert a.exact == pytest.approx(2 / 4)
    assert a.within_one == pytest.approx(2 / 4)
    assert a.two_step_errors == 2  # 0 -> 2+ and 3+ -> 1+
    assert a.negative_called_positive == 1
    assert a.confusion[0] == [1, 0, 1, 0] and a.confusion[3] == [0, 1, 0, 0]
    with pytest.raises(UserInputError, match="truth"):
        agreement([None], ["0"])
