"""Scores to QuPath objects: the one step from a run's results to what QuPath shows.

A run's domain results become QuPath objects here and nowhere else:

* each tile (:class:`~her2_qupath.pipeline.request.TileAnalysis`, its
  :class:`~her2_qupath.scoring.TileScore`) becomes a tile object classed ``HER2 0`` …
  ``HER2 3+`` (``Ignore*`` when it does not count) with its measurements
  (:func:`tile_objects`, :func:`tile_measurements`, :func:`tile_class_name`), and
  with an H&E partner a second object on the H&E slide classed ``Tumor`` /
  ``Non-tumor``;
* each scored region (:class:`~her2_qupath.scoring.RegionScore`, or the slide) becomes
  an annotation named by its score and HER2 expression group
  (:func:`region_objects`, :func:`region_measurements`);
* a tile's cells (:class:`~her2_qupath.cell_table.CellTable`) become cell features
  as text in level-0 IHC pixels (:func:`cell_features`).

Every object carries the product's marker and the run's id
(:mod:`her2_qupath.qupath.objects`). Geometries are in level-0 pixels of the slide
they belong to; with an H&E partner the H&E geometries are mapped onto the IHC
slide through the registration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import shapely
from shapely.geometry import box

from ..config import GUIDELINES, HER2_CLASSES, ScoringConfig
from ..registration import warp_geometry
from ..scoring import expression_group, guideline_score
from .geojson import QuPathObject
from .objects import RUN_KEY, annotation_object, product_metadata, product_name, tile_object
from .stream import Detections
from .validate import polygonal_part

if TYPE_CHECKING:
    from ..cell_table import CellTable
    from ..pipeline.request import TileAnalysis
    from ..scoring import RegionScore, TileScore

__all__ = [
    "cell_features",
    "clipped",
    "region_measurements",
    "region_objects",
    "region_union",
    "tile_class_name",
    "tile_her2_class",
    "tile_measurements",
    "tile_objects",
]


def tile_her2_class(score: TileScore, scoring: ScoringConfig) -> int | None:
    """A tile's own HER2 class (0–3), by the run's rule: the guideline rule on the tile's
    pixel or cell counts, or with ``aggregation="paper"`` the paper's majority stain class.
    None when the tile has nothing to score (no stained tissue, or no cell at cell level)."""
    if scoring.aggregation == "paper":
        return score.tile_class
    counts = score.cell_counts if scoring.level == "cell" else score.her2_pixel_counts
    if counts is None or sum(counts) == 0:
        return None
    return guideline_score(counts, GUIDELINES[scoring.guideline])


def tile_class_name(score: TileScore, scoring: ScoringConfig) -> str:
    """``HER2 0`` … ``HER2 3+``, or QuPath's ``Ignore*`` for tiles that do not count."""
    k = tile_her2_class(score, scoring)
    if not score.counts_toward_score or k is None:
        return "Ignore*"
    return HER2_CLASSES[k]


def tile_measurements(score: TileScore) -> dict[str, float]:
    """A tile object's measurements: class percentages, DAB, H-score, cells, model calls."""
    m = {f"HER2 {k}: %": float(v) for k, v in score.class_percentages.items()}
    m["Background: %"] = float(score.background_percent)
    m["DAB: Mean OD"] = float("nan") if score.dab_od_mean is None else float(score.dab_od_mean)
    m["H-score"] = float(score.h_score)
    m["HER2 majority stain class"] = float("nan") if score.tile_class is None else float(score.tile_class)
    if score.cell_counts is not None:
        m["Num cells"] = float(sum(score.cell_counts))
        m.update({f"Cells HER2 {k}: %": float(v) for k, v in score.percentages("cell").items()})
    if score.tumor_probability is not None:
        m["Tumor probability"] = float(score.tumor_probability)
    if score.classifier_class is not None:
        m["Stain classifier class"] = float(score.classifier_class)
    # the run places every tile in its grid before its objects are built
    m["Tile row"] = float(score.row)  # type: ignore[arg-type]
    m["Tile column"] = float(score.col)  # type: ignore[arg-type]
    return m


def region_union(roi_geoms: list[Any]) -> Any:
    """The scored regions as one prepared geometry (None: the whole tissue was scored)."""
    if not roi_geoms:
        return None
    union = shapely.union_all(roi_geoms)
    shapely.prepare(union)
    return union


def clipped(polygon: Any, clip: Any) -> Any:
    """``polygon`` cut to ``clip`` (its polygonal part); the polygon itself when nothing is left."""
    if clip is None or clip.contains(polygon):
        return polygon
    part = polygonal_part(polygon.intersection(clip))
    return polygon if part.is_empty else part


