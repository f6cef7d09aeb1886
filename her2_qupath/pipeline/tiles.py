"""The tile work: one IHC tile's analysis, and chunks of tiles read and analysed by a worker.

Tile analysis is a pure function of a tile's pixels (:func:`analyse_tile`): a stain
class map (given by the segmenter, or from the membranes' DAB line density, or by
colour deconvolution), optionally cells with membrane measurements, and the tile's
score inside each region of interest. A :class:`_ChunkJob` is plain data (it may
cross to a worker process or a Dask worker): the worker opens the slide itself
(one open slide per process and file, :func:`_cached_slide`), reads each tile
(mapped from the H&E slide when there is a transform), analyses it and turns its
cells into GeoJSON text (:func:`her2_qupath.qupath.builder.cell_features`), so the
run has no serial tail.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cell_table import CellTable
from ..cells import detect_cells
from ..config import SlideConfig
from ..errors import JobCancelled
from ..membrane import (
    block_mean,
    block_pixels,
    class_map_from_blocks,
    count_peaks,
    membrane_blocks,
    membrane_maps,
    nucleus_peaks,
    upsample_blocks,
)
from ..qupath.builder import cell_features
from ..registration import Transform, read_mapped_tile
from ..scoring import TileScore, score_class_map
from ..slide import open_slide
from ..stain import class_map_from_stains, deconvolve
from ..tiling import read_tile, tile_mask
from .request import TileAnalysis, TileParams

__all__ = ["SLIDE_CACHE_SIZE", "analyse_tile"]


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
    m = params.margin_px if params.level == "cell" else 0
    core = rgb[m:rgb.shape[0] - m, m:rgb.shape[1] - m] if m else rgb
    membrane = params.stain.intensity == "membrane"
    blocks = None
    record = None
    counted: np.ndarray | None = None  # the tissue whose nuclei count toward "too few cells"
    if membrane:
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
    keep = od_blocks >= params.stain.cell_count_od_sum
    if regions:
        union = np.logical_or.reduce(list(regions.values())).astype(np.float32)
        keep &= block_mean(union, params.mpp, params.stain) >= params.stain.membrane_block_min_tissue
    px = block_pixels(shape, params.mpp, params.stain)
    return inten[keep].ravel(), px[keep].ravel(), od_blocks[keep].ravel()


def _any_tissue(od_blocks: np.ndarray, shape: tuple[int, int], params: TileParams) -> np.ndarray:
    """Pixels of membrane blocks holding any tissue (``StainConfig.cell_count_od_sum``)."""
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
        return read_tile(slide, tile)
    return read_mapped_tile(slide, transform, tile)


def _transform_from(job: _ChunkJob) -> Any:
    if job.transform_json is None:
        return None
    return Transform.from_json(job.transform_json)


def _region_masks(job: _ChunkJob, k: int) -> dict[int, np.ndarray] | None:
    """Masks of the ROIs that tile ``k`` of the job intersects (None without ROIs)."""
    if job.rois is None or job.tile_rois is None:
        return None
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
    a.cell_text, a.cell_count = cell_features(a.cells, tile, transform, run_id)
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


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise JobCancelled("the scoring run was cancelled", hint="nothing was written")
