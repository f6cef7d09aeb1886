"""What a job runs: a *scorer* turns a checked request into result files.

A scorer is any callable ``scorer(spec, outdir, *, progress, cancel, executor)``
that writes ``summary.json``, ``detections.geojson``, ``annotations.geojson``
and ``overlay.png`` into ``outdir`` and returns the summary dictionary, with
an ``estimate_tiles(spec)`` method giving an upper bound of the tile count
before any pixel is read (``None`` when unknown). The server calls it from a
worker thread; ``progress(done, total)`` feeds the job's progress, ``cancel``
is a :class:`threading.Event` set on cancellation, and ``executor`` (a
:class:`concurrent.futures.Executor`, local or Dask) takes the tile work.

:class:`PipelineScorer` runs :func:`her2_qupath.pipeline.run_score` (the
default). :class:`DabTileScorer` is a light scorer that needs only numpy and
Pillow (colour deconvolution on tiles of a plain RGB image); the server's own
tests and benchmarks use it, and ``create_app({"SCORER": ...})`` accepts any
scorer.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Any, Protocol

from .. import __version__
from .._io import atomic_write_bytes, atomic_write_json
from ..config import (
    GUIDELINES,
    HER2_CLASSES,
    HER2_COLORS,
    PRODUCT_MARKER,
    ServerConfig,
    StainConfig,
)
from ..errors import JobCancelled, UserInputError
from .http import ApiError
from .security import count_vertices, resolve_image

__all__ = [
    "JobSpec",
    "Scorer",
    "build_spec",
    "check_vertex_limit",
    "PipelineScorer",
    "DabTileScorer",
    "default_scorer",
    "tile_class_counts",
    "json_ready",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class JobSpec:
    """A request body after validation and path checks: what a scorer needs."""

    ihc: Path
    he: Path | None = None
    ihc_mpp: float | None = None
    he_mpp: float | None = None
    rois: tuple[dict[str, Any], ...] | None = None  # QuPath GeoJSON features
    roi_class: str | None = None
    transform: Path | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Scorer(Protocol):
    def estimate_tiles(self, spec: JobSpec) -> int | None: ...

    def __call__(
        self,
        spec: JobSpec,
        outdir: Path,
        *,
        progress: Progress | None = None,
        cancel: Event | None = None,
        executor: Executor | None = None,
    ) -> dict[str, Any]: ...


def json_ready(obj: Any) -> Any:
    """Plain JSON data as the result files hold it: numpy values converted, NaN as "NaN"."""
    import json

    from .._io import _nan_to_str, json_default

    return _nan_to_str(json.loads(json.dumps(obj, default=json_default)))


def _features(rois: Any) -> list[dict[str, Any]] | None:
    if rois is None:
        return None
    if isinstance(rois, dict):
        return list(rois.get("features", []))
    return list(rois)


def check_vertex_limit(features: Any, limit: int) -> None:
    """Raise 413 when ROI features hold more than ``limit`` vertices (any JSON shape accepted)."""
    if isinstance(features, dict):
        features = features.get("features")
    if not isinstance(features, list):
        return
    vertices = count_vertices(f.get("geometry") for f in features if isinstance(f, dict))
    if vertices > limit:
        raise ApiError(
            413,
            "too_many_vertices",
            f"the ROIs have {vertices} vertices, more than this server accepts ({limit}); "
            "simplify them in QuPath (Objects > Annotations > Simplify shape) or score the slide in parts",
        )


def build_spec(body: Mapping[str, Any], config: ServerConfig) -> JobSpec:
    """Check a schema-valid request body against the server's roots and limits.

    Raises :class:`AccessDenied` (403) / :class:`SlideNotFound` (404) for
    image paths, :class:`ApiError` 413 for too many ROI vertices, and
    :class:`GeoJSONError` / :class:`UserInputError` (400) for ROIs QuPath
    could not have written.
    """
    roots = config.image_roots
    features = _features(body.get("rois"))
    if features is not None:
        check_vertex_limit(features, config.max_roi_vertices)
        if roi_class := body.get("roi_class"):
            features = [f for f in features if _class_name(f) == roi_class]
            if not features:
                raise UserInputError(
                    f"no ROI has the classification {roi_class!r}",
                    hint="send roi_class as QuPath names the class, or omit it",
                )
        _validate_geojson(features)
    he = body.get("he")
    transform = body.get("transform")
    return JobSpec(
        ihc=resolve_image(body["ihc"], roots, what="IHC image"),
        he=resolve_image(he, roots, what="H&E image") if he else None,
        ihc_mpp=body.get("ihc_mpp"),
        he_mpp=body.get("he_mpp"),
        rois=tuple(features) if features is not None else None,
        roi_class=body.get("roi_class"),
        transform=resolve_image(transform, roots, what="transform file") if transform else None,
        options=dict(body.get("options") or {}),
    )


def _class_name(feature: Mapping[str, Any]) -> str | None:
    props = feature.get("properties") or {}
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls
    if isinstance(cls, dict):
        name = cls.get("name")
        if name is None and isinstance(cls.get("names"), list):
            name = ": ".join(str(n) for n in cls["names"])
        return name
    return None


def _validate_geojson(features: list[dict[str, Any]]) -> None:
    """Parse the ROIs as QuPath objects (``qupath.geojson.read_geojson``) when that module is present.

    Raises :class:`GeoJSONError` (HTTP 400) naming the bad feature, at submission
    rather than when the job runs.
    """
    try:
        from ..qupath.geojson import read_geojson
    except ImportError:
        log.debug("qupath.geojson not available; ROIs checked by the JSON schema only")
        return
    read_geojson({"type": "FeatureCollection", "features": features})


def _roi_bounds(spec: JobSpec) -> list[tuple[float, float, float, float]] | None:
    if not spec.rois:
        return None
    from shapely.geometry import shape

    return [shape(f["geometry"]).bounds for f in spec.rois]


def _count_tiles(
    dims: tuple[int, int], side: float, bounds: list[tuple[float, float, float, float]] | None
) -> int:
    """Upper bound of the tiles of side ``side`` (level-0 px) covering the image or the ROI boxes."""
    cols, rows = math.ceil(dims[0] / side), math.ceil(dims[1] / side)
    if not bounds:
        return cols * rows
    total = 0
    for x0, y0, x1, y1 in bounds:
        c0, r0 = max(0, math.floor(x0 / side)), max(0, math.floor(y0 / side))
        c1, r1 = min(cols, math.ceil(x1 / side)), min(rows, math.ceil(y1 / side))
        total += max(0, c1 - c0) * max(0, r1 - r0)
    return min(total, cols * rows)


# --------------------------------------------------------------------------------------------
# The real pipeline


class PipelineScorer:
    """Scores with :func:`her2_qupath.pipeline.run_score` (imported on first use)."""

    name = "pipeline"
    #: request ``options.models`` key -> ScoreOptions field holding that model directory
    MODEL_FIELDS: Mapping[str, str] = {
        "tumor": "tumor_model",
        "stain": "stain_model",
        "segmenter": "seg_model",
    }

    def __init__(self, models_dir: str | os.PathLike[str] | None = None) -> None:
        self.models_dir = Path(models_dir) if models_dir else None

    def score_options(self, options: Mapping[str, Any]) -> Any:
        """``ScoreOptions`` from the request's options (defaults from config.py)."""
        from ..pipeline import ScoreOptions

        base = ScoreOptions()
        scoring = dataclasses.replace(
            base.scoring,
            **{k: options[k] for k in ("guideline", "level", "aggregation") if k in options},
        )
        tiling_keys = {
            "tile_size": "tile_size",
            "mpp": "mpp",
            "min_tissue_fraction": "min_tissue_fraction",
        }
        tiling = dataclasses.replace(
            base.tiling, **{f: options[k] for k, f in tiling_keys.items() if k in options}
        )
        changes: dict[str, Any] = {"scoring": scoring, "tiling": tiling}
        fields = {f.name for f in dataclasses.fields(base)}
        for key, name in (options.get("models") or {}).items():
            field_name = self.MODEL_FIELDS[key]
            if field_name not in fields:
                raise UserInputError(
                    f"this version scores without a {key} model", hint="omit options.models"
                )
            changes[field_name] = self.model_dir(name)
        return dataclasses.replace(base, **changes)

    def model_dir(self, name: str) -> Path:
        if self.models_dir is None:
            raise UserInputError(
                f"model {name!r} requested but the server has no models directory",
                hint="start it with --models-dir",
            )
        path = self.models_dir / name
        if not path.is_dir():
            raise UserInputError(f"no model named {name!r}", hint="see GET /api/v1/models")
        return path

    def request(self, spec: JobSpec) -> Any:
        from ..pipeline import ScoreRequest
        from ..qupath.geojson import read_geojson

        rois = None
        if spec.rois is not None:
            rois = tuple(read_geojson({"type": "FeatureCollection", "features": list(spec.rois)}))
        return ScoreRequest(
            ihc=spec.ihc,
            he=spec.he,
            ihc_mpp=spec.ihc_mpp,
            he_mpp=spec.he_mpp,
            rois=rois,
            roi_class=spec.roi_class,
            transform=spec.transform,
            options=self.score_options(spec.options),
        )

    def estimate_tiles(self, spec: JobSpec) -> int | None:
        try:
            from ..slide import open_slide
        except ImportError:
            return None
        from ..config import TilingConfig

        tile_size = int(spec.options.get("tile_size", TilingConfig.tile_size))
        work_mpp = float(spec.options.get("mpp", TilingConfig.mpp))
        with open_slide(spec.ihc, mpp=spec.ihc_mpp) as slide:
            dims = tuple(slide.dimensions)
            slide_mpp = slide.mpp
        return _count_tiles(
            (int(dims[0]), int(dims[1])), tile_size * work_mpp / slide_mpp, _roi_bounds(spec)
        )

    def __call__(
        self,
        spec: JobSpec,
        outdir: Path,
        *,
        progress: Progress | None = None,
        cancel: Event | None = None,
        executor: Executor | None = None,
    ) -> dict[str, Any]:
        from ..pipeline import run_score, write_result

        result = run_score(self.request(spec), progress=progress, cancel=cancel, executor=executor)
        write_result(result, outdir)
        return dict(result.summary)

    def score_in_memory(
        self,
        spec: JobSpec,
        *,
        progress: Progress | None = None,
        cancel: Event | None = None,
        executor: Executor | None = None,
    ) -> dict[str, Any]:
        """Summary, detections and annotations as JSON-ready data: no files, no overlay PNG."""
        from ..pipeline import run_score
        from ..qupath.geojson import to_feature

        result = run_score(self.request(spec), progress=progress, cancel=cancel, executor=executor)
        return json_ready(
            {
                "summary": result.summary,
                "detections": {
                    "type": "FeatureCollection",
                    "features": [to_feature(o) for o in result.detections],
                },
                "annotations": {
                    "type": "FeatureCollection",
                    "features": [to_feature(o) for o in result.annotations],
                },
            }
        )

    def models(self) -> list[dict[str, Any]]:
        """The model directories under ``models_dir`` (each holds a ``config.json``).

        ``kind`` (tumor, stain, segmenter) comes from the product's model file
        ``her2_qupath.json``, else the network type in ``config.json``. Models are
        loaded by each run, so none is reported as held in memory.
        """
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        found = []
        for sub in sorted(self.models_dir.iterdir()):
            if sub.is_dir() and (sub / "config.json").is_file():
                found.append({"name": sub.name, "kind": _model_kind(sub), "loaded": False})
        return found