def tile_objects(tiles: list[Any], analyses: list[TileAnalysis], transform: Any,
                 scoring: ScoringConfig, run_id: str,
                 clip: Any = None) -> tuple[Sequence[QuPathObject], list[QuPathObject]]:
    """One object per tile (IHC, and H&E with a partner); at the cell level each tile's
    cells follow it (text in the run's spill file, see :class:`qupath.stream.Detections`).
    With ``clip`` (the scored regions, level 0 of the tiled slide) the outlines are cut to it.

    ``tiles`` are :class:`~her2_qupath.tiling.Tile` of the tiled slide (the H&E slide
    when ``transform`` maps H&E → IHC); returns the IHC detections and the H&E ones
    (empty without a transform).
    """
    detections: list[Any] = []
    he_detections: list[Any] = []
    cells: list[tuple[tuple[int, int], int] | None] = []
    spill = None
    meta = {RUN_KEY: run_id}
    for tile, a in zip(tiles, analyses):
        meas = tile_measurements(a.score)
        name = product_name(a.score.label, "tile")
        poly = clipped(tile.polygon, clip)
        if transform is None:
            ihc_poly = poly
        else:
            ihc_poly = warp_geometry(transform, poly)
            he_class = "Tumor" if a.score.tumor is not False else "Non-tumor"
            he_detections.append(tile_object(poly, he_class, meas, name=name, metadata=meta))
        detections.append(tile_object(ihc_poly, tile_class_name(a.score, scoring), meas,
                                      name=name, metadata=meta))
        written = scoring.level == "cell" and a.score.counts_toward_score \
            and a.cell_spill is not None
        cells.append((a.cell_spill[1], a.cell_count) if written else None)  # type: ignore[index]
        if written:
            spill = a.cell_spill[0]  # type: ignore[index]
    if scoring.level == "cell":
        return Detections(detections, spill, cells), he_detections
    return detections, he_detections


def region_measurements(reg: RegionScore) -> dict[str, float]:
    """A region annotation's measurements: class percentages, H-score, score, tiles, cells."""
    meas = {f"HER2 {k}: %": float(v) for k, v in reg.class_percentages.items()}
    meas["H-score"] = float(reg.h_score)
    meas["Percent positive (2+/3+)"] = float(reg.percent_positive)
    meas["HER2 score"] = float("nan") if reg.score is None else float(reg.score)
    meas["Tiles"] = float(reg.n_tiles)
    meas["Tiles excluded"] = float(reg.n_tiles_excluded)
    if reg.n_cells is not None:
        meas["Cells"] = float(reg.n_cells)
    return meas


def region_objects(roi_geoms: list[Any], regions: list[RegionScore], slide_region: RegionScore,
                   dimensions: tuple[int, int], transform: Any,
                   run_id: str) -> tuple[list[QuPathObject], list[QuPathObject]]:
    """One result annotation per ROI (or one for the slide), in IHC coordinates, and with an
    H&E partner the same annotations on the H&E slide (the ROIs as drawn there).

    ``roi_geoms`` are in level-0 pixels of the tiled slide, one per entry of ``regions``;
    without ROIs the slide's annotation covers ``dimensions`` (the tiled slide's).
    """
    if roi_geoms:
        items = list(zip(roi_geoms, regions))
    else:
        items = [(box(0, 0, *dimensions), slide_region)]
    out: list[QuPathObject] = []
    he_out: list[QuPathObject] = []
    for geom, reg in items:
        group = expression_group(reg.score, reg.class_percentages)
        name = product_name(f"{reg.name} HER2 {reg.her2_score}" + (f" ({group})" if group else ""))
        meas = region_measurements(reg)
        meta = {RUN_KEY: run_id, **({"HER2 expression": group} if group else {})}
        if transform is not None:
            he_out.append(annotation_object(geom, f"HER2 {reg.her2_score}", dict(meas), name=name,
                                            metadata=meta))
            geom = warp_geometry(transform, geom)
        out.append(annotation_object(geom, f"HER2 {reg.her2_score}", meas, name=name, metadata=meta))
    return out, he_out


def cell_features(cells: CellTable, tile: Any, transform: Any, run_id: str) -> tuple[str, int]:
    """A tile's cells as GeoJSON feature text in level-0 IHC pixels, and their number.

    ``cells`` are in the tile's working pixels; ``tile`` places them on the tiled
    slide, ``transform`` (H&E → IHC, or None) maps their outlines onto the IHC slide.
    """
    placed = cells.placed((tile.width / tile.size, tile.height / tile.size), (tile.x, tile.y))
    warp = None if transform is None else (lambda g: warp_geometry(transform, g))
    return placed.feature_text(product_metadata(run_id), warp), len(placed)
