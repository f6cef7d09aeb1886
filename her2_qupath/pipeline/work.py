"""A run's tile work over an executor: chunks, worker processes, the models over the tiles.

The tiles are cut into chunks (:data:`CHUNK_TILES` a task) and run by any
``concurrent.futures.Executor`` — a local thread pool by default, a Dask cluster's
executor to scale out; at the cell level a thread pool is replaced by as many worker
processes (:func:`_cell_pool`). Cells found by a chunk go to the run's spill file as the
chunk finishes. With the segmenter M the tiles' class maps come from the model; the H&E
tumour classifier C and the IHC stain classifier L are run over the tiles here too.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
from shapely import STRtree

from ..case_report import load_drawing_modules
from ..config import ScoreOptions, SlideConfig
from ..models import (
    classify_tiles,
    heatmap_images,
    load_model,
    segment_tiles,
    slide_heatmaps,
    stain_grades,
)
from ..qupath.stream import CellSpill
from .pictures import OVERLAY_MAX_SIZE
from .request import ScoreRequest, TileAnalysis, TileParams
from .tiles import (
    _CANCELLED_RUNS,
    _cells_to_text,
    _check_cancel,
    _ChunkJob,
    _read_chunk,
    _region_masks,
    _run_chunk,
    _spill_cells,
    analyse_tile,
)

__all__ = ["CHUNK_TILES", "prestart_cell_workers"]

log = logging.getLogger(__name__)

#: Tiles analysed per executor task: large enough to amortise scheduling, small
#: enough for smooth progress and bounded memory (tiles in flight).
CHUNK_TILES = 8


def _chunks(tiles: Sequence[Any], size: int = CHUNK_TILES) -> list[tuple[Any, ...]]:
    return [tuple(tiles[i:i + size]) for i in range(0, len(tiles), size)]


def _pool_workers(executor: cf.Executor | None) -> int:
    if isinstance(executor, cf.ThreadPoolExecutor):
        return max(1, int(getattr(executor, "_max_workers", 1)))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


#: Modules a cell-level worker process imports once, in the fork server it is forked from;
#: the last one loads the compiled cell kernels there (:mod:`.worker_warmup`).
_WORKER_PRELOAD = ["her2_qupath.pipeline.tiles", "her2_qupath.cells", "her2_qupath.cell_table",
                   "her2_qupath.membrane", "her2_qupath.slide", "her2_qupath.tiling",
                   "her2_qupath.qupath.builder", "her2_qupath.qupath.geojson",
                   "her2_qupath.pipeline.worker_warmup"]


def _uses_processes(level: str, executor: cf.Executor | None) -> bool:
    """Whether the cell level's chunks may go to worker processes (:func:`_cell_pool`)."""
    return level == "cell" and (executor is None or isinstance(executor, cf.ThreadPoolExecutor)) \
        and _pool_workers(executor) >= 2


