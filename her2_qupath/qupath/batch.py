"""Score every IHC image (or H&E + IHC pair) of a QuPath project.

:func:`run_batch` lists the project's images, pairs them, finds each image's
ROIs, runs :func:`her2_qupath.pipeline.run_score` per image and writes

* ``PROJECT/her2_qupath/<entryID>/detections.geojson``, ``annotations.geojson``
  and ``summary.json`` for every scored image (always: QuPath imports them);
* for a pair, the H&E side too: ``PROJECT/her2_qupath/<H&E entryID>/detections.geojson``
  (the tiles on the H&E slide, ``Tumor`` / ``Non-tumor``) and ``annotations.geojson``
  (the scored regions as drawn on the H&E slide);
* the objects straight into the project when QuPath is installed (paquo),
  after a backup and only when the project does not look open in QuPath;
* ``PROJECT/her2_qupath/batch_summary.csv`` / ``.json``: cumulative, one row per
  image with its latest result and the run id that produced it (kept across
  ``--resume`` and re-runs), and, without QuPath, ``IMPORT.txt`` saying how
  to bring the results into QuPath.

Before an image is scored its file is checked against the project entry
(size, pixel type, channels: :func:`her2_qupath.preflight.entry_file_mismatch`)
and its pixel size and work against :class:`~her2_qupath.config.PreflightConfig`;
an image that fails is ``refused`` with one line naming the entry.

In pair mode the ROIs are the H&E image's annotations (the pipeline takes
them in H&E coordinates and maps the tiles onto the IHC slide). Every object
written to the H&E entry carries the IHC entry it came from, so when several
IHC images share one H&E image each run replaces only its own objects there.

One image that cannot be scored is reported and skipped; the others go on.
``dry_run`` reads everything and writes nothing.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import io
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import __version__, executors, pipeline, preflight
from .._io import atomic_write_json, atomic_write_text
from .._types import ProgressCallback
from ..config import PRODUCT_MARKER, ProjectConfig
from ..errors import GeoJSONError, Her2Error, QuPathUnavailable
from . import _paquo
from .classes import class_matches
from .entries import (
    ImageEntry,
    ProjectView,
    entry_output_dir,
    filter_entries,
    find_roi_file,
    project_file,
)
from .geojson import read_geojson, write_geojson
from .objects import classification_name, is_product_object, mark_product_object
from .pairing import ImagePair, pair_images
from .paths import uri_to_path
from .project import open_project
from .safety import backup_project, ensure_project_closed, project_write_lock

__all__ = ["BatchOptions", "ImageOutcome", "BatchReport", "run_batch", "Status", "STATUSES", "entry_rois",
           "IMAGE_ERRORS"]

log = logging.getLogger(__name__)

Status = Literal["scored", "would-score", "skipped", "missing", "refused", "failed"]
STATUSES: tuple[str, ...] = ("scored", "would-score", "skipped", "missing", "refused", "failed")


@dataclass(frozen=True)
class BatchOptions:
    """Everything ``her2-qupath batch`` accepts."""

    project: Path
    roi_class: str | None = None
    pairs_csv: Path | None = None
    pair_pattern: str | None = None
    pair_metadata: str | None = None
    images: tuple[str, ...] = ()
    image_roots: tuple[Path, ...] = ()
    roi: Path | None = None
    dry_run: bool = False
    resume: bool = False
    force: bool = False
    backend: Literal["auto", "paquo", "json"] = "auto"
    write_back: bool = True  # into the project when QuPath is available
    options: Any = None  # pipeline.ScoreOptions (None: the defaults)
    dask_scheduler: str | None = None  # tcp://HOST:PORT: tile work on that Dask cluster
    config: ProjectConfig = field(default_factory=ProjectConfig)
    mpp: float | None = None  # µm/px for images without one (in the project and the file)
    force_mpp: bool = False  # score pixel sizes outside PreflightConfig's plausible range
    pixel_sizes: dict[str, float] = field(default_factory=dict)  # the pairs CSV's, by image name or ID


@dataclass
class ImageOutcome:
    """What happened to one IHC image (and its H&E partner)."""

    entry_id: str
    image: str
    case: str
    status: Status
    message: str = ""
    he_entry_id: str | None = None
    he_image: str | None = None
    path: str | None = None
    mpp: float | None = None
    qupath_version: str | None = None
    n_rois: int | None = None
    roi_source: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    he_outputs: list[str] = field(default_factory=list)  # results written for the H&E entry
    written_to_project: bool = False
    he_written_to_project: bool = False
    seconds: float = 0.0
    run_id: str | None = None  # the run whose result this is (an earlier one for --resume)


@dataclass
class BatchReport:
    """The whole run: per-image outcomes, unpaired images and where things went."""

    project: str
    backend: str
    qupath_versions: dict[str, int]
    run_id: str
    dry_run: bool
    outcomes: list[ImageOutcome]
    unpaired: list[dict[str, str]]
    entries: list[dict[str, Any]]
    output_dir: str
    backup_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed_run(self) -> bool:
        """True when images failed or were missing and none has results (scored now or before)."""
        if self.dry_run:
            return False
        bad = any(o.status in ("failed", "missing", "refused") for o in self.outcomes)
        return bad and not any(o.status in ("scored", "skipped") for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "counts": {s: self.count(s) for s in STATUSES}  # type: ignore[arg-type]
        }


# --------------------------------------------------------------------------- helpers


def _matches_class(obj: Any, roi_class: str) -> bool:
    return class_matches(classification_name(obj), roi_class)


def entry_rois(
    project: ProjectView, entry: ImageEntry, *, roi: Path | None = None,
    config: ProjectConfig | None = None,
) -> tuple[list[Any] | None, str | None]:
    """The user's annotations for ``entry`` (never ours) and where they came from: the
    project (with QuPath), else a GeoJSON file (``roi`` or :func:`find_roi_file`'s places)."""
    objs = project.user_annotations(entry)
    source = "project" if objs is not None else None
    if objs is None or roi is not None:
        path = find_roi_file(entry, project_dir=project.project_dir, roi=roi,
                             config=config or ProjectConfig())
        if path is None:
            return None, None
        objs = list(read_geojson(path))
        source = os.fspath(path)
    objs = [
        o
        for o in objs
        if str(getattr(o, "object_type", "annotation")).lower() == "annotation" and not is_product_object(o)
    ]
    return objs, source


def _flat_summary(summary: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key in ("her2_score", "h_score", "percent_positive", "n_tiles"):
        row[key] = summary.get(key)
    pct = summary.get("class_percentages")
    if isinstance(pct, dict):
        for k, v in pct.items():
            row[f"pct {k}"] = v
    elif isinstance(pct, (list, tuple)):
        for k, v in zip(("0", "1+", "2+", "3+"), pct, strict=False):
            row[f"pct {k}"] = v
    return row


def _write_entry_outputs(outdir: Path, *, detections: Sequence[Any], annotations: Sequence[Any],
                         summary: dict[str, Any], config: ProjectConfig) -> list[str]:
    """The three per-image files, each written atomically (exported ROIs beside them stay)."""
    outdir.mkdir(parents=True, exist_ok=True)
    det = outdir / config.detections_filename
    ann = outdir / config.annotations_filename
    summ = outdir / config.summary_filename
    write_geojson(det, list(detections))
    write_geojson(ann, list(annotations))
    atomic_write_json(summ, summary)
    return [os.fspath(det), os.fspath(ann), os.fspath(summ)]


#: metadata key on every object written to an H&E entry: the IHC entry it was scored with
SOURCE_KEY = f"{PRODUCT_MARKER} IHC entry"


def _he_objects(objects: Sequence[Any], *, run_id: str, ihc: ImageEntry) -> list[Any]:
    """``objects`` (H&E side of a pair) marked as ours and tagged with the IHC entry they belong to."""
    out = []
    for obj in objects:
        marked = mark_product_object(obj, run_id=run_id)
        marked.metadata[SOURCE_KEY] = ihc.entry_id  # a fresh dict: the input is not touched
        out.append(marked)
    return out


def _merge_he(path: Path, new: Sequence[Any], ihc: ImageEntry) -> list[Any]:
    """``new`` plus the objects of ``path`` that other IHC images of the same H&E image wrote.

    An H&E image shared by several IHC images keeps each one's results; a
    file that cannot be read is replaced (it only ever holds our results).
    """
    if not path.is_file():
        return list(new)
    try:
        old = read_geojson(path)
    except (GeoJSONError, OSError) as err:
        log.warning("%s cannot be read (%s); rewriting it", path, err)
        return list(new)
    keep = [o for o in old if is_product_object(o) and o.metadata.get(SOURCE_KEY) not in (None, ihc.entry_id)]
    return keep + list(new)


def _write_he_outputs(
    outdir: Path, *, detections: Sequence[Any], annotations: Sequence[Any], ihc: ImageEntry,
    config: ProjectConfig,
) -> tuple[list[Any], list[str]]:
    """The H&E entry's ``detections.geojson`` / ``annotations.geojson`` (what ``import_results.groovy``
    reads), merged with other IHC images' results; returns every object now there and the files."""
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Any] = []
    files: list[str] = []
    for name, objs in ((config.detections_filename, detections), (config.annotations_filename, annotations)):
        merged = _merge_he(outdir / name, objs, ihc)
        write_geojson(outdir / name, merged)
        written += merged
        files.append(os.fspath(outdir / name))
    return written, files


def _moved(entry: ImageEntry | None) -> bool:
    """True when the project records ``entry``'s image elsewhere than where it was found."""
    return entry is not None and entry.uri is not None and uri_to_path(entry.uri) != entry.path


CSV_FIELDS = [
    "entry_id", "image", "case", "he_image", "status", "her2_score", "h_score", "percent_positive",
    "n_tiles", "pct 0", "pct 1+", "pct 2+", "pct 3+", "n_rois", "roi_source", "run_id",
    "mpp", "qupath_version", "written_to_project", "he_written_to_project", "seconds", "path", "message",
]


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    extra: list[str] = []
    flat = []
    for r in rows:
        row = {k: v for k, v in r.items() if k not in ("summary", "outputs", "he_outputs")}
        row.update(_flat_summary(r.get("summary") or {}))
        extra += [k for k in row if k not in CSV_FIELDS and k not in extra and k != "he_entry_id"]
        flat.append(row)
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS + extra, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in flat:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _earlier_result(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The run id and result of an image's ``summary.json`` (an earlier run's, for --resume)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, {}
    if not isinstance(saved, dict):
        return None, {}
    if isinstance(saved.get("result"), dict):  # the layout before the summary was score's own
        return saved.get("run_id"), saved["result"]
    batch = saved.get("batch") if isinstance(saved.get("batch"), dict) else {}
    return batch.get("run_id"), {k: v for k, v in saved.items() if k != "batch"}


def cumulative_rows(path: Path, report: BatchReport) -> list[dict[str, Any]]:
    """One row per image of the project: this run's outcome over the rows of the earlier
    ``batch_summary.json`` at ``path``; an image skipped by ``--resume`` keeps its earlier result
    and the run id that produced it. Images no longer in the project are dropped."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    old = old if isinstance(old, dict) else {}
    earlier = old.get("images")
    if not isinstance(earlier, list):  # written before the summary was cumulative
        earlier = [dict(o, run_id=old.get("run_id")) for o in old.get("outcomes") or []
                   if isinstance(o, dict) and o.get("status") == "scored"]
    rows = {str(r["entry_id"]): r for r in earlier if isinstance(r, dict) and r.get("entry_id") is not None}
    for o in report.outcomes:
        prev = rows.get(o.entry_id)
        if o.status == "skipped" and prev is not None and prev.get("run_id") == o.run_id:
            continue  # resumed: the earlier row holds its result
        row = dataclasses.asdict(o)
        if o.status == "skipped":
            row["status"] = "scored" if o.summary else "skipped"
            row["message"] = f"scored by run {o.run_id}; kept by --resume"
        rows[o.entry_id] = row
    order = {str(e["entry_id"]): i for i, e in enumerate(report.entries)}
    return sorted((r for k, r in rows.items() if k in order), key=lambda r: order[str(r["entry_id"])])


def _import_text(report: BatchReport, config: ProjectConfig) -> str:
    scored = [o for o in report.outcomes if o.status == "scored"]
    lines = [
        "HER2 results of this project, ready to import into QuPath",
        "",
        "Direct write-back into the project needs QuPath: set PAQUO_QUPATH_DIR to the QuPath",
        "folder (e.g. /opt/QuPath) and run her2-qupath batch again.",
        "",
        "Without it, open the project in QuPath and either",
        "  * Automate > Project scripts... (or Shared scripts...) > import_results,",
        "    then '...' > Run for project (all images at once), or",
        "  * open an image and drag its detections.geojson and annotations.geojson",
        "    onto the viewer.",
        "",
        "Files per image (entry ID / image name):",
    ]
    for o in scored:
        lines.append(f"  {o.entry_id:>6}  {o.image}")
        for f in o.outputs:
            lines.append(f"          {f}")
        if o.he_outputs:
            lines.append(f"  {o.he_entry_id:>6}  {o.he_image}  (H&E partner of {o.image})")
            for f in o.he_outputs:
                lines.append(f"          {f}")
    if not scored:
        lines.append("  (none scored)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the run


def run_batch(opts: BatchOptions, *, image_progress: ProgressCallback | None = None,
              tile_progress: Callable[[str], ProgressCallback | None] | None = None) -> BatchReport:
    """Score the project's images; see the module docstring for what is written where."""
    pfile = project_file(opts.project)
    project_dir = pfile.parent
    cfg = opts.config
    # --mpp, the pairs CSV's pixel sizes, a --roi file and the output folder: before any work
    opts = dataclasses.replace(opts, pixel_sizes=preflight.check_batch_inputs(
        mpp=opts.mpp, pairs_csv=opts.pairs_csv, roi=opts.roi, force=opts.force_mpp,
        output_dir=None if opts.dry_run else project_dir / cfg.output_dirname))
    status = _paquo.qupath_status()
    use_paquo = opts.backend == "paquo" or (opts.backend == "auto" and status.available)
    if opts.backend == "paquo" and not status.available:
        raise QuPathUnavailable(status.message)
    write_back = use_paquo and opts.write_back and not opts.dry_run
    if write_back:
        ensure_project_closed(project_dir, force=opts.force, config=cfg)
    project = open_project(pfile, backend="paquo" if use_paquo else "json",
                           mode="r+" if write_back else "r", image_roots=list(opts.image_roots))
    notes: list[str] = []
    if not use_paquo:
        notes.append(
            "QuPath not found: results are written as GeoJSON for import; direct write-back "
            "into the project needs QuPath (set PAQUO_QUPATH_DIR to the QuPath folder). "
            f"[{status.message}]"
        )
    try:
        with executors.dask_executor(None if opts.dry_run else opts.dask_scheduler) as executor:
            return _run(project, opts, write_back=write_back, notes=notes, executor=executor,
                        image_progress=image_progress, tile_progress=tile_progress)
    finally:
        project.close()


def _run(project: ProjectView, opts: BatchOptions, *, write_back: bool, notes: list[str], executor: Any,
         image_progress: ProgressCallback | None,
         tile_progress: Callable[[str], ProgressCallback | None] | None) -> BatchReport:
    cfg = opts.config
    project_dir = project.project_dir
    all_entries = project.images()
    entries = filter_entries(all_entries, opts.images)
    if opts.images and not entries:
        notes.append(f"no image matches --images {' '.join(opts.images)}")
    pairing = pair_images(entries, pattern=opts.pair_pattern, pairs_csv=opts.pairs_csv,
                          metadata_key=opts.pair_metadata, config=cfg)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    versions = dict(Counter(e.qupath_version or "unknown" for e in all_entries))
    report = BatchReport(
        project=os.fspath(project.path), backend=project.backend, qupath_versions=versions,
        run_id=run_id, dry_run=opts.dry_run, outcomes=[],
        unpaired=[{"entry_id": e.entry_id, "image": e.name, "reason": r} for e, r in pairing.unpaired],
        entries=[e.describe() for e in all_entries], output_dir=os.fspath(project_dir / cfg.output_dirname),
        notes=notes)
    options = opts.options
    if options is None and not opts.dry_run:
        options = pipeline.ScoreOptions()

    lock = None
    if write_back:
        touched = [p.ihc.entry_id for p in pairing.pairs if p.ihc.exists]
        touched += sorted({p.he.entry_id for p in pairing.pairs if p.he is not None and p.he.exists
                           and p.ihc.exists and p.he.entry_id not in touched})
        if touched:
            lock = project_write_lock(project_dir, config=cfg)
            lock.__enter__()
            report.backup_dir = os.fspath(backup_project(project_dir, touched, config=cfg))
    try:
        total = len(pairing.pairs)
        for i, pair in enumerate(pairing.pairs):
            outcome = _one(project, pair, opts, options=options, run_id=run_id, executor=executor,
                           write_back=write_back, tile_progress=tile_progress)
            report.outcomes.append(outcome)
            log.info("%s %s: %s %s", outcome.entry_id, outcome.image, outcome.status, outcome.message)
            if image_progress is not None:
                image_progress(i + 1, total)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)

    if not opts.dry_run:
        out = project_dir / cfg.output_dirname
        rows = cumulative_rows(out / "batch_summary.json", report)
        atomic_write_text(out / "batch_summary.csv", _csv_text(rows))
        atomic_write_json(out / "batch_summary.json", report.to_json() | {"images": rows})
        if not write_back:
            atomic_write_text(out / "IMPORT.txt", _import_text(report, cfg))
    return report


