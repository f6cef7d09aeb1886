"""HER2 scores from pixel-class maps and cell classes.

Two aggregations, both from counts (never from averaged percentages):

* **guideline** (default): the percentage of analysed tumor pixels (pixel level)
  or tumor cells (cell level) in each class 0, 1+, 2+, 3+, scored with a
  cumulative clinical rule (:data:`her2_qupath.config.GUIDELINES`): 3+ if the
  percentage at 3+ exceeds t3, else 2+ if the percentage at >= 2+ exceeds t2,
  else 1+ if the percentage at >= 1+ exceeds t1, else 0.
* **paper**: the seed paper's Algorithm 1. Each tile's class is the majority
  stain class of its pixel map; the slide score is the highest tile class among
  tiles scored 2+ or 3+, else the majority tile class; WSI% is the percentage
  of analysed pixels at 2+ or 3+.

The tile score ``T = x (+) x_hat1 (+) x_hat2`` (segmentation majority, H&E tumor
call, stain classifier) is kept as data on :class:`TileScore`: a tile whose H&E
partner is called non-tumor does not count; the stain classifier's class is
compared with the segmentation majority and the agreement is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from .config import GUIDELINES, STAIN_LETTERS, GuidelineRule, ScoringConfig
from .errors import UserInputError

__all__ = [
    "SCORE_NAMES",
    "NOT_EVALUABLE",
    "evaluability",
    "expression_group",
    "EXPRESSION_GROUP_RULE",
    "TileScore",
    "RegionScore",
    "score_class_map",
    "guideline_score",
    "h_score",
    "class_percentages",
    "majority_class",
    "paper_slide_score",
    "algorithm1",
    "PaperScore",
    "aggregate",
    "combine_regions",
    "score_name",
]

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class TileScore:
    """One tile's stain analysis: the paper's ``Nx{k}`` and what combines into ``T``.

    ``pixel_counts[k]`` is the number of pixels of class k of the segmentation map
    x (0 background, 1..4 for HER2 0..3+); ``n_pixels`` is the tile area ``H * W``.
    ``cell_counts`` (cells at 0, 1+, 2+, 3+), ``tumor``/``tumor_probability``
    (the H&E classifier C on the partner tile) and ``classifier_class`` (the stain
    classifier L, 0..3) are optional and set by the pipeline.
    """

    pixel_counts: tuple[int, int, int, int, int]
    n_pixels: int
    cell_counts: tuple[int, int, int, int] | None = None
    tumor: bool | None = None
    tumor_probability: float | None = None
    classifier_class: int | None = None
    min_letter_fraction: float = ScoringConfig().min_letter_fraction
    row: int | None = None
    col: int | None = None
    dab_od_mean: float | None = None
    n_nuclei: int | None = None  # nuclei found in the tile's tissue (cells at cell level)
    tissue_pixels: int | None = None  # pixels holding any tissue, scored or not (QC)

    def __post_init__(self) -> None:
        pc = tuple(int(x) for x in self.pixel_counts)
        if len(pc) != 5 or any(x < 0 for x in pc):
            raise UserInputError(
                f"pixel_counts must be five non-negative counts, got {self.pixel_counts!r}",
                hint="count classes 0 (background) and 1..4 (HER2 0..3+)",
            )
        if sum(pc) > self.n_pixels:
            raise UserInputError(
                f"pixel_counts sum to {sum(pc)}, more than the tile's {self.n_pixels} pixels",
                hint="n_pixels is the tile area H * W",
            )
        object.__setattr__(self, "pixel_counts", pc)
        if self.cell_counts is not None:
            object.__setattr__(
                self,
                "cell_counts",
                tuple(int(x) for x in _counts4(self.cell_counts, "cell_counts")),
            )
        if self.classifier_class is not None and self.classifier_class not in (0, 1, 2, 3):
            raise UserInputError(
                f"classifier_class must be 0..3, got {self.classifier_class!r}",
                hint="pass the stain classifier's HER2 class index",
            )

    # -- the paper's quantities ---------------------------------------------------
    @property
    def coverage(self) -> tuple[float, float, float, float, float]:
        """Percentage coverage ``Nx * 100 / (H * W)`` of classes 0..4."""
        n = max(self.n_pixels, 1)
        return tuple(100.0 * x / n for x in self.pixel_counts)  # type: ignore[return-value]

    @property
    def analysed_pixels(self) -> int:
        """Tissue pixels (classes 1..4)."""
        return sum(self.pixel_counts[1:])

    @property
    def her2_pixel_counts(self) -> tuple[int, int, int, int]:
        """Pixels at HER2 0, 1+, 2+, 3+ (classes 1..4)."""
        return self.pixel_counts[1:]  # type: ignore[return-value]

    @property
    def tile_class(self) -> int | None:
        """Majority stain class among 1..4 as HER2 0..3 (ties to the higher); None without tissue."""
        return majority_class(self.her2_pixel_counts)

    @property
    def letters(self) -> str:
        """Stain letters present: N, F, W, S for HER2 0..3 holding >= ``min_letter_fraction``."""
        n = self.analysed_pixels
        if n == 0:
            return ""
        return "".join(
            STAIN_LETTERS[k]
            for k, v in enumerate(self.her2_pixel_counts)
            if v > 0 and v / n >= self.min_letter_fraction
        )

    @property
    def label(self) -> str:
        """The paper's label, e.g. ``NFW/1+``; ``""`` without tissue."""
        tc = self.tile_class
        return "" if tc is None else f"{self.letters}/{SCORE_NAMES[tc]}"

    def guideline_class(self, rule: GuidelineRule | str, level: str = "pixel") -> int | None:
        """The tile's own class by a guideline rule on its pixel (or cell) counts; None if empty.

        The adapted reading of Algorithm 1's tile class for membrane stains
        (``aggregation="paper-adapted"``): the highest class reaching the rule's
        percentage, instead of the majority class, which on a membrane stain
        is almost always the unstained one.
        """
        counts = self._level_counts(level)
        if sum(counts) == 0:
            return None
        return guideline_score(counts, rule)

    @property
    def counts_toward_score(self) -> bool:
        """False when the H&E partner is called non-tumor or the tile holds no tissue."""
        return self.tumor is not False and self.analysed_pixels > 0

    @property
    def classifier_agrees(self) -> bool | None:
        """Whether the stain classifier L gives the segmentation majority; None if either is absent."""
        if self.classifier_class is None or self.tile_class is None:
            return None
        return self.classifier_class == self.tile_class

    @property
    def class_percentages(self) -> dict[str, float]:
        """Percent of analysed (tissue) pixels at HER2 0, 1+, 2+, 3+ (sum 100, or all 0)."""
        return class_percentages(self.her2_pixel_counts)

    @property
    def background_percent(self) -> float:
        """Percent of the tile area that is background (class 0)."""
        return self.coverage[0]

    @property
    def h_score(self) -> float:
        """Pixel-level H-score of the tile."""
        return h_score(self.her2_pixel_counts)

    @property
    def percent_positive(self) -> float:
        """Percent of analysed pixels at 2+ or 3+."""
        return _percent_positive(self.her2_pixel_counts)

    def percentages(self, level: str = "pixel") -> dict[str, float]:
        """Class percentages over analysed pixels (``"pixel"``) or cells (``"cell"``)."""
        return class_percentages(self._level_counts(level))

    def _level_counts(self, level: str) -> tuple[int, int, int, int]:
        if level == "cell":
            if self.cell_counts is None:
                raise UserInputError(
                    "cell-level scoring needs cell counts on every tile",
                    hint="run the cell analysis or use level='pixel'",
                )
            return self.cell_counts
        if level != "pixel":
            raise UserInputError(f"unknown level {level!r}", hint="use 'pixel' or 'cell'")
        return self.her2_pixel_counts

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for JSON and QuPath measurements)."""
        pct = self.percentages("pixel")
        tc = self.tile_class
        return {
            "row": self.row,
            "col": self.col,
            "pixel_counts": list(self.pixel_counts),
            "n_pixels": self.n_pixels,
            "coverage": list(self.coverage),
            "class_percentages": pct,
            "tile_class": score_name(tc),
            "letters": self.letters,
            "label": self.label,
            "h_score": self.h_score,
            "percent_positive": self.percent_positive,
            "cell_counts": None if self.cell_counts is None else list(self.cell_counts),
            "tumor": self.tumor,
            "tumor_probability": self.tumor_probability,
            "classifier_class": score_name(self.classifier_class),
            "classifier_agrees": self.classifier_agrees,
            "counts_toward_score": self.counts_toward_score,
            "dab_od_mean": self.dab_od_mean,
            "n_nuclei": self.n_nuclei,
            "tissue_pixels": self.tissue_pixels,
        }


def score_class_map(
    x: np.ndarray,
    *,
    min_letter_fraction: float | None = None,
    cell_counts: Sequence[int] | None = None,
    tumor: bool | None = None,
    tumor_probability: float | None = None,
    classifier_class: int | None = None,
    row: int | None = None,
    col: int | None = None,
    dab_od: np.ndarray | None = None,
    n_nuclei: int | None = None,
    tissue_pixels: int | None = None,
) -> TileScore:
    """Count a pixel-class map (values 0..4, see :func:`her2_qupath.stain.dab_class_map`).

    ``dab_od`` (same shape) adds the mean DAB OD of the tissue pixels.
    """
    a = np.asarray(x)
    if a.ndim != 2:
        raise UserInputError(f"class map must be 2-D, got shape {a.shape}", hint="pass one tile")
    if a.size and (a.min() < 0 or a.max() > 4):
        raise UserInputError(
            f"class map values must be 0..4, found {int(a.min())}..{int(a.max())}",
            hint="0 background, 1..4 for HER2 0..3+",
        )
    counts = np.bincount(a.ravel().astype(np.intp, copy=False), minlength=5)
    dab_mean = None
    if dab_od is not None:
        d = np.asarray(dab_od)
        if d.shape != a.shape:
            raise UserInputError(
                f"dab_od shape {d.shape} differs from the class map's {a.shape}",
                hint="pass the DAB channel of the same tile",
            )
        tissue = a > 0
        dab_mean = float(d[tissue].mean(dtype=np.float64)) if tissue.any() else None
    return TileScore(
        tuple(int(v) for v in counts[:5]),  # type: ignore[arg-type]
        int(a.size),
        None if cell_counts is None else tuple(int(v) for v in cell_counts),  # type: ignore[arg-type]
        tumor,
        tumor_probability,
        classifier_class,
        ScoringConfig().min_letter_fraction if min_letter_fraction is None else min_letter_fraction,
        row,
        col,
        dab_mean,
        None if n_nuclei is None else int(n_nuclei),
        None if tissue_pixels is None else int(tissue_pixels),
    )


def _percent_positive(her2_counts: Sequence[int] | np.ndarray) -> float:
    c = _counts4(her2_counts)
    total = int(c.sum())
    return 0.0 if total == 0 else float(100.0 * (c[2] + c[3]) / total)


class PaperScore(NamedTuple):
    """Algorithm 1's outputs: ``WSI_score`` (0..3) and ``WSI%``."""

    score: int
    percent_positive: float