def _worker_context() -> Any:
    """The workers' multiprocessing context: a fork server preloading :data:`_WORKER_PRELOAD`."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_WORKER_PRELOAD)
        return ctx
    return mp.get_context("spawn")  # pragma: no cover - Windows, macOS without forkserver


def prestart_cell_workers(level: str, executor: cf.Executor | None) -> None:
    """Start the fork server of the cell-level workers now, if the run will use them.

    It starts in the background (this returns at once) and preloads the tile work's
    modules and compiled kernels while the run reads the slide, finds the tissue and
    builds the grid; the pool's workers are then forked warm. A fork server already
    running (an earlier run of this process) is kept.
    """
    if not _uses_processes(level, executor):
        return
    ctx = _worker_context()
    if ctx.get_start_method() != "forkserver":  # pragma: no cover - no fork server to start
        return
    from multiprocessing import forkserver

    try:
        forkserver.ensure_running()
    except OSError as err:  # pragma: no cover - the pool starts it, or falls back to threads
        log.warning("could not start the worker processes' fork server early (%s)", err)


def _cell_pool(level: str, n_jobs: int, executor: cf.Executor | None) -> cf.Executor | None:
    """A process pool for the cell level (None: use ``executor`` or threads as given).

    Cell detection holds the GIL for about a third of its time, so threads scale
    poorly (2 threads: 1.48x; 2 processes: 1.95x). Without an executor, or with
    a thread pool (the CLI, batch runs, the server's local backend), the cell
    level runs its chunks in as many worker processes as the pool had threads;
    a Dask executor is used as given. Tile tasks share nothing: each worker
    opens the slide itself and returns its tiles' scores and cell text.
    """
    if n_jobs < 2 or not _uses_processes(level, executor):
        return None
    workers = min(_pool_workers(executor), n_jobs)
    if workers < 2:
        return None
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context())


def _work_cache_mb(tile_size: int, margin: int, chunk: int) -> float:
    """The reader's tile cache a worker needs: a chunk's tiles (two more for the slide
    tiles they straddle) with their margins, at up to twice the working resolution per
    axis (the slide level read), RGB; at most ``SlideConfig.tile_cache_mb``."""
    need = (chunk + 2) * 4 * 3 * (tile_size + 2 * margin) ** 2 / 2**20
    return float(min(SlideConfig().tile_cache_mb, max(8.0, round(need))))


def _tile_rois(tiles: list[Any], rois: list[Any]) -> list[tuple[int, ...]] | None:
    """For each tile, the indices of the ROIs whose interior it overlaps."""
    if not rois:
        return None
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
    order = _two_row_order(tiles) if cell_level else None
    if order is not None:
        tiles = [tiles[i] for i in order]
        tile_rois = None if tile_rois is None else [tile_rois[i] for i in order]
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
        spill = CellSpill()
    if opts.seg_model is not None:
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
        return _in_grid_order(results, order)

    procs = _cell_pool(params.level, len(jobs), executor)
    if procs is not None:
        # from here this process waits for its workers: the report's imports meanwhile
        threading.Thread(target=load_drawing_modules, name="her2-report-imports").start()
        try:
            _run_jobs(procs, True, jobs, results, spill, run_id, step, cancel)
        except BrokenProcessPool as err:  # e.g. a script without a __main__ guard, a killed worker
            log.warning("worker processes failed (%s); the remaining tiles run in threads", err)
        else:
            return _in_grid_order(results, order)
        todo = [i for i, r in enumerate(results) if r is None]
        pool = executor or cf.ThreadPoolExecutor(max_workers=_pool_workers(None))
        _run_jobs(pool, executor is None, [jobs[i] for i in todo], results, spill, run_id, step,
                  cancel, index=todo)
    else:
        pool = executor or cf.ThreadPoolExecutor(max_workers=_pool_workers(None))
        _run_jobs(pool, executor is None, jobs, results, spill, run_id, step, cancel)
    return _in_grid_order(results, order)


def _two_row_order(tiles: Sequence[Any]) -> list[int]:
    """The order cell-level tiles are worked in: rows in pairs, column by column, the
    upper tile first. Cut into chunks of :data:`CHUNK_TILES`, a chunk is two rows of
    four tiles, whose margins overlap the neighbours' in both directions, so a worker
    decodes the slide tiles they share once (about 23 JPEG tiles a tile, not 25)."""
    return sorted(range(len(tiles)), key=lambda i: (tiles[i].row // 2, tiles[i].col, tiles[i].row))


def _in_grid_order(results: list[list[TileAnalysis] | None],
                   order: list[int] | None) -> list[TileAnalysis]:
    """The chunks' analyses, flat, in the order of the tiles given (``order[j]``: the place
    of the ``j``-th tile worked on; None: worked on in that order)."""
    flat = [a for chunk in results if chunk is not None for a in chunk]
    if order is None:
        return flat
    out: list[TileAnalysis] = [None] * len(flat)  # type: ignore[list-item]
    for j, a in zip(order, flat, strict=True):
        out[j] = a
    return out


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
