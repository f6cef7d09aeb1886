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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import (
    GUIDELINES,
    HER2_CLASSES,
    PRODUCT_MARKER,
    CellConfig,
    ModelConfig,
    RegistrationConfig,
    ScoringConfig,
    StainConfig,
    TilingConfig,
    TissueConfig,
)
from .errors import JobCancelled, UserInputError

__all__ = [
    "ScoreOptions",
    "ScoreRequest",
    "ScoreResult",
    "TileAnalysis",
    "analyse_tile",
    "run_score",
    "write_result",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
#: Tiles analysed per executor task: large enough to amortise scheduling, small
#: enough for smooth progress and bounded memory (tiles in flight).
CHUNK_TILES = 8


@dataclass(frozen=True)
class ScoreOptions:
    """Everything that shapes a scoring run; defaults come from :mod:`config`."""

    tiling: TilingConfig = field(default_factory=TilingConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    stain: StainConfig = field(default_factory=StainConfig)
    cells: CellConfig = field(default_factory=CellConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    tumor_model: Path | None = None
    stain_model: Path | None = None
    seg_model: Path | None = None
    stain_vectors: str | None = None  # QuPath stain string; None = defaults / estimate


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


@dataclass
class ScoreResult:
    summary: dict[str, Any]
    detections: list[Any]
    annotations: list[Any]
    he_detections: list[Any]
    overlay: np.ndarray


@dataclass
class TileAnalysis:
    """What one IHC tile yields: its stain class map score and optional cells."""

    score: Any  # scoring.TileScore
    dab_mean: float
    cells: list[Any] = field(default_factory=list)  # cells.Cell, tile-pixel coordinates
    cell_classes: np.ndarray | None = None


# --------------------------------------------------------------------------- tile work


@dataclass(frozen=True)
class _StainParams:
    stain: StainConfig
    cells: CellConfig
    level: str
    vectors: Any  # stain.StainVectors
    background: tuple[float, float, float]
    mpp: float


def analyse_tile(rgb: np.ndarray, params: _StainParams, class_map: np.ndarray | None = None) -> TileAnalysis:
    """Score one IHC tile: stain class map (given, or by deconvolution), cells if asked."""
    from .scoring import score_class_map
    from .stain import dab_class_map, deconvolve

    od = deconvolve(rgb, params.vectors, params.background)
    if class_map is None:
        class_map = dab_class_map(rgb, params.stain, vectors=params.vectors,
                                  background=params.background)
    tissue = class_map > 0
    dab_mean = float(od[..., 1][tissue].mean()) if tissue.any() else float("nan")
    score = score_class_map(class_map)
    analysis = TileAnalysis(score=score, dab_mean=dab_mean)
    if params.level == "cell":
        from .cells import detect_cells

        result = detect_cells(rgb, params.mpp, params.cells, params.stain,
                              vectors=params.vectors, background=params.background)
        analysis.cells = list(result.cells)
        analysis.cell_classes = np.array([c.her2_class for c in result.cells], dtype=np.int8)
    return analysis


_SLIDE_CACHE: dict[tuple[str, float | None], Any] = {}
_SLIDE_CACHE_LOCK = threading.Lock()


def _cached_slide(path: str, mpp: float | None) -> Any:
    """One open slide per process and path (workers of a pool or a Dask cluster)."""
    from .slide import open_slide

    key = (path, mpp)
    with _SLIDE_CACHE_LOCK:
        slide = _SLIDE_CACHE.get(key)
        if slide is None:
            slide = open_slide(path, mpp=mpp)
            _SLIDE_CACHE[key] = slide
        return slide


@dataclass(frozen=True)
class _ChunkJob:
    """A picklable unit of tile work (plain data only: it may cross to a Dask worker)."""

    ihc_path: str
    ihc_mpp: float | None
    tiles: tuple[Any, ...]  # tiling.Tile (IHC grid) or H&E tiles when `transform` is set
    transform_json: str | None
    params: _StainParams


def _read_ihc_tile(job: _ChunkJob, tile: Any, transform: Any) -> np.ndarray:
    slide = _cached_slide(job.ihc_path, job.ihc_mpp)
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


def _run_chunk(job: _ChunkJob) -> list[TileAnalysis]:
    transform = _transform_from(job)
    return [analyse_tile(_read_ihc_tile(job, t, transform), job.params) for t in job.tiles]


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
    if not selected:
        classes = sorted({str(o.classification) for o in request.rois})
        raise UserInputError(
            f"no annotation of class {request.roi_class!r} among the {len(request.rois)} ROIs",
            hint=f"classes present: {', '.join(classes) or 'none'}; check --roi-class",
        )
    geoms = [g for g, _ in selected]
    names = [n or f"Region {i + 1}" for i, (_, n) in enumerate(selected)]
    return geoms, names


def _stain_vectors(options: ScoreOptions, thumb: np.ndarray, tissue_mask: np.ndarray) -> Any:
    from .stain import StainVectors, estimate_vectors

    if options.stain_vectors:
        return StainVectors.from_qupath(options.stain_vectors)
    if options.stain.estimate_vectors:
        return estimate_vectors(thumb, tissue_mask)
    return StainVectors.default(options.stain)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]),
                      interpolation=cv2.INTER_NEAREST).astype(bool)