def _model_kind(path: Path) -> str | None:
    import json

    for name, key in (("her2_qupath.json", "kind"), ("config.json", "model_type")):
        try:
            value = json.loads((path / name).read_text(encoding="utf-8")).get(key)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError):
            log.warning("model %s has an unreadable %s", path, name)
            continue
        if isinstance(value, str):
            return value
    return None


# --------------------------------------------------------------------------------------------
# A light scorer for plain images


def _stain_matrix(stain: StainConfig) -> Any:
    import numpy as np

    h = np.asarray(stain.hematoxylin, float)
    d = np.asarray(stain.dab, float)
    h, d = h / np.linalg.norm(h), d / np.linalg.norm(d)
    r = np.cross(h, d)
    r = r / np.linalg.norm(r)
    return np.linalg.inv(np.stack([h, d, r]))


def tile_class_counts(tile: Any, stain: StainConfig | None = None) -> list[int]:
    """Pixel counts ``[background, 0, 1+, 2+, 3+]`` of an RGB tile (DAB OD thresholds).

    Top-level and picklable, so it runs on a process pool or Dask workers.
    """
    import numpy as np

    stain = stain or StainConfig()
    od = -np.log10((np.asarray(tile, np.float64) + 1.0) / 256.0)
    conc = od.reshape(-1, 3) @ _stain_matrix(stain)
    dab = conc[:, 1]
    tissue = od.reshape(-1, 3).sum(axis=1) > stain.tissue_od
    t1, t2, t3 = stain.thresholds
    cls = np.where(dab < t1, 1, np.where(dab < t2, 2, np.where(dab < t3, 3, 4)))
    cls = np.where(tissue, cls, 0)
    return [int(v) for v in np.bincount(cls, minlength=5)]


