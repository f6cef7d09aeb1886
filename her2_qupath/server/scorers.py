"""What a job runs: a *scorer* turns a checked request into result files.

A scorer is any callable ``scorer(spec, outdir, *, progress, cancel, executor)``
that writes ``summary.json``, ``detections.geojson``, ``annotations.geojson``
and ``overlay.png`` into ``outdir`` and returns the summary dictionary, with
an ``estimate_tiles(spec)`` method giving an upper bound of the tile count
before any pixel is read (``None`` when unknown). The server calls it from a
worker thread; ``progress(done, total)`` feeds the job's progress, ``cancel``
is a :class:`threading.Event` set on cancellation, and ``executor`` (a
:class:`concurrent.futures.Executor`, local or Dask) takes the tile work.

:class:`PipelineScorer` runs :func:`her2_qupath.pipeline.run_score`, the
product's one scoring implementation, and is the default;
``create_app({"SCORER": ...})`` accepts any object with this interface (a
subclass that adds behaviour, for instance).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Any, Protocol

from .._io import _nan_to_str, json_default
from .._types import ProgressCallback
from ..calibration_file import load_calibration
from ..config import ServerConfig, TilingConfig
from ..errors import UserInputError
from ..options import MODEL_OPTIONS
from ..options import score_options as request_options
from ..pipeline import ScoreRequest, run_score, write_result
from ..preflight import (
    check_features,
    check_pixel_size,
    count_tiles,
    record_roi_source,
    roi_features_info,
)
from ..qupath.classes import class_matches
from ..qupath.geojson import read_geojson, to_feature
from ..slide import open_slide
from .http import ApiError
from .security import count_vertices, resolve_image

__all__ = [
    "JobSpec",
    "Scorer",
    "WorkEstimate",
    "build_spec",
    "check_vertex_limit",
    "PipelineScorer",
    "default_scorer",
    "json_ready",
]

log = logging.getLogger(__name__)


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
    roi_space: str = "he"  # with an H&E slide: the ROIs were drawn on "he" or "ihc"


@dataclass(frozen=True)
class WorkEstimate:
    """Upper bounds of a request's work, known before any pixel is read.

    ``pixels``: per tile, the pixels read from the slide's pyramid level or those
    analysed at the working resolution, whichever is more, times the tiles.
    """

    tiles: int
    pixels: int | None = None


class Scorer(Protocol):
    def estimate_tiles(self, spec: JobSpec) -> int | None: ...

    def __call__(
        self,
        spec: JobSpec,
        outdir: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: Event | None = None,
        executor: Executor | None = None,
    ) -> dict[str, Any]: ...


def json_ready(obj: Any) -> Any:
    """Plain JSON data as the result files hold it: numpy values converted, NaN as "NaN"."""
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
    options = body.get("options") or {}
    for name, value in (
        ("ihc_mpp", body.get("ihc_mpp")),
        ("he_mpp", body.get("he_mpp")),
        ("options.mpp", options.get("mpp")),
    ):
        _check_mpp(name, value, config)
    for name in ("ihc_mpp", "he_mpp"):  # the slides' own pixel sizes: plausible brightfield scans
        check_pixel_size(body.get(name), what=name, source="request", force_flag="")
    features = _features(body.get("rois"))
    if features is not None:
        check_features(features, what="rois")  # empty: 400, not the whole slide
        check_vertex_limit(features, config.max_roi_vertices)
        if roi_class := body.get("roi_class"):
            features = [f for f in features if class_matches(_class_name(f), roi_class)]
            if not features:
                raise UserInputError(
                    f"no ROI has the classification {roi_class!r}",
                    hint="roi_class matches a class or a part of a derived class (case ignored); "
                    "omit it to score every ROI",
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
        roi_space=body.get("roi_space") or "he",
    )


def _check_mpp(name: str, value: Any, config: ServerConfig) -> None:
    """A pixel size (µm/px) within the server's range, else a 400 naming the field."""
    if value is None:
        return
    lo, hi = config.min_mpp, config.max_mpp
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)[:40]
        raise UserInputError(
            f"{name} = {shown} µm/px is outside the pixel sizes this server accepts "
            f"({lo:g} to {hi:g} µm/px)",
            hint="send the pixel size in µm per pixel (QuPath: Image > Pixel width µm), or start the "
            "server with a wider ServerConfig.min_mpp/max_mpp",
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
    """Parse the ROIs as QuPath objects (``qupath.geojson.read_geojson``).

    Raises :class:`GeoJSONError` (HTTP 400) naming the bad feature, at submission
    rather than when the job runs.
    """
    read_geojson({"type": "FeatureCollection", "features": features})


def _roi_bounds(spec: JobSpec) -> list[tuple[float, float, float, float]] | None:
    if not spec.rois:
        return None
    from shapely.geometry import shape

    return [shape(f["geometry"]).bounds for f in spec.rois]


# --------------------------------------------------------------------------------------------
# The real pipeline


class PipelineScorer:
    """Scores with :func:`her2_qupath.pipeline.run_score`."""

    name = "pipeline"

    def __init__(self, models_dir: str | os.PathLike[str] | None = None,
                 calibration: str | os.PathLike[str] | None = None) -> None:
        self.models_dir = Path(models_dir) if models_dir else None
        #: the server-wide calibration (``serve --calibration``), validated at start-up
        self.calibration: dict[str, Any] | None = None
        if calibration is not None:
            self.calibration = load_calibration(calibration)

    def score_options(self, options: Mapping[str, Any]) -> Any:
        """``ScoreOptions`` from the request's ``options`` through the request model.

        The model (:mod:`her2_qupath.options`) is the one the command line uses; model
        names under ``options.models`` are resolved in the server's models directory.
        """
        values = {k: v for k, v in options.items() if k != "models"}
        for key, name in (options.get("models") or {}).items():
            spec = next((m for m in MODEL_OPTIONS if m.api_key == key), None)
            if spec is None:
                raise UserInputError(f"this version scores without a {key} model",
                                     hint="omit options.models." + key)
            values[spec.name] = name
        return request_options(values, "api", base_calibration=self.calibration,
                               resolve_model=lambda _spec, name: self.model_dir(name))

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
            roi_space=spec.roi_space,  # type: ignore[arg-type]
        )

    def estimate_tiles(self, spec: JobSpec) -> int | None:
        work = self.estimate_work(spec)
        return None if work is None else work.tiles

    def estimate_work(self, spec: JobSpec) -> WorkEstimate | None:
        """Tiles and pixels of a request from the slides' headers (no pixel is read).

        Tiles lie on the H&E slide's grid when one is given (as the pipeline
        tiles it), else on the IHC slide's; each tile is read from both slides.
        """
        tile_size = int(spec.options.get("tile_size", TilingConfig.tile_size))
        work_mpp = float(spec.options.get("mpp", TilingConfig.mpp))
        slides = [(spec.ihc, spec.ihc_mpp)]
        if spec.he is not None:
            slides.insert(0, (spec.he, spec.he_mpp))
        tiles: int | None = None
        per_tile = 0
        for path, mpp in slides:
            with open_slide(path, mpp=mpp) as slide:
                dims = tuple(slide.dimensions)
                slide_mpp = slide.mpp
                target_ds = work_mpp / slide_mpp
                level_ds = slide.level_downsamples[slide.best_level_for_downsample(target_ds)]
            side = tile_size * work_mpp / slide_mpp  # level-0 pixels
            if tiles is None:  # the grid's slide
                grid_bounds = (
                    _roi_bounds(spec) if spec.he is None or spec.roi_space == "he" else None
                )
                tiles = count_tiles((int(dims[0]), int(dims[1])), side, grid_bounds)
            read_side = math.ceil(side / level_ds)
            per_tile += max(tile_size, read_side) ** 2
        assert tiles is not None
        return WorkEstimate(tiles=tiles, pixels=tiles * per_tile)

    def __call__(
        self,
        spec: JobSpec,
        outdir: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: Event | None = None,
        executor: Executor | None = None,
    ) -> dict[str, Any]:
        result = run_score(self.request(spec), progress=progress, cancel=cancel, executor=executor)
        _record_rois(result, spec)
        write_result(result, outdir)
        return dict(result.summary)

    def score_in_memory(
        self,
        spec: JobSpec,
        *,
        progress: ProgressCallback | None = None,
        cancel: Event | None = None,
        executor: Executor | None = None,
    ) -> dict[str, Any]:
        """Summary, detections and annotations as JSON-ready data: no files, no overlay PNG."""
        result = run_score(self.request(spec), progress=progress, cancel=cancel, executor=executor)
        _record_rois(result, spec)
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


def _record_rois(result: Any, spec: JobSpec) -> None:
    """The ROIs received (sha256 of their features) in the run's provenance."""
    if spec.rois is not None:
        record_roi_source(result.summary, roi_features_info(spec.rois))


def _model_kind(path: Path) -> str | None:
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


def default_scorer(config: ServerConfig) -> Scorer:
    """The scorer a server uses unless ``create_app`` is given one: the real pipeline."""
    return PipelineScorer(config.models_dir, config.calibration)