def algorithm1(tile_classes: Sequence[int] | np.ndarray) -> int | None:
    """Algorithm 1 on a histogram of tile classes (tiles at 0, 1+, 2+, 3+).

    The highest class among tiles scored 2+ or 3+, else the majority tile
    class (ties to the higher); None without tiles.
    """
    hist = _counts4(tile_classes, "tile class histogram")
    if hist[3] > 0:
        return 3
    if hist[2] > 0:
        return 2
    return majority_class(hist)


def paper_slide_score(tile_scores: Iterable[TileScore]) -> PaperScore:
    """The seed paper's Algorithm 1 over tiles: ``(WSI_score, WSI%)``.

    Only tiles that count toward the score are used (tissue present, H&E
    partner not called non-tumor). ``WSI_score`` is the highest tile class among
    tiles scored 2+ or 3+, else the majority tile class; ``WSI%`` is
    ``100 * (2+ and 3+ pixels) / analysed pixels`` over those tiles. Without
    any such tile the result is ``(0, 0.0)`` (``aggregate(...).n_tiles`` and
    ``algorithm1`` tell an empty slide apart).
    """
    hist = np.zeros(4, dtype=np.int64)
    px = np.zeros(4, dtype=np.int64)
    for t in tile_scores:
        if not isinstance(t, TileScore):
            raise UserInputError(
                f"expected TileScore objects, got {type(t).__name__}",
                hint="score tiles with score_class_map first",
            )
        tc = t.tile_class
        if t.counts_toward_score and tc is not None:
            hist[tc] += 1
            px += t.her2_pixel_counts
    score = algorithm1(hist)
    return PaperScore(0 if score is None else score, _percent_positive(px))