def _score_label(k: int) -> str:
    """0, 1+, 2+, 3+: the labels the pipeline's summary uses."""
    return HER2_CLASSES[k].removeprefix("HER2 ")


def _geometry_box(x: int, y: int, w: int, h: int) -> dict[str, Any]:
    return {
        "type": "Polygon",
        "coordinates": [[[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]],
    }


def _classification(k: int) -> dict[str, Any]:
    name = HER2_CLASSES[k]
    return {"name": name, "color": list(HER2_COLORS[name])}


class DabTileScorer:
    """Colour deconvolution on ``tile_size`` tiles of a plain RGB image (PNG, JPEG, TIFF).

    A tile counts when at least ``min_tissue_fraction`` of it is tissue; its
    class is the majority DAB class of its tissue pixels; the slide score
    applies the guideline's cumulative percentage rule to the pixel classes.
    """

    name = "dab-tile"

    def __init__(self, *, delay_s: float = 0.0, stain: StainConfig | None = None) -> None:
        self.delay_s = delay_s  # per-tile pause, for tests that need a job to stay running
        self.stain = stain or StainConfig()

    def models(self) -> list[dict[str, Any]]:
        return []

    def _image(self, path: Path) -> Any:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            from ..errors import SlideFormatError

            raise SlideFormatError(
                f"cannot read {path.name} as an image: {err}", hint="send a PNG, JPEG or TIFF"
            ) from err

    def _tiles(self, spec: JobSpec, dims: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        size = int(spec.options.get("tile_size", 256))
        boxes = [
            (x, y, min(size, dims[0] - x), min(size, dims[1] - y))
            for y in range(0, dims[1], size)
            for x in range(0, dims[0], size)
        ]
        if not spec.rois:
            return boxes
        from shapely.geometry import Point, shape
        from shapely.ops import unary_union

        region = unary_union([shape(f["geometry"]) for f in spec.rois])
        return [b for b in boxes if region.contains(Point(b[0] + b[2] / 2, b[1] + b[3] / 2))]

    def estimate_tiles(self, spec: JobSpec) -> int | None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(spec.ihc) as im:
                dims = im.size
        except (UnidentifiedImageError, OSError) as err:
            from ..errors import SlideFormatError

            raise SlideFormatError(
                f"cannot read {spec.ihc.name} as an image: {err}", hint="send a PNG, JPEG or TIFF"
            ) from err
        return _count_tiles(dims, int(spec.options.get("tile_size", 256)), _roi_bounds(spec))

    def __call__(
        self,
        spec: JobSpec,
        outdir: Path,
        *,
        progress: Progress | None = None,
        cancel: Event | None = None,
        executor: Executor | None = None,
    ) -> dict[str, Any]:
        image, boxes, counts = self._count(
            spec, progress=progress, cancel=cancel, executor=executor
        )
        summary, detections, annotations = self._objects(spec, image, boxes, counts)
        atomic_write_json(outdir / "summary.json", summary)
        atomic_write_json(outdir / "detections.geojson", detections)
        atomic_write_json(outdir / "annotations.geojson", annotations)
        min_frac = float(spec.options.get("min_tissue_fraction", 0.25))
        atomic_write_bytes(outdir / "overlay.png", self._overlay(image, boxes, counts, min_frac))
        return summary

    def score_in_memory(
        self,
        spec: JobSpec,
        *,
        progress: Progress | None = None,
        cancel: Event | None = None,
        executor: Executor | None = None,
    ) -> dict[str, Any]:
        """Summary, detections and annotations without files or overlay (synchronous /score)."""
        image, boxes, counts = self._count(
            spec, progress=progress, cancel=cancel, executor=executor
        )
        summary, detections, annotations = self._objects(spec, image, boxes, counts)
        return {"summary": summary, "detections": detections, "annotations": annotations}

    def _count(
        self,
        spec: JobSpec,
        *,
        progress: Progress | None,
        cancel: Event | None,
        executor: Executor | None,
    ) -> tuple[Any, list[tuple[int, int, int, int]], dict[int, list[int]]]:
        import time
        from concurrent.futures import FIRST_COMPLETED, wait

        image = self._image(spec.ihc)
        dims = (image.shape[1], image.shape[0])
        boxes = self._tiles(spec, dims)
        total = len(boxes)
        if progress:
            progress(0, total)
        counts: dict[int, list[int]] = {}
        pending: dict[Future[list[int]], int] = {}
        for i, (x, y, w, h) in enumerate(boxes):
            if cancel is not None and cancel.is_set():
                break
            tile = image[y : y + h, x : x + w]
            if executor is None:
                counts[i] = tile_class_counts(tile, self.stain)
                if self.delay_s:
                    time.sleep(self.delay_s)
                if progress:
                    progress(len(counts), total)
            else:
                pending[executor.submit(tile_class_counts, tile, self.stain)] = i
        while pending:
            if cancel is not None and cancel.is_set():
                break
            done, _ = wait(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                counts[pending.pop(fut)] = fut.result()
                if self.delay_s:
                    time.sleep(self.delay_s)
                if progress:
                    progress(len(counts), total)
        if cancel is not None and cancel.is_set():
            for fut in pending:
                fut.cancel()
            raise JobCancelled("the scoring run was cancelled", hint="nothing was written")
        return image, boxes, counts

    def _objects(
        self,
        spec: JobSpec,
        image: Any,
        boxes: Sequence[tuple[int, int, int, int]],
        counts: Mapping[int, list[int]],
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        import numpy as np

        min_frac = float(spec.options.get("min_tissue_fraction", 0.25))
        rule = GUIDELINES[spec.options.get("guideline", "breast")]
        pixels = np.zeros(5, np.int64)
        detections = []
        for i, (x, y, w, h) in enumerate(boxes):
            c = np.asarray(counts[i])
            tissue = int(c[1:].sum())
            if tissue < min_frac * w * h:
                continue
            pixels += c
            k = int(np.argmax(c[1:]))
            detections.append(
                {
                    "type": "Feature",
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PRODUCT_MARKER}/tile/{x}/{y}")),
                    "geometry": _geometry_box(x, y, w, h),
                    "properties": {
                        "objectType": "tile",
                        "name": f"{PRODUCT_MARKER} tile",
                        "classification": _classification(k),
                        "measurements": {
                            f"{PRODUCT_MARKER}: % {HER2_CLASSES[j]}": round(
                                100.0 * c[j + 1] / tissue, 4
                            )
                            for j in range(4)
                        },
                    },
                }
            )
        tissue_px = int(pixels[1:].sum())
        pct = [100.0 * int(pixels[j + 1]) / tissue_px if tissue_px else 0.0 for j in range(4)]
        score = (
            3
            if pct[3] > rule.t3
            else 2
            if pct[2] + pct[3] > rule.t2
            else 1
            if sum(pct[1:]) > rule.t1
            else 0
        )
        summary = {
            "her2_score": _score_label(score) if tissue_px else None,
            "class_percentages": {_score_label(j): round(pct[j], 4) for j in range(4)},
            "h_score": round(pct[1] + 2 * pct[2] + 3 * pct[3], 4),
            "percent_positive": round(pct[1] + pct[2] + pct[3], 4),
            "n_tiles": len(detections),
            "regions": [],
            "provenance": {
                "product": PRODUCT_MARKER,
                "version": __version__,
                "scorer": self.name,
                "guideline": rule.name,
                "options": dict(spec.options),
                "image": spec.ihc.name,
            },
        }
        region_geoms = (
            [f["geometry"] for f in spec.rois]
            if spec.rois
            else [_geometry_box(0, 0, image.shape[1], image.shape[0])]
        )
        annotations = [
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PRODUCT_MARKER}/region/{n}")),
                "geometry": g,
                "properties": {
                    "objectType": "annotation",
                    "name": f"{PRODUCT_MARKER} HER2 {score}+",
                    "classification": _classification(score),
                    "measurements": {
                        f"{PRODUCT_MARKER}: HER2 score": score,
                        f"{PRODUCT_MARKER}: H-score": summary["h_score"],
                    },
                },
            }
            for n, g in enumerate(region_geoms)
        ]
        summary["regions"] = [
            {"index": n, "her2_score": _score_label(score)} for n in range(len(region_geoms))
        ]
        return (
            summary,
            {"type": "FeatureCollection", "features": detections},
            {"type": "FeatureCollection", "features": annotations},
        )

    def _overlay(
        self,
        image: Any,
        boxes: Sequence[tuple[int, int, int, int]],
        counts: Mapping[int, list[int]],
        min_frac: float,
    ) -> bytes:
        import numpy as np
        from PIL import Image

        out = image.astype(np.float32).copy()
        for i, (x, y, w, h) in enumerate(boxes):
            c = np.asarray(counts[i])
            if c[1:].sum() < min_frac * w * h:
                continue
            colour = np.asarray(HER2_COLORS[HER2_CLASSES[int(np.argmax(c[1:]))]], np.float32)
            out[y : y + h, x : x + w] = 0.6 * out[y : y + h, x : x + w] + 0.4 * colour
        im = Image.fromarray(out.clip(0, 255).astype(np.uint8))
        im.thumbnail((1024, 1024))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


def default_scorer(config: ServerConfig) -> Scorer:
    """The scorer a server uses unless ``create_app`` is given one: the real pipeline."""
    return PipelineScorer(config.models_dir)
