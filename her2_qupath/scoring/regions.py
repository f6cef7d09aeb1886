"""Region and slide scores: tile counts summed into a :class:`RegionScore`, and evaluability."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..config import GUIDELINES, GuidelineRule, ScoringConfig
from ..errors import UserInputError
from .paper import algorithm1
from .rules import (
    NOT_EVALUABLE,
    SCORE_NAMES,
    _percent_positive,
    class_percentages,
    expression_group,
    guideline_score,
    h_score,
    score_name,
)
from .tiles import TileScore

__all__ = ["RegionScore", "aggregate", "evaluability", "combine_regions"]


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