#: what one image's failure raises (its file, its ROIs, the scoring, its results, the write-back): the
#: image is reported as failed and the batch goes on; anything else is a bug and stops the batch
IMAGE_ERRORS: tuple[type[Exception], ...] = (
    Her2Error, OSError, ValueError, RuntimeError, ArithmeticError, MemoryError, cf.CancelledError,
)

#: (module, class) of libraries' own errors that count as well once the library is loaded: OpenCV and
#: shapely in the analysis, a lost Dask worker, QuPath's Java exceptions in the write-back
_LIBRARY_ERRORS = (("cv2", "error"), ("shapely.errors", "ShapelyError"), ("distributed", "KilledWorker"),
                   ("jpype", "JException"))


def _image_errors() -> tuple[type[Exception], ...]:
    """:data:`IMAGE_ERRORS` and the :data:`_LIBRARY_ERRORS` of the libraries loaded now (one not
    loaded has raised nothing; none is imported here). Evaluated when an image fails."""
    found = [getattr(sys.modules.get(module), name, None) for module, name in _LIBRARY_ERRORS]
    return IMAGE_ERRORS + tuple(c for c in found if isinstance(c, type) and issubclass(c, Exception))


def _one(project: ProjectView, pair: ImagePair, opts: BatchOptions, *, options: Any, run_id: str,
         executor: Any, write_back: bool,
         tile_progress: Callable[[str], ProgressCallback | None] | None) -> ImageOutcome:
    cfg = opts.config
    e, he = pair.ihc, pair.he
    o = ImageOutcome(
        entry_id=e.entry_id, image=e.name, case=pair.case, status="failed",
        he_entry_id=he.entry_id if he else None, he_image=he.name if he else None,
        path=os.fspath(e.path) if e.path else None, mpp=e.mpp, qupath_version=e.qupath_version,
        run_id=run_id,
    )
    outdir = entry_output_dir(project.project_dir, e, cfg)
    if not e.exists:
        o.status, o.message = "missing", e.problem or "image file not found"
        return o
    if he is not None and not he.exists:
        o.status, o.message = "missing", f"H&E partner {he.name}: {he.problem or 'image file not found'}"
        return o
    if opts.resume and (outdir / cfg.summary_filename).is_file():
        o.status, o.message = "skipped", f"already scored ({outdir / cfg.summary_filename}); --resume"
        o.run_id, o.summary = _earlier_result(outdir / cfg.summary_filename)
        return o
    t0 = time.perf_counter()
    try:
        # in a pair the ROIs are drawn on the H&E image: the pipeline takes them in H&E coordinates
        roi_entry = he if he is not None else e
        rois, source = entry_rois(project, roi_entry, roi=opts.roi, config=opts.config)
        o.roi_source = source
        try:  # the files are the entries' images, pixel sizes and work plausible, ROI files not empty
            ihc_mpp, he_mpp, warnings = preflight.check_project_pair(
                e, he, moved=_moved, options=options, rois=rois, roi_source=source, fallback=opts.mpp,
                csv_mpps=opts.pixel_sizes, force=opts.force_mpp)
        except Her2Error as err:
            o.status, o.message = "refused", f"refused: {err}"
            return o
        if opts.roi_class:
            rois = [r for r in rois or [] if _matches_class(r, opts.roi_class)]
            if not rois:
                o.message = (
                    f"no annotation of class {opts.roi_class!r} "
                    + (f"in {source}" if source else f"found for {roi_entry.name}")
                    + (" (the H&E image of the pair)" if he is not None else "")
                    + " (draw/classify it in QuPath and run export_annotations.groovy, pass --roi, "
                    "or drop --roi-class to score the whole image)"
                )
                return o
        o.n_rois = len(rois) if rois else 0
        o.mpp = ihc_mpp
        o.message = "; ".join(warnings)
        if opts.dry_run:
            o.status = "would-score"
            o.message = "; ".join([f"{o.n_rois} ROI(s)" if o.n_rois else "whole image", *warnings])
            if he is not None:
                o.message += f" on H&E {he.name} (results to entries {e.entry_id} and {he.entry_id})"
            return o
        roi_info = None
        if source and source != "project":
            roi_info = preflight.roi_file_info(source, n_features=len(rois or []))
        request = pipeline.ScoreRequest(
            ihc=e.path, he=he.path if he else None, ihc_mpp=ihc_mpp, he_mpp=he_mpp,
            rois=rois or None, roi_class=None, options=options,
        )
        cb = tile_progress(e.name) if tile_progress else None
        result = pipeline.run_score(request, progress=cb, executor=executor)
        preflight.record_roi_source(result.summary, roi_info)
        detections = [mark_product_object(d, run_id=run_id) for d in result.detections]
        annotations = [mark_product_object(a, run_id=run_id) for a in result.annotations]
        summary = dict(result.summary)
        o.summary = summary
        # the summary.json of `score`, with what the batch run adds under "batch"
        full = {**summary, "batch": {
            "entry": e.describe(),
            "he_entry": he.describe() if he else None,
            "run_id": run_id,
            "product": PRODUCT_MARKER,
            "version": __version__,
            "roi_source": source,
            "roi_file": roi_info,
            "n_rois": o.n_rois,
        }}
        he_objects: list[Any] = []
        if he is not None and (result.he_detections or result.he_annotations):
            # before the IHC summary.json, which --resume takes as "done"
            he_objects, o.he_outputs = _write_he_outputs(
                entry_output_dir(project.project_dir, he, cfg),
                detections=_he_objects(result.he_detections, run_id=run_id, ihc=e),
                annotations=_he_objects(result.he_annotations, run_id=run_id, ihc=e),
                ihc=e, config=cfg)
        o.outputs = _write_entry_outputs(outdir, detections=detections, annotations=annotations,
                                         summary=full, config=cfg)
        moved = [x for x in (e, he) if _moved(x)]
        if write_back and moved:
            # QuPath (and paquo) would not save an entry whose image URI is unreachable
            where = "; ".join(f"it records {x.name} at {x.uri}, found at {x.path}" for x in moved)
            o.message = (
                f"results not written into the project: {where}; open the project in QuPath to "
                "update the image paths, then run again (the GeoJSON results are written)"
            )
        elif write_back:
            project.write_objects(e, detections + annotations, metadata={
                f"{PRODUCT_MARKER} run": run_id,
                f"{PRODUCT_MARKER} HER2 score": str(summary.get("her2_score")),
            }, stains=(summary.get("provenance") or {}).get("stain_vectors_qupath"))
            if he is not None and o.he_outputs:
                project.write_objects(he, he_objects, metadata={
                    f"{PRODUCT_MARKER} run": run_id,
                    f"{PRODUCT_MARKER} IHC partner": e.name,
                }, stain_type="H&E")
                o.he_written_to_project = True
            project.save()
            o.written_to_project = True
        o.status = "scored"
    except _image_errors() as err:  # one bad image must not stop the batch; it is reported
        log.warning("%s (%s) failed: %s", e.name, e.entry_id, err, exc_info=log.isEnabledFor(logging.DEBUG))
        o.status = "failed"
        o.message = f"{type(err).__name__}: {err}"
    finally:
        o.seconds = round(time.perf_counter() - t0, 3)
    return o
