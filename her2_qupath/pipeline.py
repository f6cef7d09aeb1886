"""One IHC slide (and optionally its H&E partner) in, one scored result out.

The pipeline follows the paper's system and the clinical rules:

1. open the IHC slide (and the H&E slide), detect tissue on thumbnails;
2. build the tile grid ``P_R(S)`` inside tissue and inside the regions of
   interest (ROIs from QuPath annotations; without ROIs all tissue counts);
3. with an H&E slide: register H&E → IHC (or load a transform), build the
   grid on the H&E slide and map each H&E tile to its IHC partner
   (``I(p_ij^HE) = p_ij^IHC``), classify the H&E tiles for tumour with the
   model C when given;
4. per IHC tile: a stain class map (segmenter M when given, else colour
   deconvolution), optionally cells with membrane measurements, the stain
   classifier L when given;
5. aggregate tile → region → slide by counts (guideline rules or the paper's
   Algorithm 1) and build QuPath objects, an overlay and a provenance record.

Tile analysis is a pure function of a tile's pixels (:func:`analyse_tile`),
run over chunks of tiles by any ``concurrent.futures.Executor`` — a local
thread pool by default, a Dask cluster's executor to scale out.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import platform
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import __version__
from ._types import ProgressCallback
from .config import (
    GUIDELINES,
    HER2_CLASSES,
    CellConfig,
    ScoreOptions,
    ScoringConfig,
    StainConfig,
)
from .errors import JobCancelled, UserInputError
from .qupath.objects import RUN_KEY, product_metadata, product_name

__all__ = [
    "ScoreOptions",
    "ScoreRequest",
    "ScoreResult",
    "TileAnalysis",
    "TileParams",
    "analyse_tile",
    "run_score",
    "write_result",
]

log = logging.getLogger(__name__)

#: Tiles analysed per executor task: large enough to amortise scheduling, small
#: enough for smooth progress and bounded memory (tiles in flight).
CHUNK_TILES = 8


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


# --------------------------------------------------------------------------- tile work


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


def analyse_tile(rgb: np.ndarray, params: TileParams, class_map: np.ndarray | None = None,
                 regions: dict[int, np.ndarray] | None = None) -> TileAnalysis:
    """Score one IHC tile: stain class map (given, or by deconvolution), cells if asked.

    With ``params.stain.intensity == "membrane"`` (default) the classes grade
    the membranes' DAB line density (:mod:`her2_qupath.membrane`); with
    ``"od"`` each pixel's DAB OD. ``regions`` maps ROI indices to bool masks
    (the tile's shape) of the pixels inside each region of interest. Then only
    pixels inside a region count (others are background) and cells whose
    centroid lies outside every region are left out; each region also gets its
    own score in ``region_scores``. Every score carries the number of nuclei
    found in its tissue (detected cells at cell level), for the "too few
    cells" check.
    """
    from .scoring import score_class_map
    from .stain import class_map_from_stains, deconvolve

    m = params.margin_px if params.level == "cell" else 0
    core = rgb[m:rgb.shape[0] - m, m:rgb.shape[1] - m] if m else rgb
    membrane = params.stain.intensity == "membrane"
    blocks = None
    record = None
    counted: np.ndarray | None = None  # the tissue whose nuclei count toward "too few cells"
    if membrane:
        from .membrane import block_mean, class_map_from_blocks, membrane_blocks, membrane_maps

        maps = membrane_maps(core, params.vectors, params.background)
        dab, hema = maps.dab, maps.hematoxylin
        od_blocks = block_mean(maps.od_sum, params.mpp, params.stain)
        counted = _any_tissue(od_blocks, core.shape[:2], params)
        if class_map is None or params.record_blocks:
            inten, tissue = membrane_blocks(maps, params.mpp, params.stain, od_blocks=od_blocks)
            if class_map is None:
                class_map, blocks = class_map_from_blocks(inten, tissue, core.shape[:2],
                                                          params.mpp, params.stain)
            if params.record_blocks:
                record = _block_record(inten, od_blocks, core.shape[:2], params, regions)
    else:
        od = deconvolve(core, params.vectors, params.background)
        dab, hema = od[..., 1], od[..., 0]
        if class_map is None:
            class_map = class_map_from_stains(od, params.stain, vectors=params.vectors)
    cells: Any = None
    if params.level == "cell":
        from .cell_table import CellTable
        from .cells import detect_cells

        found = detect_cells(rgb, params.mpp, params.cells, params.stain, vectors=params.vectors,
                             background=params.background, objects=False)
        cells = CellTable.from_result(found).in_core(m, core.shape[:2])

    peaks: np.ndarray | None = None  # nucleus blobs of the tile, found once for every region

    def score_within(mask: np.ndarray | None) -> tuple[Any, Any]:
        nonlocal peaks
        cmap = class_map if mask is None else np.where(mask, class_map, 0).astype(class_map.dtype)
        inside = cells if (mask is None or cells is None) else cells.take(cells.inside(mask))
        counts = None
        if params.level == "cell":
            counts = inside.class_counts()
            n_nuclei = len(inside)
        else:
            from .membrane import count_peaks, nucleus_peaks

            tissue = cmap > 0 if counted is None else (
                counted if mask is None else counted & mask)
            if peaks is None:
                peaks = nucleus_peaks(hema, params.mpp, params.stain)[0]
            n_nuclei = count_peaks(peaks, tissue)
        any_tissue = None
        if counted is not None:
            any_tissue = int(np.count_nonzero(counted if mask is None else counted & mask))
        if mask is None and blocks is not None:  # the class map is its blocks: count those
            score = _score_blocks(blocks, dab, core.shape[:2], params, counts, n_nuclei, any_tissue)
        else:
            score = score_class_map(cmap, dab_od=dab, cell_counts=counts,
                                    min_letter_fraction=params.min_letter_fraction,
                                    n_nuclei=n_nuclei, tissue_pixels=any_tissue)
        return score, inside

    if not regions:
        score, inside = score_within(None)
        return TileAnalysis(score=score, cells=inside, blocks=blocks, block_record=record)
    union = np.logical_or.reduce(list(regions.values()))
    score, inside = score_within(union)
    region_scores = {r: score_within(m)[0] for r, m in regions.items()} if len(regions) > 1 \
        else {r: score for r in regions}
    return TileAnalysis(score=score, cells=inside, region_scores=region_scores, blocks=blocks,
                        block_record=record)


def _score_blocks(blocks: np.ndarray, dab: np.ndarray, shape: tuple[int, int], params: TileParams,
                  cell_counts: Any, n_nuclei: int, tissue_pixels: int | None) -> Any:
    """The :func:`scoring.score_class_map` of a membrane class map, from its blocks.

    Every pixel of a block has the block's class (background for -1), so the
    pixel counts are block counts weighted by the pixels each block holds, and
    the mean DAB OD of the analysed pixels is that of the block means.
    """
    from .membrane import block_mean, block_pixels
    from .scoring import TileScore

    rows, cols = shape
    px = block_pixels(shape, params.mpp, params.stain)
    counts = np.bincount((blocks.astype(np.int64) + 1).ravel(), weights=px.ravel(), minlength=5)
    scored = blocks >= 0
    n = int(px[scored].sum())
    dab_mean = None
    if n:
        means = block_mean(dab, params.mpp, params.stain).astype(np.float64)
        dab_mean = float((means[scored] * px[scored]).sum() / n)
    return TileScore(tuple(int(round(c)) for c in counts[:5]), rows * cols,  # type: ignore[arg-type]
                     None if cell_counts is None else tuple(int(c) for c in cell_counts),
                     min_letter_fraction=params.min_letter_fraction, dab_od_mean=dab_mean,
                     n_nuclei=n_nuclei, tissue_pixels=tissue_pixels)


def _block_record(inten: np.ndarray, od_blocks: np.ndarray, shape: tuple[int, int],
                  params: TileParams, regions: dict[int, np.ndarray] | None) -> tuple[np.ndarray, ...]:
    """(intensity, pixels, mean OD sum) of the tile's blocks holding any tissue (inside the ROIs)."""
    from .membrane import block_mean, block_pixels

    keep = od_blocks >= params.stain.cell_count_od_sum
    if regions:
        union = np.logical_or.reduce(list(regions.values())).astype(np.float32)
        keep &= block_mean(union, params.mpp, params.stain) >= params.stain.membrane_block_min_tissue
    px = block_pixels(shape, params.mpp, params.stain)
    return inten[keep].ravel(), px[keep].ravel(), od_blocks[keep].ravel()


def _any_tissue(od_blocks: np.ndarray, shape: tuple[int, int], params: TileParams) -> np.ndarray:
    """Pixels of membrane blocks holding any tissue (``StainConfig.cell_count_od_sum``)."""
    from .membrane import upsample_blocks

    return upsample_blocks(od_blocks >= params.stain.cell_count_od_sum, shape, params.mpp,
                           params.stain)


#: Open slides kept per process for tile work (workers of a pool or a Dask cluster).
#: Beyond this many the least recently used is dropped (and closed once no reader holds
#: it), so a long-running server does not accumulate file handles.
SLIDE_CACHE_SIZE = 8
_SLIDE_CACHE: OrderedDict[tuple[str, float | None, int, int], Any] = OrderedDict()
_SLIDE_CACHE_LOCK = threading.Lock()


def _cached_slide(path: str, mpp: float | None, cache_mb: float | None = None) -> Any:
    """One open slide per process and file version, shared by the threads of that process.

    ``cache_mb`` sizes the reader's tile cache (default: ``SlideConfig.tile_cache_mb``).
    """
    from .config import SlideConfig
    from .slide import open_slide

    st = os.stat(path)
    key = (path, mpp, st.st_mtime_ns, st.st_size, cache_mb)  # a rewritten file is opened afresh
    with _SLIDE_CACHE_LOCK:
        slide = _SLIDE_CACHE.get(key)
        if slide is None:
            config = SlideConfig() if cache_mb is None else SlideConfig(tile_cache_mb=cache_mb)
            slide = open_slide(path, mpp=mpp, config=config)
            _SLIDE_CACHE[key] = slide
            while len(_SLIDE_CACHE) > SLIDE_CACHE_SIZE:
                _SLIDE_CACHE.popitem(last=False)
        _SLIDE_CACHE.move_to_end(key)
        return slide


@dataclass(frozen=True)
class _ChunkJob:
    """A picklable unit of tile work (plain data only: it may cross to a Dask worker)."""

    ihc_path: str
    ihc_mpp: float | None
    tiles: tuple[Any, ...]  # tiling.Tile (IHC grid) or H&E tiles when `transform` is set
    transform_json: str | None
    params: TileParams
    rois: tuple[Any, ...] | None = None  # shapely ROIs
    tile_rois: tuple[tuple[int, ...], ...] | None = None  # per tile: the ROIs it intersects
    run_id: str = ""  # a cancelled run's chunks stop at their next tile (same process)
    cache_mb: float | None = None  # the reader's tile cache in the worker (None: the default)


#: Runs cancelled while their chunks work: a chunk in this process checks before each tile.
_CANCELLED_RUNS: set[str] = set()


def _with_margin(tile: Any, margin: int) -> Any:
    """The same tile grown by ``margin`` working pixels on every side."""
    if margin == 0:
        return tile
    mx = margin * tile.width / tile.size
    my = margin * tile.height / tile.size
    return dataclasses.replace(tile, x=tile.x - mx, y=tile.y - my, width=tile.width + 2 * mx,
                               height=tile.height + 2 * my, size=tile.size + 2 * margin)


def _read_ihc_tile(job: _ChunkJob, tile: Any, transform: Any) -> np.ndarray:
    """The IHC pixels of ``tile`` (with the cell margin at cell level)."""
    if job.params.level == "cell":
        tile = _with_margin(tile, job.params.margin_px)
    slide = _cached_slide(job.ihc_path, job.ihc_mpp, job.cache_mb)
    if transform is None:
        from .tiling import read_tile

        return read_tile(slide, tile)
    from .registration import read_mapped_tile

    return read_mapped_tile(slide, transform, tile)


def _transform_from(job: _ChunkJob) -> Any:
    if job.transform_json is None:
        return None
    from .registration import Transform

    return Transform.from_json(job.transform_json)


def _region_masks(job: _ChunkJob, k: int) -> dict[int, np.ndarray] | None:
    """Masks of the ROIs that tile ``k`` of the job intersects (None without ROIs)."""
    if job.rois is None or job.tile_rois is None:
        return None
    from .tiling import tile_mask

    tile = job.tiles[k]
    return {r: tile_mask(job.rois[r], tile) for r in job.tile_rois[k]}


def _run_chunk(job: _ChunkJob) -> list[TileAnalysis]:
    transform = _transform_from(job)
    out = []
    for k, t in enumerate(job.tiles):
        if job.run_id and job.run_id in _CANCELLED_RUNS:
            raise JobCancelled("the scoring run was cancelled", hint="nothing was written")
        a = analyse_tile(_read_ihc_tile(job, t, transform), job.params,
                         regions=_region_masks(job, k))
        _cells_to_text(a, t, transform, job.run_id)
        out.append(a)
    return out


def _cells_to_text(a: TileAnalysis, tile: Any, transform: Any, run_id: str) -> None:
    """Cell level: the tile's cells as GeoJSON feature text in level-0 IHC pixels (done in
    the worker, so the run has no serial tail); the columns are dropped."""
    if a.cells is None:
        return
    placed = a.cells.placed((tile.width / tile.size, tile.height / tile.size), (tile.x, tile.y))
    warp = None if transform is None else (lambda g: _warp(transform, g))
    a.cell_text = placed.feature_text(product_metadata(run_id), warp)
    a.cell_count = len(placed)
    a.cells = None


def _spill_cells(chunk: list[TileAnalysis], spill: Any) -> None:
    """Move a finished chunk's cell text to the run's spill file (memory stays flat)."""
    for a in chunk:
        if a.cell_text is not None:
            a.cell_spill = (spill, spill.add(a.cell_text))
            a.cell_text = None


def _read_chunk(job: _ChunkJob) -> list[np.ndarray]:
    transform = _transform_from(job)
    return [_read_ihc_tile(job, t, transform) for t in job.tiles]


# --------------------------------------------------------------------------- the run


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise JobCancelled("the scoring run was cancelled", hint="nothing was written")


def _select_rois(request: ScoreRequest) -> tuple[list[Any], list[str]]:
    """ROI geometries and their names; empty when the whole tissue is scored."""
    if not request.rois:
        if request.roi_class:
            raise UserInputError(
                f"--roi-class {request.roi_class!r} given but no ROIs were supplied",
                hint="pass --roi with a QuPath GeoJSON export of the annotations",
            )
        return [], []
    from .qupath.geojson import rois_from_objects

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
    from .stain import StainVectors, estimate_vectors

    if options.stain_vectors:
        return StainVectors.from_qupath(options.stain_vectors)
    if options.stain.estimate_vectors:
        estimated = estimate_vectors(thumb, tissue_mask, background=background, config=options.stain)
        if estimated is not None:
            return estimated
        log.warning("stain vectors could not be estimated from the slide; using the defaults")
    return StainVectors.default(options.stain)


def _stain_warnings(ihc_thumb: np.ndarray, ihc_tissue: np.ndarray, background: Any, he: Any,
                    opts: ScoreOptions) -> list[str]:
    """Warn when the IHC slide looks like H&E (or the H&E slide like IHC): swapped inputs?"""
    from .stain import stain_shares

    out = []
    check = stain_shares(ihc_thumb, background, config=opts.stain, tissue_mask=ihc_tissue)
    if check.tissue_pixels and check.looks_like_he(opts.stain):
        out.append(f"the IHC slide looks like an H&E stain (eosin carries {100 * check.eosin:.0f} % "
                   "of the stain): check that --ihc is the HER2 IHC slide; its DAB figures are "
                   "not meaningful otherwise")
    if he is not None:
        he_thumb = he.thumbnail(mpp=opts.tissue.thumbnail_mpp)
        he_check = stain_shares(he_thumb, config=opts.stain)
        if he_check.tissue_pixels and not he_check.looks_like_he(opts.stain):
            out.append(f"the H&E slide shows almost no eosin ({100 * he_check.eosin:.0f} % of the "
                       "stain): check that --he and --ihc are not swapped")
    for w in out:
        log.warning(w)
    return out


def _white_point_and_tissue(slide: Any, opts: ScoreOptions) -> tuple[np.ndarray, Any, Any]:
    """The slide's analysis thumbnail, its white point and its tissue mask (one thumbnail read).

    The white point is the user's (``StainConfig.background``), the stain
    string's ``Background``, else estimated from the glass (:mod:`her2_qupath.optics`).
    """
    from .optics import estimate_white_point, glass_mask
    from .stain import StainVectors
    from .tissue import TissueMask, slide_thumbnail, tissue_mask_from_rgb

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


#: Stain vectors further than this angle (degrees) from QuPath's H-DAB defaults are flagged.
MAX_VECTOR_ANGLE_DEG = 25.0


def _qc_warnings(white: Any, vectors: Any, tissue: Any, opts: ScoreOptions) -> list[str]:
    """Warnings a pathologist should see before trusting the number."""
    out: list[str] = []
    if white.source in ("glass", "fallback") and not white.reliable:
        out.append(f"white point doubtful: {white.note}; measured "
                   f"{[round(x) for x in white.rgb]} — pass --background R,G,B (the RGB of "
                   "empty glass on this slide) if it looks wrong")
    ref = StainConfig()
    for name, v, r in (("hematoxylin", vectors.hematoxylin, ref.hematoxylin),
                       ("DAB", vectors.dab, ref.dab)):
        a, b = np.asarray(v, float), np.asarray(r, float)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        angle = float(np.degrees(np.arccos(min(1.0, max(-1.0, cos)))))
        if angle > MAX_VECTOR_ANGLE_DEG:
            out.append(f"{name} stain vector is {angle:.0f}° from QuPath's H-DAB default: "
                       "check the stain vectors")
    area = tissue.area_um2
    if area is not None and area * 1e-6 < 10 * opts.scoring.min_tissue_mm2:
        out.append(f"little tissue: {area * 1e-6:.3f} mm² on the slide")
    for w in out:
        log.warning(w)
    return out


#: QC: warn when more than this share of the tissue (or of the tiles) is left out of the count
MAX_EXCLUDED_SHARE = 0.5


def _excluded_warnings(region: Any, opts: ScoreOptions) -> list[str]:
    """A large share of the tissue left out of the count is worth a look."""
    out = []
    if region.tissue_pixels:
        share = 1.0 - region.analysed_pixels / region.tissue_pixels
        if share > MAX_EXCLUDED_SHARE:
            out.append(f"{100 * share:.0f} % of the tissue was left out of the count as too pale "
                       "to be tumour (stroma, fat, lumina): check the overlay, or draw the tumour")
    total = region.n_tiles + region.n_tiles_excluded
    if total and region.n_tiles_excluded / total > MAX_EXCLUDED_SHARE:
        out.append(f"{region.n_tiles_excluded} of {total} tiles were called non-tumour on the H&E "
                   "slide and left out")
    return out


def _judged(region: Any, white: Any, opts: ScoreOptions) -> Any:
    """The region with its "not evaluable" reasons (:func:`scoring.evaluability`) filled in."""
    from .scoring import evaluability

    reasons = list(evaluability(region, pixel_area_um2=opts.tiling.mpp ** 2, config=opts.scoring))
    if not white.usable:
        reasons.insert(0, f"unreliable white point: {white.note}; pass --background R,G,B")
    return dataclasses.replace(region, not_evaluable=tuple(reasons))


def run_score(
    request: ScoreRequest,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    executor: cf.Executor | None = None,
) -> ScoreResult:
    """Score one IHC slide (with its H&E partner when given). Writes nothing."""
    from .slide import open_slide
    from .tiling import tile_grid
    from .tissue import detect_tissue

    t_start = time.perf_counter()
    run_id = str(uuid.uuid4())  # cancels its tiles, marks its objects, names its provenance
    opts = request.options
    if opts.scoring.guideline not in GUIDELINES:
        raise UserInputError(f"unknown guideline {opts.scoring.guideline!r}",
                             hint=f"choose one of {', '.join(GUIDELINES)}")
    if request.roi_space not in ("he", "ihc"):
        raise UserInputError(f"unknown roi_space {request.roi_space!r}", hint="use 'he' or 'ihc'")
    _check_models(opts)
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
                roi_geoms = [_warp(transform, g, inverse=True) for g in roi_geoms]
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
        analyses = _analyse_tiles(request, tiles, params, transform, roi_geoms, opts, step,
                                  cancel, executor, run_id)
        stain_cls = _classify_stain_tiles(request, tiles, params, transform, opts, cancel) \
            if (opts.stain_model and tiles) else None
        _check_cancel(cancel)
        result = _assemble(request, ihc, he, grid, tiles, analyses, he_probs, stain_cls,
                           roi_geoms, roi_names, transform, transform_info, ihc_thumb,
                           white, vectors, time.perf_counter() - t_start, warnings, run_id)
        if opts.record_blocks:
            result.block_records = [a.block_record for a in analyses if a.block_record is not None]
        if transform is not None:
            from .registration import render_registration

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


def _check_models(opts: ScoreOptions) -> None:
    """Each model directory is complete and was trained on tiles of this run's field of view."""
    from .models.io import check_tiling, validate_model_dir

    for name, kind in (("tumor_model", "tumor"), ("stain_model", "stain"), ("seg_model", "segmenter")):
        path = getattr(opts, name)
        if path is not None:
            check_tiling(validate_model_dir(path, expected_kind=kind), opts.tiling.tile_size,
                         opts.tiling.mpp, where=f"the {kind} model {path}")


def _get_transform(request: ScoreRequest, he: Any, ihc: Any) -> tuple[Any, dict[str, Any]]:
    from .registration import Transform
    from .registration.files import check_transform_fits, register_slides

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


def _chunks(tiles: Sequence[Any], size: int = CHUNK_TILES) -> list[tuple[Any, ...]]:
    return [tuple(tiles[i:i + size]) for i in range(0, len(tiles), size)]


def _pool_workers(executor: cf.Executor | None) -> int:
    if isinstance(executor, cf.ThreadPoolExecutor):
        return max(1, int(getattr(executor, "_max_workers", 1)))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


#: Modules a cell-level worker process imports once, in the fork server it is forked from.
_WORKER_PRELOAD = ["her2_qupath.pipeline", "her2_qupath.cells", "her2_qupath.cell_table",
                   "her2_qupath.membrane", "her2_qupath.slide", "her2_qupath.tiling",
                   "her2_qupath.qupath.geojson"]


def _cell_pool(level: str, n_jobs: int, executor: cf.Executor | None) -> cf.Executor | None:
    """A process pool for the cell level (None: use ``executor`` or threads as given).

    Cell detection holds the GIL for about a third of its time, so threads scale
    poorly (2 threads: 1.48x; 2 processes: 1.95x). Without an executor, or with
    a thread pool (the CLI, batch runs, the server's local backend), the cell
    level runs its chunks in as many worker processes as the pool had threads;
    a Dask executor is used as given. Tile tasks share nothing: each worker
    opens the slide itself and returns its tiles' scores and cell text.
    """
    if level != "cell" or n_jobs < 2 or not (executor is None or
                                             isinstance(executor, cf.ThreadPoolExecutor)):
        return None
    workers = min(_pool_workers(executor), n_jobs)
    if workers < 2:
        return None
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_WORKER_PRELOAD)
    else:  # pragma: no cover - Windows, macOS without forkserver
        ctx = mp.get_context("spawn")
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _work_cache_mb(tile_size: int, margin: int, chunk: int) -> float:
    """The reader's tile cache a worker needs: a chunk's tiles (two more for the slide
    tiles they straddle) with their margins, at up to twice the working resolution per
    axis (the slide level read), RGB; at most ``SlideConfig.tile_cache_mb``."""
    from .config import SlideConfig

    need = (chunk + 2) * 4 * 3 * (tile_size + 2 * margin) ** 2 / 2**20
    return float(min(SlideConfig().tile_cache_mb, max(8.0, round(need))))


