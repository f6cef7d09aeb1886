"""One tile's stain analysis: :class:`TileScore` and the count of a pixel-class map."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import STAIN_LETTERS, GuidelineRule, ScoringConfig
from ..errors import UserInputError
from .rules import (
    SCORE_NAMES,
    _counts4,
    _percent_positive,
    class_percentages,
    guideline_score,
    h_score,
    majority_class,
    score_name,
)

__all__ = ["TileScore", "score_class_map"]


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