def run_score(
    request: ScoreRequest,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    executor: cf.Executor | None = None,
) -> ScoreResult:
    """Score one IHC slide (with its H&E partner when given). Writes nothing."""
    from .slide import open_slide
    from .stain import estimate_background
    from .tiling import tile_grid
    from .tissue import detect_tissue

    t_start = time.perf_counter()
    opts = request.options
    if opts.scoring.guideline not in GUIDELINES:
        raise UserInputError(f"unknown guideline {opts.scoring.guideline!r}",
                             hint=f"choose one of {', '.join(GUIDELINES)}")
    ihc = open_slide(request.ihc, mpp=request.ihc_mpp)
    he = open_slide(request.he, mpp=request.he_mpp) if request.he is not None else None
    try:
        ihc_mpp = ihc.mpp  # raises MPPMissing naming --mpp
        roi_geoms, roi_names = _select_rois(request)
        ihc_thumb = ihc.thumbnail(mpp=opts.tissue.thumbnail_mpp)
        ihc_tissue = detect_tissue(ihc_thumb, opts.tissue, mpp=opts.tissue.thumbnail_mpp * 1.0)
        ihc_tissue = _rescale_tissue(ihc_tissue, ihc, ihc_thumb)
        background = estimate_background(ihc_thumb, mask=~_resize_mask(ihc_tissue.mask, ihc_thumb.shape[:2]))
        vectors = _stain_vectors(opts, ihc_thumb, _resize_mask(ihc_tissue.mask, ihc_thumb.shape[:2]))
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
            he_thumb = he.thumbnail(mpp=opts.tissue.thumbnail_mpp)
            he_tissue = _rescale_tissue(detect_tissue(he_thumb, opts.tissue, mpp=opts.tissue.thumbnail_mpp), he, he_thumb)
            grid = tile_grid(he.dimensions, he_mpp, opts.tiling, tissue=he_tissue,
                             rois=roi_geoms or None)
        tiles = list(grid.tiles)
        if not tiles:
            raise UserInputError(
                "no tile to score: no tissue found inside the regions of interest",
                hint="check the ROIs/--roi-class, or lower TilingConfig.min_tissue_fraction",
            )
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
        if he is not None and opts.tumor_model:
            he_probs = _classify_he_tiles(he, tiles, opts, step, cancel)

        params = _StainParams(opts.stain, opts.cells, opts.scoring.level, vectors,
                              tuple(float(b) for b in background), opts.tiling.mpp)
        analyses = _analyse_tiles(request, tiles, params, transform, opts, step, cancel, executor)
        stain_cls = _classify_stain_tiles(request, tiles, params, transform, opts, cancel) \
            if opts.stain_model else None
        _check_cancel(cancel)
        return _assemble(request, ihc, he, grid, tiles, analyses, he_probs, stain_cls,
                         roi_geoms, roi_names, transform, transform_info, ihc_thumb,
                         background, vectors, time.perf_counter() - t_start)
    finally:
        ihc.close()
        if he is not None:
            he.close()


def _rescale_tissue(mask: Any, slide: Any, thumb: np.ndarray) -> Any:
    """Make the mask's downsample exact for this slide (thumbnail sizes are rounded)."""
    downsample = slide.dimensions[0] / thumb.shape[1]
    if abs(mask.downsample - downsample) / downsample < 1e-6:
        return mask
    return dataclasses.replace(mask, downsample=downsample)


