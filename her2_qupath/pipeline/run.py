"""One run: :func:`run_score` from the request to the result, and the result's assembly.

The steps (see :mod:`her2_qupath.pipeline`): open the slides, choose the ROIs, find
the white point, tissue and stain vectors (:mod:`.inputs`), warn about what looks
wrong (:mod:`.qc`), register the H&E slide, build the tile grid, run the tile work
(:mod:`.work`, :mod:`.tiles`), aggregate tile → region → slide, and assemble the
summary, the QuPath objects (:mod:`her2_qupath.qupath.builder`), the pictures
(:mod:`.pictures`) and the provenance record (:mod:`.provenance`).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import threading
import time
import uuid
from typing import Any

import numpy as np

from .._types import ProgressCallback
from ..config import GUIDELINES
from ..errors import UserInputError
from ..qupath.builder import region_objects, region_union, tile_objects
from ..registration import render_registration, warp_geometry
from ..scoring import EXPRESSION_GROUP_RULE, aggregate
from ..slide import open_slide
from ..tiling import tile_grid
from ..tissue import detect_tissue
from .inputs import (
    _check_models,
    _get_transform,
    _select_rois,
    _stain_vectors,
    _white_point_and_tissue,
)
from .pictures import OVERLAY_MAX_SIZE, _overlay
from .provenance import _provenance, input_files_later
from .qc import _excluded_warnings, _judged, _qc_warnings, _stain_warnings
from .request import ScoreRequest, ScoreResult, TileAnalysis, TileParams
from .tiles import _check_cancel
from .work import (
    _analyse_tiles,
    _classify_he_tiles,
    _classify_stain_tiles,
    prestart_cell_workers,
)

__all__ = ["run_score"]

log = logging.getLogger(__name__)


def run_score(
    request: ScoreRequest,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    executor: cf.Executor | None = None,
) -> ScoreResult:
    """Score one IHC slide (with its H&E partner when given). Writes nothing."""
    t_start = time.perf_counter()
    run_id = str(uuid.uuid4())  # cancels its tiles, marks its objects, names its provenance
    opts = request.options
    if opts.scoring.guideline not in GUIDELINES:
        raise UserInputError(f"unknown guideline {opts.scoring.guideline!r}",
                             hint=f"choose one of {', '.join(GUIDELINES)}")
    if request.roi_space not in ("he", "ihc"):
        raise UserInputError(f"unknown roi_space {request.roi_space!r}", hint="use 'he' or 'ihc'")
    _check_models(opts)
    if opts.seg_model is None:  # with the segmenter M the tiles are analysed in this process
        prestart_cell_workers(opts.scoring.level, executor)
    ihc = open_slide(request.ihc, mpp=request.ihc_mpp)
    he = open_slide(request.he, mpp=request.he_mpp) if request.he is not None else None
    try:
        ihc_mpp = ihc.mpp  # raises MPPMissing naming --mpp
        roi_geoms, roi_names = _select_rois(request)
        ihc_thumb, white, ihc_tissue = _white_point_and_tissue(ihc, opts)
        thumb_tissue = ihc_tissue.mask
        background = white.rgb
        vectors = _stain_vectors(opts, ihc_thumb, thumb_tissue, background)
        warnings = _stain_warnings(ihc_thumb, thumb_tissue, background, he, opts)
        warnings += _qc_warnings(white, vectors, ihc_tissue, opts)
        _check_cancel(cancel)

        transform = None
        transform_info: dict[str, Any] | None = None
        he_probs: np.ndarray | None = None
        if he is None:
            grid = tile_grid(ihc.dimensions, ihc_mpp, opts.tiling, tissue=ihc_tissue,
                             rois=roi_geoms or None)
        else:
            he_mpp = he.mpp
            transform, transform_info = _get_transform(request, he, ihc)
            if request.roi_space == "ihc" and roi_geoms:
                roi_geoms = [warp_geometry(transform, g, inverse=True) for g in roi_geoms]
            he_tissue = detect_tissue(he, opts.tissue)
            grid = tile_grid(he.dimensions, he_mpp, opts.tiling, tissue=he_tissue,
                             rois=roi_geoms or None)
        tiles = list(grid.tiles)
        if not tiles:
            warnings.append("no tissue found " + ("inside the regions of interest" if roi_geoms
                                                  else "on the slide") + ": not evaluable")
            log.warning(warnings[-1])
        log.info("scoring %d tiles of %s", len(tiles), request.ihc)
        total_steps = len(tiles) * (2 if (he is not None and opts.tumor_model) else 1)
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(min(done, total_steps), total_steps)

        if progress is not None:
            progress(0, total_steps)
        tumor_calls = None
        if he is not None and opts.tumor_model and tiles:
            tumor_calls = _classify_he_tiles(he, grid, opts, step, cancel)
            he_probs = tumor_calls.probs

        params = TileParams(opts.stain, opts.cells, opts.scoring.level, vectors,
                            tuple(float(b) for b in background), opts.tiling.mpp,
                            opts.scoring.min_letter_fraction,
                            round(opts.cells.tile_margin_um / opts.tiling.mpp),
                            record_blocks=opts.record_blocks)
        inputs = input_files_later(request)  # hashed while the tiles are analysed
        analyses = _analyse_tiles(request, tiles, params, transform, roi_geoms, opts, step,
                                  cancel, executor, run_id)
        stain_cls = _classify_stain_tiles(request, tiles, params, transform, opts, cancel) \
            if (opts.stain_model and tiles) else None
        _check_cancel(cancel)
        result = _assemble(request, ihc, he, grid, tiles, analyses, he_probs, stain_cls,
                           roi_geoms, roi_names, transform, transform_info, ihc_thumb,
                           white, vectors, time.perf_counter() - t_start, warnings, run_id,
                           inputs)
        if opts.record_blocks:
            result.block_records = [a.block_record for a in analyses if a.block_record is not None]
        if transform is not None:
            result.images["registration"] = render_registration(
                he.thumbnail(max_size=OVERLAY_MAX_SIZE), ihc.thumbnail(max_size=OVERLAY_MAX_SIZE),
                transform, max_size=OVERLAY_MAX_SIZE)
        if tumor_calls is not None:
            result.images.update(tumor_calls.images)
            for obj, extra in zip(result.he_detections, tumor_calls.measurements):
                obj.measurements.update(extra)
        return result
    finally:
        ihc.close()
        if he is not None:
            he.close()


def _assemble(request: ScoreRequest, ihc: Any, he: Any, grid: Any, tiles: list[Any],
              analyses: list[TileAnalysis], he_probs: np.ndarray | None,
              stain_cls: np.ndarray | None, roi_geoms: list[Any], roi_names: list[str],
              transform: Any, transform_info: dict[str, Any] | None, ihc_thumb: np.ndarray,
              white: Any, vectors: Any, seconds: float,
              warnings: list[str], run_id: str,
              inputs: cf.Future[dict[str, Any]] | None = None) -> ScoreResult:
    opts = request.options
    rule = GUIDELINES[opts.scoring.guideline]
    # T = x (+) x1 (+) x2: the class map's majority, the H&E tumour call and the stain
    # classifier travel together on each TileScore; aggregate() leaves out tiles whose
    # H&E partner is not tumour and reports classifier agreement.
    for i, a in enumerate(analyses):
        prob = None if he_probs is None else float(he_probs[i])
        extra = {
            "tumor": None if prob is None else prob >= opts.model.tumor_threshold,
            "tumor_probability": prob,
            "classifier_class": None if stain_cls is None else int(stain_cls[i]),
            "row": tiles[i].row, "col": tiles[i].col,
        }
        a.score = dataclasses.replace(a.score, **extra)
        a.region_scores = {r: dataclasses.replace(sc, **extra) for r, sc in a.region_scores.items()}
    scores = [a.score for a in analyses]
    background = white.rgb
    slide_region = _judged(aggregate(scores, opts.scoring, name="Slide"), white, opts)
    regions = [_judged(aggregate([a.region_scores[r] for a in analyses if r in a.region_scores],
                                 opts.scoring, name=name), white, opts)
               for r, name in enumerate(roi_names)]
    if not slide_region.evaluable:
        warnings = warnings + [f"not evaluable: {'; '.join(slide_region.not_evaluable)}"]
    warnings = warnings + _excluded_warnings(slide_region, opts)
    for reg in regions:
        if not reg.evaluable and len(regions) > 1:
            warnings = warnings + [f"{reg.name} not evaluable: {'; '.join(reg.not_evaluable)}"]
    use_cells = opts.scoring.level == "cell"
    clip = region_union(roi_geoms) if opts.clip_tiles else None
    detections, he_detections = tile_objects(tiles, analyses, transform, opts.scoring, run_id, clip)
    annotations, he_annotations = region_objects(
        roi_geoms, regions, slide_region, ihc.dimensions if he is None else he.dimensions,
        transform, run_id)
    reliable = (True if transform_info is None else bool(transform_info["reliable"])) \
        and bool(white.reliable)
    summary = {
        "her2_score": slide_region.her2_score,
        "evaluable": slide_region.evaluable,
        "not_evaluable_reasons": list(slide_region.not_evaluable),
        "her2_expression": slide_region.to_dict()["her2_expression"],
        "her2_expression_rule": EXPRESSION_GROUP_RULE,
        "guideline": rule.name,
        "guideline_reference": rule.reference,
        "level": opts.scoring.level,
        "aggregation": opts.scoring.aggregation,
        "class_percentages": slide_region.class_percentages,
        "percent_positive": slide_region.percent_positive,
        "h_score": slide_region.h_score,
        "guideline_score": slide_region.to_dict()["guideline_score"],
        "paper_score": slide_region.to_dict()["paper_score"],
        "n_tiles": len(tiles),
        "n_tiles_counted": slide_region.n_tiles,
        "n_cells": slide_region.n_cells if use_cells else None,
        "n_nuclei": slide_region.n_nuclei,
        "tissue_mm2": round(slide_region.analysed_pixels * opts.tiling.mpp ** 2 * 1e-6, 6),
        "intensity": opts.stain.intensity,
        "thresholds": list(opts.stain.membrane_thresholds if opts.stain.intensity == "membrane"
                           else opts.stain.thresholds),
        "white_point": white.to_dict(),
        "calibration": opts.calibration,
        "tile_classes": slide_region.to_dict()["tile_classes"],
        "regions": [r.to_dict() for r in (regions or [slide_region])],
        "sources": {
            "tumor": "model C" if he_probs is not None else
                     ("ROI annotations" if roi_geoms else "all tissue"),
            "stain_map": "model M" if opts.seg_model else (
                "membrane line density" if opts.stain.intensity == "membrane"
                else "colour deconvolution (DAB OD)"),
            "stain_classifier": "model L" if stain_cls is not None else None,
            "mapping": None if transform_info is None else transform_info["source"],
        },
        "classifier_agreement": slide_region.classifier_agreement,
        "warnings": warnings + ([] if transform_info is None or transform_info["reliable"] else [
            "registration quality is poor: the mapped IHC regions may not show the H&E tiles' "
            "tissue; check registration.png"]),
        "registration": transform_info,
        "reliable": reliable,
        "slide": {"path": str(request.ihc), "dimensions": list(ihc.dimensions), "mpp": ihc.mpp},
        "he_slide": None if he is None else {"path": str(request.he),
                                            "dimensions": list(he.dimensions), "mpp": he.mpp},
        "grid": {"rows": grid.n_rows, "cols": grid.n_cols, "tile_size": opts.tiling.tile_size,
                 "mpp": opts.tiling.mpp},
        "provenance": _provenance(request, background, vectors, seconds, run_id,
                                  None if inputs is None else inputs.result()),
    }
    overlay, pictures = _overlay(ihc, he, tiles, analyses, transform, summary, opts, vectors,
                                 background, roi_geoms)
    return ScoreResult(summary, detections, annotations, he_detections, overlay,
                       he_annotations=he_annotations, pictures=pictures)
