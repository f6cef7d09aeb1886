"""What one run takes and gives: the request, the result, a tile's analysis and its parameters.

:class:`ScoreRequest` names the slides, ROIs and :class:`~her2_qupath.config.ScoreOptions`
of one run; :class:`ScoreResult` is what :func:`~her2_qupath.pipeline.run.run_score`
returns (nothing written yet); :class:`TileParams` is what the tile work needs besides
the pixels (plain data: it travels to worker processes) and :class:`TileAnalysis` what
one IHC tile yields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import CellConfig, ScoreOptions, StainConfig

__all__ = ["ScoreRequest", "ScoreResult", "TileAnalysis", "TileParams"]


@dataclass(frozen=True)
class ScoreRequest:
    """The inputs of one run: the IHC slide, optional H&E partner, ROIs, options."""

    ihc: Path
    he: Path | None = None
    ihc_mpp: float | None = None
    he_mpp: float | None = None
    rois: tuple[Any, ...] | None = None  # QuPathObject annotations (IHC coordinates, or H&E with `he`)
    roi_class: str | None = None
    transform: Path | None = None
    options: ScoreOptions = field(default_factory=ScoreOptions)
    #: With an H&E slide, where the ROIs were drawn: "he" (default) or "ihc" (they are
    #: then mapped onto the H&E slide through the registration before tiling).
    roi_space: Literal["he", "ihc"] = "he"


@dataclass
class ScoreResult:
    """What one run gives (nothing written yet): summary, QuPath objects, overlay, pictures."""

    summary: dict[str, Any]
    # tile objects (and at cell level each tile's cells, kept on disk until written:
    # a qupath.stream.Detections that reads like the list of objects)
    detections: Sequence[Any]
    annotations: list[Any]
    he_detections: list[Any]
    overlay: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)  # further PNGs, e.g. heatmaps
    # with an H&E partner: the scored regions on the H&E slide (the ROIs as drawn there)
    he_annotations: list[Any] = field(default_factory=list)
    # with ScoreOptions.record_blocks: per tile (intensity, pixels, mean OD sum) of its blocks
    block_records: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    # the case report's pictures (case_report.Picture: titled, with scale bars)
    pictures: list[Any] = field(default_factory=list)


@dataclass
class TileAnalysis:
    """What one IHC tile yields: its stain class map score and optional cells."""

    score: Any  # scoring.TileScore over the tile (inside the ROIs when there are ROIs)
    cells: Any = None  # cell level: cell_table.CellTable, tile pixels (dropped once written)
    region_scores: dict[int, Any] = field(default_factory=dict)  # ROI index -> TileScore
    # membrane intensity: the class (0..3, -1 background) of each membrane block, for overlays
    blocks: np.ndarray | None = None
    # with TileParams.record_blocks: (intensity, pixels, mean OD sum) of its blocks holding tissue
    block_record: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    # cell level: the cells as GeoJSON feature text (level-0 pixels), made by the tile worker,
    # then moved to the run's spill file (qupath.stream.CellSpill, key)
    cell_text: str | None = None
    cell_spill: tuple[Any, tuple[int, int]] | None = None
    cell_count: int = 0  # the cells in that text


@dataclass(frozen=True)
class TileParams:
    """What tile analysis needs besides the pixels (plain data: it travels to workers)."""

    stain: StainConfig
    cells: CellConfig
    level: str
    vectors: Any  # stain.StainVectors
    background: tuple[float, float, float]
    mpp: float
    min_letter_fraction: float
    margin_px: int = 0  # cell level: tiles are read with this margin (see CellConfig)
    record_blocks: bool = False  # keep the membrane blocks' measures (calibration)