@dataclass(frozen=True)
class RegionScore:
    """Scores of a region (a ROI, or the slide) aggregated from tile counts.

    ``pixel_counts`` sums the tiles' classes 0..4, ``cell_counts`` their cells
    at 0..3+ (None at pixel level without cells), ``tile_classes`` the number of
    counted tiles at each tile class. Everything else derives from these sums,
    so regions combine exactly (:func:`combine_regions`).
    """

    name: str
    rule: GuidelineRule
    level: str
    aggregation: str
    pixel_counts: tuple[int, int, int, int, int]
    cell_counts: tuple[int, int, int, int] | None
    tile_classes: tuple[int, int, int, int]
    n_tiles: int
    n_tiles_excluded: int
    n_classified: int = 0  # tiles with a stain-classifier result
    n_agree: int = 0  # of those, agreeing with the segmentation majority
    extra: Mapping[str, Any] = field(default_factory=dict)
    n_nuclei: int | None = None  # nuclei found in the analysed tissue (cells at cell level)
    tissue_pixels: int | None = None  # pixels holding any tissue, scored or not
    #: why the region cannot be scored (too little tissue, too few cells, no white point);
    #: empty when it can. See :func:`evaluability`.
    not_evaluable: tuple[str, ...] = ()

    @property
    def guideline(self) -> str:
        """Name of the guideline rule."""
        return self.rule.name

    @property
    def counts(self) -> tuple[int, int, int, int]:
        """The counts scored at this level: cells (cell level) or tissue pixels."""
        if self.level == "cell":
            return self.cell_counts or (0, 0, 0, 0)
        return self.pixel_counts[1:]  # type: ignore[return-value]

    @property
    def n_cells(self) -> int | None:
        return None if self.cell_counts is None else int(sum(self.cell_counts))

    @property
    def analysed_pixels(self) -> int:
        return int(sum(self.pixel_counts[1:]))

    @property
    def class_percentages(self) -> dict[str, float]:
        return class_percentages(self.counts)

    @property
    def percent_positive(self) -> float:
        """The paper's WSI%: 100 * (2+ and 3+ pixels) / analysed pixels."""
        return _percent_positive(self.pixel_counts[1:])

    @property
    def h_score(self) -> float:
        return h_score(self.counts)

    @property
    def guideline_score(self) -> int:
        return guideline_score(self.counts, self.rule)

    @property
    def paper_score(self) -> int | None:
        """Algorithm 1's slide score from the tile-class histogram (None without tiles)."""
        return algorithm1(self.tile_classes)

    @property
    def evaluable(self) -> bool:
        return not self.not_evaluable

    @property
    def score(self) -> int | None:
        """The reported score: guideline rule, or Algorithm 1; None when not evaluable."""
        if self.not_evaluable:
            return None
        if self.aggregation in ("paper", "paper-adapted"):
            p = self.paper_score
            return 0 if p is None else p
        return self.guideline_score

    @property
    def her2_score(self) -> str:
        """``"0"``, ``"1+"``, ``"2+"``, ``"3+"`` or ``"not evaluable"``."""
        sc = self.score
        return NOT_EVALUABLE if sc is None else SCORE_NAMES[sc]

    @property
    def classifier_agreement(self) -> float | None:
        """Fraction of classified tiles whose stain-classifier class equals the segmentation majority."""
        return None if self.n_classified == 0 else self.n_agree / self.n_classified

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "her2_score": self.her2_score,
            "guideline": self.guideline,
            "guideline_reference": self.rule.reference,
            "level": self.level,
            "aggregation": self.aggregation,
            "class_percentages": self.class_percentages,
            "percent_positive": self.percent_positive,
            "h_score": self.h_score,
            "guideline_score": SCORE_NAMES[self.guideline_score],
            "paper_score": score_name(self.paper_score),
            "n_tiles": self.n_tiles,
            "n_tiles_excluded": self.n_tiles_excluded,
            "n_cells": self.n_cells,
            "analysed_pixels": self.analysed_pixels,
            "pixel_counts": list(self.pixel_counts),
            "cell_counts": None if self.cell_counts is None else list(self.cell_counts),
            "tile_classes": dict(zip(SCORE_NAMES, self.tile_classes, strict=True)),
            "classifier_agreement": self.classifier_agreement,
            "n_nuclei": self.n_nuclei,
            "her2_expression": expression_group(self.score, self.class_percentages),
            "evaluable": self.evaluable,
            "not_evaluable_reasons": list(self.not_evaluable),
            **dict(self.extra),
        }


