"""Guideline rules, H-score, tile scores, Algorithm 1 and count-based aggregation."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from her2_qupath import scoring
from her2_qupath.config import GUIDELINES, GuidelineRule, ScoringConfig
from her2_qupath.errors import UserInputError
from her2_qupath.scoring import (
    TileScore,
    aggregate,
    combine_regions,
    guideline_score,
    h_score,
    paper_slide_score,
    score_class_map,
)
from her2_qupath.scoring.rules import _percent_positive

N = 10_000  # counts resolution: 0.01 %


def counts_for(p3: float, p2_or_more: float, p1_or_more: float) -> list[int]:
    """Counts at 0, 1+, 2+, 3+ with the given cumulative percentages (of N)."""
    c3 = round(p3 * N / 100)
    c2 = round(p2_or_more * N / 100) - c3
    c1 = round(p1_or_more * N / 100) - c3 - c2
    return [N - c1 - c2 - c3, c1, c2, c3]


# ---------------------------------------------------------------- guideline rules
@pytest.mark.parametrize("name", list(GUIDELINES))
def test_guideline_each_threshold_both_sides(name: str) -> None:
    rule = GUIDELINES[name]
    inc3, inc2, inc1 = rule.inclusive
    eps = 0.01
    # t3: only 3+ cells
    assert guideline_score(counts_for(rule.t3 + eps, rule.t3 + eps, rule.t3 + eps), rule) == 3
    at3 = guideline_score(counts_for(rule.t3, rule.t3, rule.t3), rule)
    assert (at3 == 3) == inc3
    below3 = guideline_score(counts_for(rule.t3 - eps, rule.t3 - eps, rule.t3 - eps), rule)
    # below t3 the same cells fall to the 2+ rule: 2+ only where t2 (or t2_strong) allows
    want = (
        2
        if (
            rule.t3 - eps > rule.t2
            or (rule.t2_strong is not None and rule.t3 - eps > rule.t2_strong)
        )
        else 0
    )
    assert below3 == want
    # t2: cells at 2+ only (no 3+, so t2_strong is not involved)
    assert guideline_score(counts_for(0, rule.t2 + eps, rule.t2 + eps), rule) == 2
    at2 = guideline_score(counts_for(0, rule.t2, rule.t2), rule)
    assert (at2 == 2) == inc2
    assert guideline_score(counts_for(0, rule.t2 - eps, rule.t2 - eps), rule) < 2
    # t1: cells at 1+ only
    assert guideline_score(counts_for(0, 0, rule.t1 + eps), rule) == 1
    at1 = guideline_score(counts_for(0, 0, rule.t1), rule)
    assert (at1 == 1) == inc1
    assert guideline_score(counts_for(0, 0, rule.t1 - eps), rule) == 0
    assert guideline_score([N, 0, 0, 0], rule) == 0


def test_breast_exactly_ten_percent_is_not_above() -> None:
    assert guideline_score([90, 0, 0, 10], "breast") == 0  # 10 % at 3+ is not > 10 %
    assert guideline_score([89, 0, 0, 11], "breast") == 3
    assert guideline_score([90, 0, 10, 0], "breast") == 0
    assert guideline_score([89, 11, 0, 0], "breast") == 1


def test_gastric_ten_percent_is_at_least() -> None:
    assert guideline_score([90, 0, 0, 10], "gastric") == 3  # ">= 10 %" wording
    assert guideline_score([91, 0, 0, 9], "gastric") == 0  # 9 % at >= 2+ and >= 1+
    assert guideline_score([90, 0, 1, 9], "gastric") == 2  # 10 % at >= 2+


def test_endometrial_rule() -> None:
    rule = GUIDELINES["endometrial"]
    assert guideline_score([69, 0, 0, 31], rule) == 3
    assert guideline_score([70, 0, 0, 30], rule) == 2  # intense in <= 30 %
    assert guideline_score([95, 0, 0, 5], rule) == 2  # intense in a few cells: 2+
    assert guideline_score([90, 0, 10, 0], rule) == 2  # weak-moderate in >= 10 %
    assert guideline_score([91, 0, 9, 0], rule) == 1
    assert guideline_score([97, 3, 0, 0], rule) == 1  # faint in any proportion (> 1 %)
    assert guideline_score([100, 0, 0, 0], rule) == 0


def test_guideline_is_cumulative() -> None:
    # 6 % at 3+ and 6 % at 2+: no class alone > 10 %, but >= 2+ is 12 % -> 2+
    assert guideline_score([88, 0, 6, 6], "breast") == 2
    assert guideline_score([88, 6, 6, 0], "breast") == 1


def test_unknown_guideline_and_bad_counts() -> None:
    with pytest.raises(UserInputError):
        guideline_score([1, 0, 0, 0], "lung")
    with pytest.raises(UserInputError):
        guideline_score([1, 0, 0], "breast")
    with pytest.raises(UserInputError):
        guideline_score([1, -1, 0, 0], "breast")


def test_custom_rule() -> None:
    rule = GuidelineRule("strict", "test", 50.0, 40.0, 30.0)
    assert guideline_score([49, 0, 0, 51], rule) == 3
    assert guideline_score([50, 0, 0, 50], rule) == 2


# ---------------------------------------------------------------- H-score
def test_h_score_formula() -> None:
    assert h_score([10, 20, 30, 40]) == pytest.approx(20 + 2 * 30 + 3 * 40)
    assert h_score([0, 0, 0, 5]) == pytest.approx(300)
    assert h_score([7, 0, 0, 0]) == 0
    assert h_score([0, 0, 0, 0]) == 0
    assert h_score([1, 1, 1, 1]) == pytest.approx(150)


# ---------------------------------------------------------------- tiles
def test_tile_score_counts_coverage_letters_label() -> None:
    x = np.zeros((10, 20), np.uint8)  # 200 px
    x[:, :5] = 1  # 50 HER2 0
    x[:, 5:12] = 2  # 70 1+
    x[:, 12:14] = 3  # 20 2+
    x[0, 14] = 4  # 1 3+ (1/141 < 1 %: letter absent)
    t = score_class_map(x)
    assert t.pixel_counts == (59, 50, 70, 20, 1)
    assert t.coverage[2] == pytest.approx(35.0)
    assert sum(t.coverage) == pytest.approx(100.0)
    assert t.tile_class == 1
    assert t.letters == "NFW"
    assert t.label == "NFW/1+"
    assert score_class_map(x, min_letter_fraction=0.005).letters == "NFWS"
    pct = t.percentages()
    assert sum(pct.values()) == pytest.approx(100.0)
    assert pct["1+"] == pytest.approx(100 * 70 / 141)


def test_tile_class_ties_go_up_and_empty_tiles() -> None:
    x = np.array([[1, 1, 3, 3, 0]], np.uint8)
    assert score_class_map(x).tile_class == 2
    empty = score_class_map(np.zeros((4, 4), np.uint8))
    assert empty.tile_class is None and empty.label == "" and not empty.counts_toward_score


def test_class_map_validation() -> None:
    with pytest.raises(UserInputError):
        score_class_map(np.full((2, 2), 5, np.uint8))
    with pytest.raises(UserInputError):
        score_class_map(np.zeros((2, 2, 2), np.uint8))


def test_dab_mean_over_tissue() -> None:
    x = np.array([[0, 1, 4]], np.uint8)
    d = np.array([[9.0, 0.1, 0.7]], np.float32)
    assert score_class_map(x, dab_od=d).dab_od_mean == pytest.approx(0.4)


# ---------------------------------------------------------------- Algorithm 1
def tile(cls: int, n: int = 100, **kw) -> TileScore:
    counts = [0, 0, 0, 0, 0]
    counts[cls + 1] = n
    return TileScore(tuple(counts), n, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "classes, expected",
    [
        ([0, 0, 1, 2], 2),  # a 2+ tile decides
        ([0, 3, 2, 0, 0], 3),  # the max among 2+/3+ tiles
        ([0, 0, 1], 0),  # no 2+/3+: majority
        ([1, 1, 0], 1),
        ([0, 1], 1),  # majority tie goes to the higher class
        ([], None),
    ],
)
def test_algorithm_1(classes: list[int], expected: int | None) -> None:
    got = paper_slide_score([tile(c) for c in classes])
    assert got.score == (0 if expected is None else expected)
    assert scoring.algorithm1(np.bincount(np.array(classes, int), minlength=4)) == expected


def test_algorithm_1_ignores_non_tumor_tiles_and_histograms() -> None:
    tiles = [tile(0), tile(0), tile(3, tumor=False)]
    assert paper_slide_score(tiles) == (0, 0.0)
    score, percent = paper_slide_score([tile(0, 300), tile(2, 100), tile(1, 100)])
    assert score == 2 and percent == pytest.approx(20.0)
    assert scoring.algorithm1([5, 2, 0, 0]) == 0
    assert scoring.algorithm1(np.array([5, 2, 1, 0])) == 2
    with pytest.raises(UserInputError):
        paper_slide_score([[1, 2, 3, 4]])  # type: ignore[list-item]


def test_paper_mode_region_and_percent_positive() -> None:
    tiles = [tile(0, 300), tile(2, 100), tile(3, 100)]
    r = aggregate(tiles, ScoringConfig(aggregation="paper"))
    assert r.her2_score == "3+"
    assert r.percent_positive == pytest.approx(40.0)
    assert r.tile_classes == (1, 0, 1, 1)


# ---------------------------------------------------------------- aggregation
def test_aggregation_sums_counts_of_unequal_tiles() -> None:
    small = tile(3, 100)  # 100 px all 3+
    big = tile(0, 900)  # 900 px all 0
    r = aggregate([small, big])
    assert r.class_percentages == {"0": 90.0, "1+": 0.0, "2+": 0.0, "3+": 10.0}  # not 50/50
    assert r.her2_score == "0"  # 10 % is not > 10 %
    r2 = aggregate([tile(3, 101), big])
    assert r2.her2_score == "3+"
    assert r.h_score == pytest.approx(30.0)
    assert r.n_tiles == 2 and r.n_cells is None
    d = r.to_dict()
    assert d["her2_score"] == "0" and sum(d["class_percentages"].values()) == pytest.approx(100.0)


def test_cell_level_uses_cell_counts() -> None:
    a = tile(0, 100, cell_counts=(5, 0, 0, 5))
    b = tile(0, 900, cell_counts=(40, 0, 0, 0))
    r = aggregate([a, b], ScoringConfig(level="cell"))
    assert r.n_cells == 50
    assert r.class_percentages["3+"] == pytest.approx(10.0)
    assert r.her2_score == "0"
    assert aggregate([a, b], ScoringConfig(level="cell", guideline="gastric")).her2_score == "3+"
    with pytest.raises(UserInputError):
        aggregate([a, tile(0)], ScoringConfig(level="cell"))


def test_non_tumor_tiles_do_not_count_and_classifier_agreement() -> None:
    tiles = [
        tile(3, 100, tumor=True, classifier_class=3),
        tile(3, 100, tumor=False, classifier_class=3),
        tile(0, 100, tumor=None, classifier_class=1),
        tile(0, 100),
    ]
    r = aggregate(tiles)
    assert r.n_tiles == 3 and r.n_tiles_excluded == 1
    assert r.pixel_counts[4] == 100
    assert r.classifier_agreement == pytest.approx(0.5)
    keep = aggregate(tiles, ScoringConfig(exclude_non_tumor=False))
    assert keep.n_tiles == 4 and keep.pixel_counts[4] == 200


def test_combine_regions_equals_aggregate_of_all_tiles() -> None:
    a = [tile(0, 200), tile(2, 50)]
    b = [tile(3, 30), tile(1, 500), tile(0, 10, tumor=False)]
    whole = aggregate(a + b)
    comb = combine_regions([aggregate(a, name="A"), aggregate(b, name="B")])
    assert comb.to_dict() == {**whole.to_dict(), "name": "slide"}
    with pytest.raises(UserInputError):
        combine_regions([aggregate(a), aggregate(b, ScoringConfig(guideline="gastric"))])
    with pytest.raises(UserInputError):
        combine_regions([])


def test_bad_config_is_refused() -> None:
    with pytest.raises(UserInputError):
        aggregate([tile(0)], ScoringConfig(guideline="lung"))  # type: ignore[arg-type]
    with pytest.raises(UserInputError):
        aggregate([tile(0)], "breast", level="nuclear")


def test_aggregate_with_a_rule_and_overrides() -> None:
    tiles = [tile(3, 10, cell_counts=(3, 0, 0, 7)), tile(0, 90, cell_counts=(7, 0, 0, 3))]
    rule = GuidelineRule("custom", "test", 50.0, 40.0, 30.0)
    r = aggregate(tiles, rule, level="cell")
    assert r.guideline == "custom" and r.level == "cell"
    assert r.her2_score == "2+"  # 50 % at 3+ is not > 50 %, but 50 % at >= 2+ is > 40 %
    assert r.to_dict()["guideline_reference"] == "test"
    assert aggregate(tiles, rule).her2_score == "0"  # pixel level: 10 % at 3+
    assert aggregate(tiles, "gastric").her2_score == "3+"  # >= 10 %
    assert aggregate(tiles, "breast").her2_score == "0"  # not > 10 %
    assert aggregate(tiles, aggregation="paper").her2_score == "3+"


# ---------------------------------------------------------------- properties
counts4 = st.lists(st.integers(0, 5000), min_size=4, max_size=4)


@settings(max_examples=200, deadline=None)
@given(counts4, st.integers(0, 2), st.integers(1, 5000), st.sampled_from(list(GUIDELINES)))
def test_adding_dab_never_lowers_a_score(c: list[int], k: int, n: int, g: str) -> None:
    """Moving cells/pixels from class k to k+1 (more DAB) never lowers a score."""
    n = min(n, c[k])
    up = list(c)
    up[k] -= n
    up[k + 1] += n
    assert guideline_score(up, g) >= guideline_score(c, g)
    assert h_score(up) >= h_score(c) - 1e-9
    assert _percent_positive(up) >= _percent_positive(c) - 1e-9


@settings(max_examples=200, deadline=None)
@given(counts4)
def test_percentages_sum_to_100(c: list[int]) -> None:
    p = scoring.class_percentages(c)
    if sum(c):
        assert sum(p.values()) == pytest.approx(100.0)
    else:
        assert set(p.values()) == {0.0}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 400), min_size=5, max_size=5),
            st.sampled_from([True, False, None]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.randoms(use_true_random=False),
)
def test_scores_invariant_to_tile_order(spec, rnd: random.Random) -> None:
    tiles = [TileScore(tuple(c), sum(c) + 5, tumor=t) for c, t in spec]  # type: ignore[arg-type]
    shuffled = list(tiles)
    rnd.shuffle(shuffled)
    for cfg in (ScoringConfig(), ScoringConfig(aggregation="paper")):
        assert aggregate(tiles, cfg).to_dict() == aggregate(shuffled, cfg).to_dict()
    assert paper_slide_score(tiles) == paper_slide_score(shuffled)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=30), st.integers(0, 29))
def test_paper_score_never_drops_when_a_tile_becomes_positive(classes: list[int], i: int) -> None:
    """Raising one tile to 2+ or 3+ never lowers Algorithm 1's slide score."""
    i %= len(classes)
    before = paper_slide_score([tile(c) for c in classes])
    raised = list(classes)
    raised[i] = max(raised[i], 2)
    assert paper_slide_score([tile(c) for c in raised]).score >= before.score


def test_her2_expression_groups() -> None:
    from her2_qupath.scoring import expression_group

    none = {"0": 100.0, "1+": 0.0, "2+": 0.0, "3+": 0.0}
    faint = {"0": 95.0, "1+": 5.0, "2+": 0.0, "3+": 0.0}
    speck = {"0": 99.5, "1+": 0.5, "2+": 0.0, "3+": 0.0}
    assert expression_group(0, none) == "HER2-null"
    assert expression_group(0, speck) == "HER2-null"  # below ULTRALOW_MIN_PERCENT: noise
    assert expression_group(0, faint) == "HER2-ultralow"
    assert expression_group(1, faint) == "HER2-low"
    assert expression_group(2, faint).startswith("HER2-low or positive")
    assert expression_group(3, none) == "HER2-positive"
    assert expression_group(None, faint) is None
