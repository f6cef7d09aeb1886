"""A run's inputs made ready: ROIs, the white point and tissue, stain vectors, the registration.

Everything here is read from the request and the slides' thumbnails before any
tile is analysed: the regions of interest chosen from the QuPath annotations, the
slide's white point and tissue mask (one thumbnail read), the stain vectors (given,
estimated or QuPath's defaults), the H&E → IHC transform (loaded or registered),
and the check that each model directory fits the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ScoreOptions
from ..errors import UserInputError
from ..models.io import check_tiling, validate_model_dir
from ..optics import estimate_white_point, glass_mask
from ..qupath.objects import rois_from_objects
from ..registration import Transform, check_transform_fits, register_slides
from ..stain import StainVectors, estimate_vectors
from ..tissue import TissueMask, slide_thumbnail, tissue_mask_from_rgb
from .request import ScoreRequest

__all__: list[str] = []

log = logging.getLogger(__name__)


def _select_rois(request: ScoreRequest) -> tuple[list[Any], list[str]]:
    """ROI geometries and their names; empty when the whole tissue is scored."""
    if not request.rois:
        if request.roi_class:
            raise UserInputError(
                f"--roi-class {request.roi_class!r} given but no ROIs were supplied",
                hint="pass --roi with a QuPath GeoJSON export of the annotations",
            )
        return [], []
    selected = rois_from_objects(list(request.rois), roi_class=request.roi_class)
    if not selected and request.roi_class is None:
        raise UserInputError(
            f"none of the {len(request.rois)} ROI objects is an annotation with an area",
            hint="export the tumour annotations (polygons, not points or lines) from QuPath",
        )
    if not selected:
        classes = sorted({o.class_name or "unclassified" for o in request.rois})
        raise UserInputError(
            f"no annotation of class {request.roi_class!r} among the {len(request.rois)} ROIs",
            hint=f"classes present: {', '.join(classes) or 'none'}; check --roi-class",
        )
    geoms = [g for g, _ in selected]
    names = [n or f"Region {i + 1}" for i, (_, n) in enumerate(selected)]
    return geoms, names


def _stain_vectors(options: ScoreOptions, thumb: np.ndarray, tissue_mask: np.ndarray,
                   background: Any) -> Any:
    if options.stain_vectors:
        return StainVectors.from_qupath(options.stain_vectors)
    if options.stain.estimate_vectors:
        estimated = estimate_vectors(thumb, tissue_mask, background=background, config=options.stain)
        if estimated is not None:
            return estimated
        log.warning("stain vectors could not be estimated from the slide; using the defaults")
    return StainVectors.default(options.stain)


def _white_point_and_tissue(slide: Any, opts: ScoreOptions) -> tuple[np.ndarray, Any, Any]:
    """The slide's analysis thumbnail, its white point and its tissue mask (one thumbnail read).

    The white point is the user's (``StainConfig.background``), the stain
    string's ``Background``, else estimated from the glass (:mod:`her2_qupath.optics`).
    """
    thumb, ds, level0_mpp = slide_thumbnail(slide, opts.tissue)
    thumb_mpp = level0_mpp * ds
    string_bg = None
    if opts.stain_vectors:
        string_bg = StainVectors.from_qupath(opts.stain_vectors).background
    glass = glass_mask(thumb, thumb_mpp, opts.tissue)
    white = estimate_white_point(thumb, thumb_mpp, config=opts.tissue, user=opts.stain.background,
                                 stain_string=string_bg, glass=glass)
    log.info("white point %s (%s; %s)", [round(x, 1) for x in white.rgb], white.source, white.note)
    mask = tissue_mask_from_rgb(thumb, thumb_mpp, opts.tissue, white=white, glass=glass)
    log.info("tissue: %.1f %% of a %dx%d thumbnail (%.2f um/px)", 100.0 * mask.mean(),
             thumb.shape[1], thumb.shape[0], thumb_mpp)
    return thumb, white, TissueMask(mask, ds, thumb_mpp)


def _check_models(opts: ScoreOptions) -> None:
    """Each model directory is complete and was trained on tiles of this run's field of view."""
    for name, kind in (("tumor_model", "tumor"), ("stain_model", "stain"), ("seg_model", "segmenter")):
        path = getattr(opts, name)
        if path is not None:
            check_tiling(validate_model_dir(path, expected_kind=kind), opts.tiling.tile_size,
                         opts.tiling.mpp, where=f"the {kind} model {path}")


def _get_transform(request: ScoreRequest, he: Any, ihc: Any) -> tuple[Any, dict[str, Any]]:
    if request.transform is not None:
        transform = Transform.from_json(Path(request.transform))
        check_transform_fits(transform, he.dimensions, ihc.dimensions)
        source = str(request.transform)
    else:
        transform = register_slides(request.he, request.ihc, request.options.registration,  # type: ignore[arg-type]
                                    fixed_mpp=request.he_mpp, moving_mpp=request.ihc_mpp)
        source = "registered"
    quality = dict(getattr(transform, "quality", {}) or {})
    reliable = bool(quality.get("reliable", True))
    if not reliable:
        log.warning("registration quality is poor (%s): mapped results are marked unreliable", quality)
    return transform, {"source": source, "quality": quality, "reliable": reliable}