def _t4(a: Any) -> tuple[int, int, int, int]:
    v = [int(x) for x in a]
    return (v[0], v[1], v[2], v[3])


def _t5(a: Any) -> tuple[int, int, int, int, int]:
    v = [int(x) for x in a]
    return (v[0], v[1], v[2], v[3], v[4])


def _check_config(config: ScoringConfig) -> None:
    if config.guideline not in GUIDELINES:
        raise UserInputError(
            f"unknown guideline {config.guideline!r}",
            hint=f"choose one of {', '.join(GUIDELINES)}",
        )
    if config.level not in ("pixel", "cell"):
        raise UserInputError(f"unknown level {config.level!r}", hint="use 'pixel' or 'cell'")
    if config.aggregation not in ("guideline", "paper", "paper-adapted"):
        raise UserInputError(
            f"unknown aggregation {config.aggregation!r}",
            hint="use 'guideline', 'paper' or 'paper-adapted'",
        )


def aggregate(
    tile_scores: Iterable[TileScore],
    config: ScoringConfig | GuidelineRule | str | None = None,
    *,
    level: str | None = None,
    aggregation: str | None = None,
    name: str = "slide",
) -> RegionScore:
    """Aggregate tiles into a region score by summing their counts.

    ``config`` is a :class:`ScoringConfig` (default ``ScoringConfig()``), or a
    guideline (a :class:`GuidelineRule` or its name) used with the default
    config; ``level`` and ``aggregation`` override the config's.
    With ``config.exclude_non_tumor`` tiles whose H&E partner is non-tumor
    (``tumor is False``) are left out and counted in ``n_tiles_excluded``.
    At cell level every counted tile must carry cell counts.
    """
    rule: GuidelineRule | None = None
    if config is None:
        config = ScoringConfig()
    elif isinstance(config, GuidelineRule):
        rule = config
        config = ScoringConfig()
    elif isinstance(config, str):
        config = ScoringConfig(guideline=config)  # type: ignore[arg-type]
    if level is not None or aggregation is not None:
        config = replace(
            config,
            level=level if level is not None else config.level,  # type: ignore[arg-type]
            aggregation=aggregation if aggregation is not None else config.aggregation,  # type: ignore[arg-type]
        )
    if rule is None:
        _check_config(config)
        rule = GUIDELINES[config.guideline]
    else:
        _check_config(replace(config, guideline="breast"))
    px = np.zeros(5, dtype=np.int64)
    cells = np.zeros(4, dtype=np.int64)
    hist = np.zeros(4, dtype=np.int64)
    have_cells = True
    n = excluded = n_cls = n_agree = 0
    nuclei: int | None = 0
    tissue_px: int | None = 0
    for t in tile_scores:
        if config.exclude_non_tumor and t.tumor is False:
            excluded += 1
            continue
        n += 1
        px += t.pixel_counts
        if t.cell_counts is None:
            have_cells = False
        else:
            cells += t.cell_counts
        if t.n_nuclei is None:
            nuclei = None
        elif nuclei is not None:
            nuclei += t.n_nuclei
        if t.tissue_pixels is None:
            tissue_px = None
        elif tissue_px is not None:
            tissue_px += t.tissue_pixels
        if config.aggregation == "paper-adapted":
            tc = t.guideline_class(rule, config.level) if t.counts_toward_score else None
        else:
            tc = t.tile_class
        if tc is not None:
            hist[tc] += 1
        if t.classifier_agrees is not None:
            n_cls += 1
            n_agree += int(t.classifier_agrees)
    if config.level == "cell" and n and not have_cells:
        raise UserInputError(
            "cell-level scoring needs cell counts on every tile",
            hint="run the cell analysis or use level='pixel'",
        )
    return RegionScore(
        name=name,
        rule=rule,
        level=config.level,
        aggregation=config.aggregation,
        pixel_counts=tuple(int(v) for v in px),  # type: ignore[arg-type]
        cell_counts=tuple(int(v) for v in cells) if (have_cells and n) else None,  # type: ignore[arg-type]
        tile_classes=tuple(int(v) for v in hist),  # type: ignore[arg-type]
        n_tiles=n,
        n_tiles_excluded=excluded,
        n_classified=n_cls,
        n_agree=n_agree,
        n_nuclei=nuclei if n else None,
        tissue_pixels=tissue_px if n else None,
    )


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