def _tile_rois(tiles: list[Any], rois: list[Any]) -> list[tuple[int, ...]] | None:
    """For each tile, the indices of the ROIs whose interior it overlaps."""
    if not rois:
        return None
    from shapely import STRtree

    tree = STRtree(rois)
    polys = [t.polygon for t in tiles]
    pairs = tree.query(polys, predicate="intersects")
    out: list[list[int]] = [[] for _ in tiles]
    for ti, ri in zip(*pairs):
        if polys[ti].intersection(rois[ri]).area > 0:
            out[ti].append(int(ri))
    return [tuple(sorted(o)) for o in out]


def _analyse_tiles(request: ScoreRequest, tiles: list[Any], params: TileParams, transform: Any,
                   rois: list[Any], opts: ScoreOptions, step: Callable[[int], None],
                   cancel: threading.Event | None, executor: cf.Executor | None,
                   run_id: str) -> list[TileAnalysis]:
    transform_json = transform.to_json() if transform is not None else None
    tile_rois = _tile_rois(tiles, rois)
    cell_level = params.level == "cell"
    size = CHUNK_TILES
    if cell_level:  # smaller chunks at the cell level keep every worker busy to the end
        size = max(1, min(CHUNK_TILES, -(-len(tiles) // (4 * _pool_workers(executor)))))
    cache_mb = _work_cache_mb(opts.tiling.tile_size, params.margin_px if cell_level else 0, size)
    jobs = [_ChunkJob(str(request.ihc), request.ihc_mpp, chunk, transform_json, params,
                      tuple(rois) if rois else None,
                      None if tile_rois is None else tuple(tile_rois[i:i + len(chunk)]), run_id,
                      cache_mb)
            for i, chunk in zip(range(0, len(tiles), size), _chunks(tiles, size))]
    results: list[list[TileAnalysis] | None] = [None] * len(jobs)
    spill = None
    if cell_level:
        from .qupath.stream import CellSpill

        spill = CellSpill()
    if opts.seg_model is not None:
        from .models import load_model, segment_tiles

        model = load_model(opts.seg_model, expected_kind="segmenter")
        for i, job in enumerate(jobs):
            _check_cancel(cancel)
            rgbs = _read_chunk(job)
            m = params.margin_px if params.level == "cell" else 0
            cores = [r[m:r.shape[0] - m, m:r.shape[1] - m] if m else r for r in rgbs]
            maps = segment_tiles(model, cores, precision=opts.model.precision,
                                 batch_size=opts.model.batch_size)
            results[i] = [analyse_tile(rgb, params, class_map=m, regions=_region_masks(job, k))
                          for k, (rgb, m) in enumerate(zip(rgbs, maps))]
            for a, t in zip(results[i], job.tiles):
                _cells_to_text(a, t, transform, run_id)
            _spill_cells(results[i], spill)
            step(len(job.tiles))
        return [a for chunk in results if chunk is not None for a in chunk]

    procs = _cell_pool(params.level, len(jobs), executor)
    if procs is not None:
        try:
            _run_jobs(procs, True, jobs, results, spill, run_id, step, cancel)
        except BrokenProcessPool as err:  # e.g. a script without a __main__ guard, a killed worker
            log.warning("worker processes failed (%s); the remaining tiles run in threads", err)
        else:
            return [a for chunk in results if chunk is not None for a in chunk]
        todo = [i for i, r in enumerate(results) if r is None]
        pool = executor or cf.ThreadPoolExecutor(max_workers=_pool_workers(None))
        _run_jobs(pool, executor is None, [jobs[i] for i in todo], results, spill, run_id, step,
                  cancel, index=todo)
    else:
        pool = executor or cf.ThreadPoolExecutor(max_workers=_pool_workers(None))
        _run_jobs(pool, executor is None, jobs, results, spill, run_id, step, cancel)
    return [a for chunk in results if chunk is not None for a in chunk]


def _run_jobs(pool: cf.Executor, own_pool: bool, jobs: list[_ChunkJob],
              results: list[list[TileAnalysis] | None], spill: Any, run_id: str,
              step: Callable[[int], None], cancel: threading.Event | None,
              index: list[int] | None = None) -> None:
    """Run chunk jobs on ``pool``; chunk ``k``'s analyses go to ``results[index[k]]`` and its
    cells to the spill file as each finishes."""
    where = index if index is not None else list(range(len(jobs)))
    try:
        futures = {pool.submit(_run_chunk, job): where[i] for i, job in enumerate(jobs)}
        sizes = {where[i]: len(job.tiles) for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            finished, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            if cancel is not None and cancel.is_set():
                _CANCELLED_RUNS.add(run_id)  # chunks already running stop at their next tile
                for fut in pending:
                    fut.cancel()
                _check_cancel(cancel)
            for fut in finished:
                chunk = fut.result()
                _spill_cells(chunk, spill)
                results[futures[fut]] = chunk
                step(sizes[futures[fut]])
    finally:
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)
        _CANCELLED_RUNS.discard(run_id)


@dataclass
class _TumorCalls:
    """The H&E tumour classifier's output over the grid: probabilities, measurements, heatmaps."""

    probs: np.ndarray  # tumour probability per tile, grid order
    measurements: list[dict[str, float]]
    images: dict[str, np.ndarray]


def _classify_he_tiles(he: Any, grid: Any, opts: ScoreOptions, step: Callable[[int], None],
                       cancel: threading.Event | None) -> _TumorCalls:
    """Tumour probability of each H&E tile from the model C, with attention rollout heatmaps."""
    from .models import heatmap_images, load_model, slide_heatmaps

    model = load_model(opts.tumor_model, expected_kind="tumor")  # type: ignore[arg-type]
    seen = 0

    def progress(done: int, total: int) -> None:
        nonlocal seen
        _check_cancel(cancel)
        step(done - seen)
        seen = done

    hm = slide_heatmaps(model, he, grid, batch_size=opts.model.batch_size, progress=progress)
    images = {f"{name}_heatmap": rgb for name, rgb in
              heatmap_images(hm, he, grid, thumbnail_max=OVERLAY_MAX_SIZE).items()}
    return _TumorCalls(np.asarray(hm.probs)[:, model.tumor_index], hm.measurements, images)


def _classify_stain_tiles(request: ScoreRequest, tiles: list[Any], params: TileParams,
                          transform: Any, opts: ScoreOptions,
                          cancel: threading.Event | None) -> np.ndarray:
    """Stain-intensity class (0–3) of each IHC tile from the model L."""
    from .models import classify_tiles, load_model, stain_grades

    model = load_model(opts.stain_model, expected_kind="stain")  # type: ignore[arg-type]
    transform_json = transform.to_json() if transform is not None else None
    out: list[np.ndarray] = []
    for chunk in _chunks(tiles):
        _check_cancel(cancel)
        job = _ChunkJob(str(request.ihc), request.ihc_mpp, chunk, transform_json,
                        dataclasses.replace(params, margin_px=0))
        p = classify_tiles(model, _read_chunk(job), precision=opts.model.precision,
                           batch_size=opts.model.batch_size)
        out.append(stain_grades(model, p))
    return np.concatenate(out)


# --------------------------------------------------------------------------- assembly


def _assemble(request: ScoreRequest, ihc: Any, he: Any, grid: Any, tiles: list[Any],
              analyses: list[TileAnalysis], he_probs: np.ndarray | None,
              stain_cls: np.ndarray | None, roi_geoms: list[Any], roi_names: list[str],
              transform: Any, transform_info: dict[str, Any] | None, ihc_thumb: np.ndarray,
              white: Any, vectors: Any, seconds: float,
              warnings: list[str], run_id: str) -> ScoreResult:
    from .scoring import EXPRESSION_GROUP_RULE, aggregate

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
    clip = _region_union(roi_geoms) if opts.clip_tiles else None
    detections, he_detections = _tile_objects(tiles, analyses, transform, opts.scoring, run_id, clip)
    annotations, he_annotations = _region_objects(roi_geoms, regions, slide_region, ihc, he, transform,
                                                  run_id)
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
        "provenance": _provenance(request, background, vectors, seconds, run_id),
    }
    overlay, pictures = _overlay(ihc, he, tiles, analyses, transform, summary, opts, vectors,
                                 background, roi_geoms)
    return ScoreResult(summary, detections, annotations, he_detections, overlay,
                       he_annotations=he_annotations, pictures=pictures)


#: Longest side of the overview picture, in pixels.
OVERLAY_MAX_SIZE = 1400


def tile_her2_class(score: Any, scoring: ScoringConfig) -> int | None:
    """A tile's own HER2 class (0–3), by the run's rule: the guideline rule on the tile's
    pixel or cell counts, or with ``aggregation="paper"`` the paper's majority stain class.
    None when the tile has nothing to score (no stained tissue, or no cell at cell level)."""
    from .scoring import guideline_score

    if scoring.aggregation == "paper":
        return score.tile_class
    counts = score.cell_counts if scoring.level == "cell" else score.her2_pixel_counts
    if counts is None or sum(counts) == 0:
        return None
    return guideline_score(counts, GUIDELINES[scoring.guideline])


def _rings(geom: Any, scale: float) -> list[tuple[tuple[float, float], ...]]:
    """Exterior rings of a (multi)polygon, scaled to picture pixels."""
    parts = [geom] if geom.geom_type == "Polygon" else [
        g for g in getattr(geom, "geoms", []) if g.geom_type == "Polygon"]
    return [tuple((x * scale, y * scale) for x, y in p.exterior.coords) for p in parts]


def _mark(polygon: Any, score: Any, scale: float, scoring: ScoringConfig) -> Any:
    from .render import TileMark

    ring = _rings(polygon if polygon.geom_type == "Polygon" else polygon.envelope, scale)[0]
    return TileMark(ring, tile_her2_class(score, scoring), bool(score.counts_toward_score))


def _um_per_px(slide: Any, scale: float) -> float | None:
    """µm per pixel of a picture of ``slide`` drawn at ``scale`` (None: pixel size unknown)."""
    mpp = getattr(slide, "mpp_or_none", None)
    return float(mpp) / scale if mpp else None


def _overlay(ihc: Any, he: Any, tiles: list[Any], analyses: list[TileAnalysis],
             transform: Any, summary: dict[str, Any], opts: ScoreOptions,
             vectors: Any, background: Any, rois: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """IHC thumbnail with pixel classes, tile scores and ROIs (H&E beside it when given) + legend,
    and the case report's pictures (each titled, with a scale bar)."""
    from .case_report import Picture
    from .render import (
        add_legend,
        add_scale_bar,
        blend,
        colorize_class_map,
        draw_outlines,
        draw_tiles,
        side_by_side,
    )
    from .stain import dab_class_map

    thumb = ihc.thumbnail(max_size=OVERLAY_MAX_SIZE)
    scale = thumb.shape[1] / ihc.dimensions[0]
    ihc_um = _um_per_px(ihc, scale)
    if opts.stain.intensity == "membrane":
        cmap = _block_canvas(thumb.shape[:2], scale, tiles, analyses, transform)
    else:
        cmap = dab_class_map(thumb, opts.stain, vectors=vectors, background=background)
    pic = blend(thumb, colorize_class_map(cmap), 0.55, mask=cmap > 0)
    polys = [t.polygon for t in tiles]
    if transform is not None:
        from .registration import map_tile

        polys = [map_tile(transform, t) for t in tiles]
    width = max(1, round(thumb.shape[1] / 500))
    marks = [_mark(p, a.score, scale, opts.scoring) for p, a in zip(polys, analyses)]
    pic = draw_tiles(pic, marks, width=width)
    ihc_rois = rois if transform is None else [_warp(transform, g) for g in rois]
    ihc_rings = [r for g in ihc_rois for r in _rings(g, scale)]
    pic = add_scale_bar(draw_outlines(pic, ihc_rings, width=2 * width), ihc_um)
    what = "membrane blocks" if opts.stain.intensity == "membrane" else "DAB pixels"
    classes = Picture(pic, f"HER2 class of the {what}, tile scores")
    if he is None:
        pictures = [Picture(add_scale_bar(draw_outlines(thumb, ihc_rings, width=2 * width), ihc_um),
                            "IHC slide" + (" and the scored regions" if rois else " (all tissue scored)")),
                    classes]
    else:
        he_thumb = he.thumbnail(max_size=OVERLAY_MAX_SIZE)
        he_scale = he_thumb.shape[1] / he.dimensions[0]
        he_marks = [_mark(t.polygon, a.score, he_scale, opts.scoring) for t, a in zip(tiles, analyses)]
        he_pic = draw_tiles(he_thumb, he_marks, width=width)
        he_pic = draw_outlines(he_pic, [r for g in rois for r in _rings(g, he_scale)], width=2 * width)
        he_pic = add_scale_bar(he_pic, _um_per_px(he, he_scale))
        pictures = [Picture(he_pic, "H&E slide: regions and tiles (mapped to the IHC)"), classes]
        pic = side_by_side(he_pic, pic)
    pct = summary["class_percentages"]
    lines = [f"NOT EVALUABLE: {r}" for r in summary.get("not_evaluable_reasons", [])]
    if summary.get("her2_expression"):
        lines.append(summary["her2_expression"])
    lines += [f"{k}: {pct[k]:.1f} %" for k in ("0", "1+", "2+", "3+")]
    lines += [f"H-score: {summary['h_score']:.0f}", f"WSI% (2+/3+ px): {summary['percent_positive']:.1f}",
              f"tiles: {summary['n_tiles_counted']}/{summary['n_tiles']}"]
    if summary.get("n_cells") is not None:
        lines.append(f"cells: {summary['n_cells']}")
    if not summary["reliable"]:
        lines.append("REGISTRATION UNRELIABLE")
    if any("looks like an H&E" in w or "swapped" in w for w in summary["warnings"]):
        lines.append("CHECK STAINS: see warnings")
    lines += [f"QC: {w}" for w in summary["warnings"] if not w.startswith("not evaluable")]
    title = f"HER2 {summary['her2_score']}  ({summary['guideline']}, {summary['level']})"
    return add_legend(pic, title, lines), pictures


def _block_canvas(shape: tuple[int, int], scale: float, tiles: list[Any],
                  analyses: list[TileAnalysis], transform: Any) -> np.ndarray:
    """The membrane block classes of every tile painted on the overview (0 = nothing, 1..4).

    Without a transform each tile's block grid is resized onto the tile's box; with
    an H&E partner (the block grid lies in the H&E tile's frame) each overview pixel of
    the mapped tile looks its block up through the inverse transform.
    """
    import cv2

    canvas = np.zeros(shape, dtype=np.uint8)
    if transform is not None:
        _paint_mapped_blocks(canvas, scale, tiles, analyses, transform)
        return canvas
    for tile, a in zip(tiles, analyses):
        if a.blocks is None or a.blocks.size == 0:
            continue
        x0, y0 = int(round(tile.x * scale)), int(round(tile.y * scale))
        x1 = int(round((tile.x + tile.width) * scale))
        y1 = int(round((tile.y + tile.height) * scale))
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        grid = (a.blocks.astype(np.int16) + 1).astype(np.uint8)  # -1 background -> 0
        up = cv2.resize(grid, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        canvas[cy0:cy1, cx0:cx1] = np.maximum(canvas[cy0:cy1, cx0:cx1],
                                              up[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0])
    return canvas


def _paint_mapped_blocks(canvas: np.ndarray, scale: float, tiles: list[Any],
                         analyses: list[TileAnalysis], transform: Any) -> None:
    from .registration import map_tile

    for tile, a in zip(tiles, analyses):
        if a.blocks is None or a.blocks.size == 0:
            continue
        x0, y0, x1, y1 = (np.asarray(map_tile(transform, tile).bounds) * scale).tolist()
        x0, y0 = max(int(x0), 0), max(int(y0), 0)
        x1, y1 = min(int(np.ceil(x1)), canvas.shape[1]), min(int(np.ceil(y1)), canvas.shape[0])
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        pts = np.column_stack([(xs.ravel() + 0.5) / scale, (ys.ravel() + 0.5) / scale])
        he_pts = transform.apply_inverse(pts)
        rows, cols = a.blocks.shape
        u = (he_pts[:, 0] - tile.x) / tile.width * cols
        v = (he_pts[:, 1] - tile.y) / tile.height * rows
        inside = (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
        vals = a.blocks[v[inside].astype(np.intp), u[inside].astype(np.intp)].astype(np.int16) + 1
        yi, xi = ys.ravel()[inside], xs.ravel()[inside]
        canvas[yi, xi] = np.maximum(canvas[yi, xi], vals.astype(np.uint8))


def _measure_tile(score: Any) -> dict[str, float]:
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
    m["Tile row"] = float(score.row)
    m["Tile column"] = float(score.col)
    return m


def _tile_class_name(score: Any, scoring: ScoringConfig) -> str:
    """``HER2 0`` … ``HER2 3+``, or QuPath's ``Ignore*`` for tiles that do not count."""
    k = tile_her2_class(score, scoring)
    if not score.counts_toward_score or k is None:
        return "Ignore*"
    return HER2_CLASSES[k]


def _warp(transform: Any, geom: Any, *, inverse: bool = False) -> Any:
    """H&E level-0 geometry → IHC level-0 (or back with ``inverse``)."""
    from .registration import warp_geometry

    return warp_geometry(transform, geom, inverse=inverse)


def _region_union(roi_geoms: list[Any]) -> Any:
    """The scored regions as one prepared geometry (None: the whole tissue was scored)."""
    if not roi_geoms:
        return None
    import shapely

    union = shapely.union_all(roi_geoms)
    shapely.prepare(union)
    return union


def _clipped(polygon: Any, clip: Any) -> Any:
    """``polygon`` cut to ``clip`` (its polygonal part); the polygon itself when nothing is left."""
    if clip is None or clip.contains(polygon):
        return polygon
    from .qupath.geojson import polygonal_part

    part = polygonal_part(polygon.intersection(clip))
    return polygon if part.is_empty else part


def _tile_objects(tiles: list[Any], analyses: list[TileAnalysis], transform: Any,
                  scoring: ScoringConfig, run_id: str,
                  clip: Any = None) -> tuple[Sequence[Any], list[Any]]:
    """One object per tile (IHC, and H&E with a partner); at the cell level each tile's
    cells follow it (text in the run's spill file, see :class:`qupath.stream.Detections`).
    With ``clip`` (the scored regions, level 0 of the tiled slide) the outlines are cut to it."""
    from .qupath.geojson import tile_object
    from .qupath.stream import Detections

    detections: list[Any] = []
    he_detections: list[Any] = []
    cells: list[tuple[tuple[int, int], int] | None] = []
    spill = None
    meta = {RUN_KEY: run_id}
    for tile, a in zip(tiles, analyses):
        meas = _measure_tile(a.score)
        name = product_name(a.score.label, "tile")
        poly = _clipped(tile.polygon, clip)
        if transform is None:
            ihc_poly = poly
        else:
            ihc_poly = _warp(transform, poly)
            he_class = "Tumor" if a.score.tumor is not False else "Non-tumor"
            he_detections.append(tile_object(poly, he_class, meas, name=name, metadata=meta))
        detections.append(tile_object(ihc_poly, _tile_class_name(a.score, scoring), meas,
                                      name=name, metadata=meta))
        written = scoring.level == "cell" and a.score.counts_toward_score \
            and a.cell_spill is not None
        cells.append((a.cell_spill[1], a.cell_count) if written else None)  # type: ignore[index]
        if written:
            spill = a.cell_spill[0]  # type: ignore[index]
    if scoring.level == "cell":
        return Detections(detections, spill, cells), he_detections
    return detections, he_detections


def _region_measurements(reg: Any) -> dict[str, float]:
    meas = {f"HER2 {k}: %": float(v) for k, v in reg.class_percentages.items()}
    meas["H-score"] = float(reg.h_score)
    meas["Percent positive (2+/3+)"] = float(reg.percent_positive)
    meas["HER2 score"] = float("nan") if reg.score is None else float(reg.score)
    meas["Tiles"] = float(reg.n_tiles)
    meas["Tiles excluded"] = float(reg.n_tiles_excluded)
    if reg.n_cells is not None:
        meas["Cells"] = float(reg.n_cells)
    return meas


def _region_objects(roi_geoms: list[Any], regions: list[Any], slide_region: Any, ihc: Any,
                    he: Any, transform: Any, run_id: str) -> tuple[list[Any], list[Any]]:
    """One result annotation per ROI (or one for the slide), in IHC coordinates, and with an
    H&E partner the same annotations on the H&E slide (the ROIs as drawn there)."""
    from shapely.geometry import box

    from .qupath.geojson import annotation_object
    from .scoring import expression_group

    if roi_geoms:
        items = list(zip(roi_geoms, regions))
    else:
        dims = ihc.dimensions if he is None else he.dimensions
        items = [(box(0, 0, *dims), slide_region)]
    out: list[Any] = []
    he_out: list[Any] = []
    for geom, reg in items:
        group = expression_group(reg.score, reg.class_percentages)
        name = product_name(f"{reg.name} HER2 {reg.her2_score}" + (f" ({group})" if group else ""))
        meas = _region_measurements(reg)
        meta = {RUN_KEY: run_id, **({"HER2 expression": group} if group else {})}
        if transform is not None:
            he_out.append(annotation_object(geom, f"HER2 {reg.her2_score}", dict(meas), name=name,
                                            metadata=meta))
            geom = _warp(transform, geom)
        out.append(annotation_object(geom, f"HER2 {reg.her2_score}", meas, name=name, metadata=meta))
    return out, he_out


#: (module, distribution) of the packages whose versions a result records
_RECORDED_PACKAGES = (("tifffile", "tifffile"), ("shapely", "shapely"), ("skimage", "scikit-image"),
                      ("cv2", "opencv-python-headless"), ("torch", "torch"),
                      ("transformers", "transformers"))


def _package_version(module: str, dist: str) -> str | None:
    """The version of a package: the imported module's, else the installed distribution's.

    Never imports the package (torch and transformers take seconds to import and
    are loaded only by runs with models); None when it is not installed.
    """
    import sys
    from importlib import metadata

    loaded = sys.modules.get(module)
    if loaded is not None:
        return getattr(loaded, "__version__", None)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _provenance(request: ScoreRequest, background: Any, vectors: Any, seconds: float,
                run_id: str) -> dict[str, Any]:
    from ._io import sha256_file
    from .config import GUIDELINES as _G

    def file_info(p: Path | None) -> dict[str, Any] | None:
        if p is None:
            return None
        p = Path(p)
        return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}

    models = {}
    for name in ("tumor_model", "stain_model", "seg_model"):
        d = getattr(request.options, name)
        if d is not None:
            from .models import model_fingerprint

            models[name] = {"path": str(d), "sha256": model_fingerprint(d)}
    versions = {"her2_qupath": __version__, "python": platform.python_version(),
                "numpy": np.__version__}
    versions.update({mod: _package_version(mod, dist) for mod, dist in _RECORDED_PACKAGES})
    return {
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 3),
        "versions": versions,
        "inputs": {"ihc": file_info(request.ihc), "he": file_info(request.he),
                   "transform": file_info(request.transform)},
        "models": models,
        "parameters": dataclasses.asdict(request.options),
        "guideline_rule": dataclasses.asdict(_G[request.options.scoring.guideline]),
        "background_rgb": [float(b) for b in background],
        "stain_vectors": getattr(vectors, "as_dict", lambda: repr(vectors))(),
        # the same as QuPath's setColorDeconvolutionStains argument (the scripts apply it)
        "stain_vectors_qupath": vectors.to_qupath(tuple(background)) if hasattr(vectors, "to_qupath")
        else None,
        "roi_class": request.roi_class,
        "n_rois": 0 if not request.rois else len(request.rois),
    }


def write_result(result: ScoreResult, outdir: str | os.PathLike[str], *,
                 he: bool | None = None) -> Path:
    """Write summary.json, detections/annotations GeoJSON, overlay.png and the case report
    (report.png, report.pdf) atomically.

    With an H&E partner, ``he_detections.geojson`` and ``ihc_detections.geojson``
    are written as well so each imports into its own image in QuPath.
    """
    from ._io import atomic_output_dir, atomic_write_json
    from .case_report import write_case_report
    from .qupath.geojson import write_geojson
    from .qupath.stream import write_detections
    from .render import save_png

    with atomic_output_dir(outdir) as tmp:
        write_detections(tmp / "detections.geojson", result.detections)  # streamed, tile by tile
        write_geojson(tmp / "annotations.geojson", result.annotations)
        if result.he_detections or he:
            write_detections(tmp / "ihc_detections.geojson", result.detections)
            write_geojson(tmp / "he_detections.geojson", result.he_detections)
        atomic_write_json(tmp / "summary.json", result.summary)
        save_png(tmp / "overlay.png", result.overlay)
        for name, rgb in result.images.items():
            save_png(tmp / f"{name}.png", rgb)
        write_case_report(tmp, result.summary, result.pictures)  # report.png, report.pdf
    return Path(outdir)