def _get_transform(request: ScoreRequest, he: Any, ihc: Any) -> tuple[Any, dict[str, Any]]:
    from .registration import Transform, register

    if request.transform is not None:
        try:
            text = Path(request.transform).read_text(encoding="utf-8")
        except OSError as err:
            raise UserInputError(f"cannot read transform {request.transform}: {err.strerror}",
                                 hint="give the JSON written by `her2-qupath register`") from err
        transform = Transform.from_json(text)
        source = str(request.transform)
    else:
        transform = register(he, ihc, request.options.registration)
        source = "registered"
    quality = dict(getattr(transform, "quality", {}) or {})
    reliable = bool(quality.get("reliable", True))
    if not reliable:
        log.warning("registration quality is poor (%s): mapped results are marked unreliable", quality)
    return transform, {"source": source, "quality": quality, "reliable": reliable}


def _chunks(tiles: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [tuple(tiles[i:i + CHUNK_TILES]) for i in range(0, len(tiles), CHUNK_TILES)]


def _analyse_tiles(request: ScoreRequest, tiles: list[Any], params: _StainParams, transform: Any,
                   opts: ScoreOptions, step: Callable[[int], None],
                   cancel: threading.Event | None, executor: cf.Executor | None) -> list[TileAnalysis]:
    transform_json = transform.to_json() if transform is not None else None
    jobs = [_ChunkJob(str(request.ihc), request.ihc_mpp, chunk, transform_json, params)
            for chunk in _chunks(tiles)]
    results: list[list[TileAnalysis] | None] = [None] * len(jobs)
    if opts.seg_model is not None:
        from .models import load_model, segment_tiles

        model = load_model(opts.seg_model, expected_kind="segmenter")
        for i, job in enumerate(jobs):
            _check_cancel(cancel)
            rgbs = _read_chunk(job)
            maps = segment_tiles(model, rgbs, precision=opts.model.precision,
                                 batch_size=opts.model.batch_size)
            results[i] = [analyse_tile(rgb, params, class_map=m) for rgb, m in zip(rgbs, maps)]
            step(len(job.tiles))
        return [a for chunk in results if chunk is not None for a in chunk]

    own_pool = executor is None
    pool = executor or cf.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
    try:
        futures = {pool.submit(_run_chunk, job): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            finished, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            if cancel is not None and cancel.is_set():
                for fut in pending:
                    fut.cancel()
                _check_cancel(cancel)
            for fut in finished:
                results[futures[fut]] = fut.result()
                step(len(jobs[futures[fut]].tiles))
    finally:
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)
    return [a for chunk in results if chunk is not None for a in chunk]


def _classify_he_tiles(he: Any, tiles: list[Any], opts: ScoreOptions, step: Callable[[int], None],
                       cancel: threading.Event | None) -> np.ndarray:
    """Tumour probability of each H&E tile from the model C."""
    from .models import classify_tiles, load_model

    model = load_model(opts.tumor_model, expected_kind="tumor")  # type: ignore[arg-type]
    tumor_index = model.tumor_index
    probs: list[np.ndarray] = []
    from .tiling import read_tile

    for chunk in _chunks(tiles):
        _check_cancel(cancel)
        rgbs = [read_tile(he, t) for t in chunk]
        p = classify_tiles(model, rgbs, precision=opts.model.precision,
                           batch_size=opts.model.batch_size)
        probs.append(np.asarray(p)[:, tumor_index])
        step(len(chunk))
    return np.concatenate(probs)


def _classify_stain_tiles(request: ScoreRequest, tiles: list[Any], params: _StainParams,
                          transform: Any, opts: ScoreOptions,
                          cancel: threading.Event | None) -> np.ndarray:
    """Stain-intensity class (0–3) of each IHC tile from the model L."""
    from .models import classify_tiles, load_model

    model = load_model(opts.stain_model, expected_kind="stain")  # type: ignore[arg-type]
    transform_json = transform.to_json() if transform is not None else None
    out: list[np.ndarray] = []
    for chunk in _chunks(tiles):
        _check_cancel(cancel)
        job = _ChunkJob(str(request.ihc), request.ihc_mpp, chunk, transform_json, params)
        p = classify_tiles(model, _read_chunk(job), precision=opts.model.precision,
                           batch_size=opts.model.batch_size)
        out.append(np.argmax(np.asarray(p), axis=1))
    return np.concatenate(out)


# --------------------------------------------------------------------------- assembly


def _assemble(request: ScoreRequest, ihc: Any, he: Any, grid: Any, tiles: list[Any],
              analyses: list[TileAnalysis], he_probs: np.ndarray | None,
              stain_cls: np.ndarray | None, roi_geoms: list[Any], roi_names: list[str],
              transform: Any, transform_info: dict[str, Any] | None, ihc_thumb: np.ndarray,
              background: Any, vectors: Any, seconds: float) -> ScoreResult:
    from .scoring import aggregate, paper_slide_score

    opts = request.options
    rule = GUIDELINES[opts.scoring.guideline]
    threshold = opts.model.tumor_threshold
    counted = [True] * len(tiles)
    if he_probs is not None:
        counted = [bool(p >= threshold) for p in he_probs]
    for i, a in enumerate(analyses):
        a.score = _annotate_tile_score(a.score, counted[i],
                                       None if he_probs is None else float(he_probs[i]),
                                       None if stain_cls is None else int(stain_cls[i]))

    region_index = [getattr(t, "roi_index", None) for t in tiles]
    use_cells = opts.scoring.level == "cell"
    slide_scores = [a.score for a, c in zip(analyses, counted) if c]
    slide_region = aggregate(slide_scores, rule, level=opts.scoring.level)
    regions: list[dict[str, Any]] = []
    region_objs: list[tuple[Any, Any, str]] = []
    if roi_geoms:
        for r, (geom, name) in enumerate(zip(roi_geoms, roi_names)):
            scores = [a.score for a, c, ri in zip(analyses, counted, region_index) if c and ri == r]
            reg = aggregate(scores, rule, level=opts.scoring.level)
            regions.append({"name": name, **_region_dict(reg)})
            region_objs.append((geom, reg, name))
    else:
        regions.append({"name": "Slide", **_region_dict(slide_region)})

    if opts.scoring.aggregation == "paper":
        wsi_class, wsi_percent = paper_slide_score(slide_scores)
        her2_score = HER2_CLASSES[wsi_class].removeprefix("HER2 ")
    else:
        her2_score = slide_region.her2_score
        wsi_percent = slide_region.percent_positive

    detections, he_detections = _tile_objects(tiles, analyses, counted, he_probs, transform,
                                              use_cells, opts)
    annotations = _region_objects(region_objs, slide_region, ihc, he, transform, her2_score, opts)
    summary = {
        "her2_score": her2_score,
        "guideline": rule.name,
        "guideline_reference": rule.reference,
        "level": opts.scoring.level,
        "aggregation": opts.scoring.aggregation,
        "class_percentages": slide_region.class_percentages,
        "percent_positive": wsi_percent,
        "h_score": slide_region.h_score,
        "n_tiles": len(tiles),
        "n_tiles_counted": int(sum(counted)),
        "n_cells": slide_region.n_cells if use_cells else None,
        "regions": regions,
        "sources": {
            "tumor": "model C" if he_probs is not None else
                     ("ROI annotations" if roi_geoms else "all tissue"),
            "stain_map": "model M" if opts.seg_model else "colour deconvolution",
            "stain_classifier": "model L" if stain_cls is not None else None,
            "mapping": None if transform_info is None else transform_info["source"],
        },
        "registration": transform_info,
        "reliable": True if transform_info is None else transform_info["reliable"],
        "agreement": _agreement(analyses, stain_cls, counted),
        "slide": {"path": str(request.ihc), "dimensions": list(ihc.dimensions), "mpp": ihc.mpp},
        "grid": {"rows": grid.n_rows, "cols": grid.n_cols, "tile_size": opts.tiling.tile_size,
                 "mpp": opts.tiling.mpp},
        "provenance": _provenance(request, background, vectors, seconds),
    }
    overlay = _overlay(ihc, he, tiles, analyses, counted, transform, summary, opts, vectors,
                       background)
    return ScoreResult(summary, detections, annotations, he_detections, overlay)


#: Longest side of the overview picture, in pixels.
OVERLAY_MAX_SIZE = 1400


def _overlay(ihc: Any, he: Any, tiles: list[Any], analyses: list[TileAnalysis],
             counted: list[bool], transform: Any, summary: dict[str, Any], opts: ScoreOptions,
             vectors: Any, background: Any) -> np.ndarray:
    """IHC thumbnail with pixel classes and tile scores (H&E beside it when given) + legend."""
    from .render import TileMark, add_legend, blend, colorize_class_map, draw_tiles, side_by_side
    from .stain import dab_class_map

    thumb = ihc.thumbnail(max_size=OVERLAY_MAX_SIZE)
    scale = thumb.shape[1] / ihc.dimensions[0]
    cmap = dab_class_map(thumb, opts.stain, vectors=vectors, background=background)
    pic = blend(thumb, colorize_class_map(cmap), 0.55, mask=cmap > 0)
    polys = [t.polygon for t in tiles]
    if transform is not None:
        from .registration import map_tile

        polys = [map_tile(transform, t) for t in tiles]
    marks = [TileMark(tuple((x * scale, y * scale) for x, y in p.exterior.coords),
                      int(a.score.tile_class), c) for p, a, c in zip(polys, analyses, counted)]
    pic = draw_tiles(pic, marks, width=max(1, round(thumb.shape[1] / 500)))
    if he is not None:
        he_thumb = he.thumbnail(max_size=OVERLAY_MAX_SIZE)
        he_scale = he_thumb.shape[1] / he.dimensions[0]
        he_marks = [TileMark(tuple((x * he_scale, y * he_scale) for x, y in t.polygon.exterior.coords),
                             int(a.score.tile_class), c) for t, a, c in zip(tiles, analyses, counted)]
        pic = side_by_side(draw_tiles(he_thumb, he_marks, width=max(1, round(he_thumb.shape[1] / 500))), pic)
    pct = summary["class_percentages"]
    lines = [f"{k}: {pct[k]:.1f} %" for k in ("0", "1+", "2+", "3+")]
    lines += [f"H-score: {summary['h_score']:.0f}", f"2+/3+: {summary['percent_positive']:.1f} %",
              f"tiles: {summary['n_tiles_counted']}/{summary['n_tiles']}"]
    if summary.get("n_cells") is not None:
        lines.append(f"cells: {summary['n_cells']}")
    if not summary["reliable"]:
        lines.append("REGISTRATION UNRELIABLE")
    title = f"HER2 {summary['her2_score']}  ({summary['guideline']}, {summary['level']})"
    return add_legend(pic, title, lines)


def _annotate_tile_score(score: Any, counted: bool, tumor_prob: float | None,
                         stain_class: int | None) -> Any:
    changes: dict[str, Any] = {}
    if hasattr(score, "tumor"):
        changes["tumor"] = counted
    if hasattr(score, "tumor_probability"):
        changes["tumor_probability"] = tumor_prob
    if hasattr(score, "classifier_class"):
        changes["classifier_class"] = stain_class
    return dataclasses.replace(score, **changes) if changes else score


def _agreement(analyses: list[TileAnalysis], stain_cls: np.ndarray | None,
               counted: list[bool]) -> dict[str, Any] | None:
    """How often the stain classifier L agrees with the class map's majority class."""
    if stain_cls is None:
        return None
    pairs = [(int(a.score.tile_class), int(c)) for a, c, k in zip(analyses, stain_cls, counted) if k]
    if not pairs:
        return {"tiles": 0, "fraction": None}
    same = sum(1 for x, y in pairs if x == y)
    return {"tiles": len(pairs), "fraction": same / len(pairs)}


def _region_dict(reg: Any) -> dict[str, Any]:
    return {
        "her2_score": reg.her2_score,
        "class_percentages": reg.class_percentages,
        "percent_positive": reg.percent_positive,
        "h_score": reg.h_score,
        "n_tiles": reg.n_tiles,
        "n_cells": reg.n_cells,
    }


def _measure_tile(a: TileAnalysis, tumor_prob: float | None) -> dict[str, float]:
    s = a.score
    m: dict[str, float] = {}
    for name in ("0", "1+", "2+", "3+"):
        m[f"HER2 {name}: %"] = float(s.class_percentages[name])
    m["Background: %"] = float(s.background_percent)
    m["DAB: Mean OD"] = a.dab_mean
    m["H-score"] = float(s.h_score)
    m["HER2 class"] = float(s.tile_class)
    if tumor_prob is not None:
        m["Tumor probability"] = tumor_prob
    return m


def _tile_objects(tiles: list[Any], analyses: list[TileAnalysis], counted: list[bool],
                  he_probs: np.ndarray | None, transform: Any, use_cells: bool,
                  opts: ScoreOptions) -> tuple[list[Any], list[Any]]:
    from shapely import affinity

    from .qupath.geojson import cell_object, tile_object

    detections: list[Any] = []
    he_detections: list[Any] = []
    for i, (tile, a) in enumerate(zip(tiles, analyses)):
        prob = None if he_probs is None else float(he_probs[i])
        meas = _measure_tile(a, prob)
        meas["Tile row"] = float(tile.row)
        meas["Tile column"] = float(tile.col)
        cls = HER2_CLASSES[int(a.score.tile_class)] if counted[i] else "Ignore*"
        if transform is None:
            ihc_poly = tile.polygon
        else:
            from .registration import map_tile

            ihc_poly = map_tile(transform, tile)
            he_detections.append(tile_object(tile.polygon, "Tumor" if counted[i] else "Non-tumor",
                                             meas, name=a.score.label))
        detections.append(tile_object(ihc_poly, cls, meas, name=a.score.label))
        if use_cells and a.cells:
            # cell polygons are in tile pixels at the working MPP: scale to level 0 and place
            sx = tile.width / tile.size
            sy = tile.height / tile.size
            for cell in a.cells:
                geoms = []
                for g in (cell.cell_polygon, cell.nucleus_polygon):
                    g = affinity.scale(g, xfact=sx, yfact=sy, origin=(0, 0))
                    g = affinity.translate(g, xoff=tile.x, yoff=tile.y)
                    if transform is not None:
                        from .registration import warp_geometry

                        g = warp_geometry(transform, g)
                    geoms.append(g)
                detections.append(cell_object(geoms[0], geoms[1],
                                              HER2_CLASSES[int(cell.her2_class)],
                                              dict(cell.measurements)))
    return detections, he_detections


def _region_objects(region_objs: list[tuple[Any, Any, str]], slide_region: Any, ihc: Any,
                    he: Any, transform: Any, her2_score: str, opts: ScoreOptions) -> list[Any]:
    from shapely.geometry import box

    from .qupath.geojson import annotation_object

    out = []
    items = region_objs or [(box(0, 0, *ihc.dimensions) if he is None else box(0, 0, *he.dimensions),
                             slide_region, "Slide")]
    for geom, reg, name in items:
        if transform is not None:
            from .registration import warp_geometry

            geom = warp_geometry(transform, geom)
        score = reg.her2_score if region_objs else her2_score
        meas = {f"HER2 {k}: %": float(v) for k, v in reg.class_percentages.items()}
        meas.update({"H-score": float(reg.h_score), "Percent positive (2+/3+)": float(reg.percent_positive),
                     "Tiles": float(reg.n_tiles)})
        if reg.n_cells is not None:
            meas["Cells"] = float(reg.n_cells)
        meas["HER2 score"] = float(("0", "1+", "2+", "3+").index(score))
        out.append(annotation_object(
            geom, f"HER2 {score}", meas,
            name=f"{PRODUCT_MARKER}: {name} HER2 {score}",
        ))
    return out


def _provenance(request: ScoreRequest, background: Any, vectors: Any, seconds: float) -> dict[str, Any]:
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
    for mod in ("tifffile", "shapely", "skimage", "cv2", "torch", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is recorded as absent
            versions[mod] = None
    return {
        "run_id": str(uuid.uuid4()),
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
        "roi_class": request.roi_class,
        "n_rois": 0 if not request.rois else len(request.rois),
    }


def write_result(result: ScoreResult, outdir: str | os.PathLike[str], *,
                 he: bool | None = None) -> Path:
    """Write summary.json, detections/annotations GeoJSON and overlay.png atomically.

    With an H&E partner, ``he_detections.geojson`` and ``ihc_detections.geojson``
    are written as well so each imports into its own image in QuPath.
    """
    from ._io import atomic_output_dir, atomic_write_json
    from .qupath.geojson import write_geojson
    from .render import save_png

    with atomic_output_dir(outdir) as tmp:
        write_geojson(tmp / "detections.geojson", result.detections)
        write_geojson(tmp / "annotations.geojson", result.annotations)
        if result.he_detections or he:
            write_geojson(tmp / "ihc_detections.geojson", result.detections)
            write_geojson(tmp / "he_detections.geojson", result.he_detections)
        atomic_write_json(tmp / "summary.json", result.summary)
        save_png(tmp / "overlay.png", result.overlay)
    return Path(outdir)