def evaluability(region: RegionScore, *, pixel_area_um2: float,
                 config: ScoringConfig | None = None) -> tuple[str, ...]:
    """Why ``region`` cannot be scored, or ``()``: no evidence is not a negative.

    * less analysed tissue than ``config.min_tissue_mm2`` (a region drawn on
      glass, a fold, a tiny fragment);
    * fewer nuclei (cells at cell level) than ``config.min_cells`` in it: a
      percentage of tumour cells needs cells to count.

    ``pixel_area_um2`` is the area of one analysed pixel (working µm/px squared).
    """
    config = config or ScoringConfig()
    reasons = []
    tissue_mm2 = region.analysed_pixels * pixel_area_um2 * 1e-6
    if tissue_mm2 < config.min_tissue_mm2:
        reasons.append(f"too little tissue: {tissue_mm2:.4f} mm² analysed "
                       f"(at least {config.min_tissue_mm2:g} mm² needed)")
    cells = region.n_cells if region.level == "cell" else region.n_nuclei
    if cells is not None and cells < config.min_cells and not reasons:
        what = "cells detected" if region.level == "cell" else "nuclei found"
        reasons.append(f"too few cells: {cells} {what} (at least {config.min_cells} needed)")
    return tuple(reasons)


def combine_regions(regions: Sequence[RegionScore], *, name: str = "slide") -> RegionScore:
    """Sum region scores into one (region -> slide); all must share guideline, level, aggregation."""
    if not regions:
        raise UserInputError("no regions to combine", hint="score at least one region")
    first = regions[0]
    for r in regions[1:]:
        if (r.rule, r.level, r.aggregation) != (first.rule, first.level, first.aggregation):
            raise UserInputError(
                "regions scored with different settings cannot be combined",
                hint="score every region with the same guideline, level and aggregation",
            )
    px = np.sum([r.pixel_counts for r in regions], axis=0)
    hist = np.sum([r.tile_classes for r in regions], axis=0)
    cells: tuple[int, int, int, int] | None = None
    cell_list = [r.cell_counts for r in regions]
    if all(c is not None for c in cell_list):
        cells = _t4(np.sum(np.array(cell_list, dtype=np.int64), axis=0))
    return replace(
        first,
        name=name,
        pixel_counts=_t5(px),
        cell_counts=cells,
        tile_classes=_t4(hist),
        n_tiles=sum(r.n_tiles for r in regions),
        n_tiles_excluded=sum(r.n_tiles_excluded for r in regions),
        n_classified=sum(r.n_classified for r in regions),
        n_agree=sum(r.n_agree for r in regions),
        n_nuclei=None if any(r.n_nuclei is None for r in regions)
        else sum(int(r.n_nuclei or 0) for r in regions),
        tissue_pixels=None if any(r.tissue_pixels is None for r in regions)
        else sum(int(r.tissue_pixels or 0) for r in regions),
        not_evaluable=(),
        extra={},
    )
