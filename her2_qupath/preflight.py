"""Input sanity before any work: every check here runs before a pixel is analysed.

The CLI commands (``score``, ``batch``, ``validate``, ``calibrate``) and the
server's request building call these functions, so a mistake costs one line
and exit code 2 (HTTP 400 on the server), never minutes of computing, a
traceback after the work or files left behind:

* a pixel size outside the plausible brightfield range
  (:class:`~her2_qupath.config.PreflightConfig` ``min_mpp``..``max_mpp``, 0.05 to
  20 µm/px) or one that the working resolution would enlarge more than
  ``max_upsample`` times (refused unless forced: ``--force`` in ``score``,
  ``--force-mpp`` in ``batch``);
* a tile grid or a memory estimate beyond the budget (``max_tiles``,
  ``max_memory_gb``; not forced: give a larger ``--tile-size`` or
  ``--working-mpp``, or an ROI);
* an ROI file without features (it would silently score the whole slide);
* an output folder (or file) that cannot be written;
* a project image whose file is not the image the project recorded
  (size, pixel type, channels: :func:`entry_file_mismatch`).

ROI files are hashed (:func:`roi_file_info`) for the run's provenance.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PreflightConfig, TilingConfig
from .errors import UserInputError

__all__ = [
    "WorkEstimate",
    "check_pixel_size",
    "count_tiles",
    "estimate_work",
    "check_work",
    "check_slides",
    "project_image_mpp",
    "pairs_csv_pixel_sizes",
    "check_batch_inputs",
    "check_cases",
    "check_project_pair",
    "roi_file_info",
    "roi_features_info",
    "record_roi_source",
    "read_roi_file",
    "check_features",
    "check_output_dir",
    "check_output_file",
    "file_format",
    "recorded_format",
    "entry_file_mismatch",
]

_DEFAULT = PreflightConfig()


def check_pixel_size(mpp: Any, *, what: str, force: bool = False, force_flag: str = "--force",
                     source: str = "--mpp", config: PreflightConfig = _DEFAULT) -> None:
    """Refuse a pixel size (µm/px) outside the plausible brightfield range unless ``force``.

    ``what`` names the image (or the request field), ``source`` where the value came from,
    ``force_flag`` how to force it ("" where it cannot be forced).
    """
    if mpp is None:
        return
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or mpp <= 0:
        raise UserInputError(f"{what}: pixel size {mpp!r} ({source}) is not a positive number of µm/px",
                             hint="e.g. 0.25 for a 40x scan or 0.5 for 20x")
    lo, hi = config.min_mpp, config.max_mpp
    if not force and not lo <= mpp <= hi:
        raise UserInputError(
            f"{what}: pixel size {mpp:.6g} µm/px ({source}) is outside the plausible brightfield "
            f"range {lo:g} to {hi:g} µm/px",
            hint="give µm per pixel (0.25 for a 40x scan, 0.5 for 20x)"
            + (f"; {force_flag} uses it anyway" if force_flag else ""),
        )


@dataclass(frozen=True)
class WorkEstimate:
    """Upper bounds of a run's work, from the image's header alone."""

    tiles: int  # tiles of the grid over the image (or the ROIs' bounding boxes)
    memory_bytes: int  # what the run holds for those tiles (PreflightConfig.bytes_per_*)
    upsample: float  # how many times the working resolution enlarges the image's pixels


def count_tiles(dims: tuple[int, int], side: float,
                bounds: Sequence[tuple[float, float, float, float]] | None = None) -> int:
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


def estimate_work(dims: tuple[int, int], mpp: float, tiling: TilingConfig, *, level: str = "pixel",
                  roi_bounds: Sequence[tuple[float, float, float, float]] | None = None,
                  config: PreflightConfig = _DEFAULT) -> WorkEstimate:
    """Tiles, memory and enlargement of scoring an image of ``dims`` level-0 px at ``mpp`` µm/px."""
    side = tiling.tile_size * tiling.mpp / mpp  # level-0 pixels per tile
    tiles = count_tiles((int(dims[0]), int(dims[1])), side, roi_bounds)
    per_tile = config.bytes_per_cell_tile if level == "cell" else config.bytes_per_tile
    return WorkEstimate(tiles=tiles, memory_bytes=tiles * per_tile, upsample=mpp / tiling.mpp)


def check_work(est: WorkEstimate, *, what: str, mpp: float, tiling: TilingConfig, force: bool = False,
               force_flag: str = "--force", config: PreflightConfig = _DEFAULT) -> None:
    """Refuse an enlargement beyond ``max_upsample`` (unless ``force``) and any run over the budget."""
    if est.upsample > config.max_upsample and not force:
        raise UserInputError(
            f"{what}: its pixels ({mpp:.6g} µm) are {est.upsample:.3g} times the working pixel size "
            f"({tiling.mpp:g} µm/px); the tiles would be made of enlarged pixels",
            hint=f"check the pixel size (µm per pixel); {force_flag} scores it anyway",
        )
    if est.tiles > config.max_tiles:
        raise UserInputError(
            f"{what}: {est.tiles:,} tiles of {tiling.tile_size} px at {tiling.mpp:g} µm/px, more than "
            f"the budget of {config.max_tiles:,} (PreflightConfig.max_tiles)",
            hint="check the pixel size, or give a larger --tile-size or --working-mpp, or an ROI",
        )
    budget = config.max_memory_gb * 1024**3
    if est.memory_bytes > budget:
        raise UserInputError(
            f"{what}: about {est.memory_bytes / 1024**3:.1f} GB for {est.tiles:,} tiles, more than "
            f"the budget of {config.max_memory_gb:g} GB (PreflightConfig.max_memory_gb)",
            hint="give a larger --tile-size or --working-mpp, or score an ROI",
        )


def check_slides(ihc: Path, *, options: Any, ihc_mpp: float | None = None, he: Path | None = None,
                 he_mpp: float | None = None, roi_bounds: Sequence[tuple[float, float, float, float]] | None = None,
                 force: bool = False, config: PreflightConfig = _DEFAULT) -> None:
    """Open the slides' headers and check their pixel sizes and the run's budget (nothing is scored).

    ``options`` is a ``pipeline.ScoreOptions``. Tiles lie on the H&E slide's grid when
    one is given, else on the IHC slide's; ``roi_bounds`` are in that slide's pixels.
    """
    from .slide import open_slide

    slides = [(ihc, ihc_mpp, "IHC slide", "--mpp")]
    if he is not None:
        slides.insert(0, (he, he_mpp, "H&E slide", "--he-mpp"))
    for i, (path, given, what, flag) in enumerate(slides):
        with open_slide(path, mpp=given) as slide:
            dims = slide.dimensions
            mpp = slide.mpp  # MPPMissing names --mpp
        source = flag if given is not None else f"recorded in {Path(path).name}"
        _check_image(dims, mpp, what=f"{what} {Path(path).name}", source=source, options=options,
                     roi_bounds=roi_bounds, on_grid=i == 0, force=force, force_flag="--force", config=config)


def _check_image(dims: tuple[int, int], mpp: float, *, what: str, source: str, options: Any,
                 roi_bounds: Sequence[tuple[float, float, float, float]] | None, on_grid: bool,
                 force: bool, force_flag: str, config: PreflightConfig) -> None:
    check_pixel_size(mpp, what=what, source=source, force=force, force_flag=force_flag, config=config)
    est = estimate_work((int(dims[0]), int(dims[1])), mpp, options.tiling,
                        level=getattr(options.scoring, "level", "pixel"),
                        roi_bounds=roi_bounds, config=config)
    if not on_grid:  # the partner slide only reads the tiles mapped from the grid's slide
        est = WorkEstimate(0, 0, est.upsample)
    check_work(est, what=what, mpp=mpp, tiling=options.tiling, force=force, force_flag=force_flag,
               config=config)


def project_image_mpp(path: Path, *, recorded: float | None, recorded_source: str, fallback: float | None,
                      options: Any, what: str, force: bool = False, on_grid: bool = True,
                      roi_bounds: Sequence[tuple[float, float, float, float]] | None = None,
                      config: PreflightConfig = _DEFAULT) -> float | None:
    """The pixel size to score a project image with: ``recorded`` (the project, a pairs CSV),
    else the file's, else ``fallback`` (``batch --mpp``); checked as for ``score`` (forced by
    ``--force-mpp``). None when neither is known and the file cannot be read here: the scorer
    then reports the file."""
    from .errors import MPPMissing, SlideFormatError, SlideNotFound
    from .slide import open_slide

    try:
        with open_slide(path) as slide:
            header: tuple[tuple[int, int], float | None] | None = (slide.dimensions, slide.mpp_or_none)
    except (SlideFormatError, SlideNotFound, OSError):
        header = None
    candidates = [(recorded, recorded_source), (header[1] if header else None, f"recorded in {path.name}"),
                  (fallback, "batch --mpp")]
    mpp, source = next(((m, s) for m, s in candidates if m is not None), (None, ""))
    if mpp is None:
        if header is None:
            return None
        raise MPPMissing(f"{what} carries no pixel size (neither the project nor the file records one)",
                         hint="pass it with --mpp, or in an mpp column of the --pairs CSV")
    if header is None:
        check_pixel_size(mpp, what=what, source=source, force=force, force_flag="--force-mpp", config=config)
    else:
        _check_image(header[0], mpp, what=what, source=source, options=options, roi_bounds=roi_bounds,
                     on_grid=on_grid, force=force, force_flag="--force-mpp", config=config)
    return mpp


def check_batch_inputs(*, mpp: float | None = None, pairs_csv: Path | None = None, roi: Path | None = None,
                       force: bool = False, output_dir: Path | None = None) -> dict[str, float]:
    """``batch``'s inputs before any image is read: ``--mpp``, the pairs CSV's pixel sizes (returned),
    a ``--roi`` file (not empty) and the output folder (writable)."""
    check_pixel_size(mpp, what="batch", source="--mpp", force=force, force_flag="--force-mpp")
    sizes = pairs_csv_pixel_sizes(pairs_csv, force=force) if pairs_csv is not None else {}
    if roi is not None and Path(roi).is_file():
        read_roi_file(roi)  # an empty file would score every whole image
    if output_dir is not None:
        check_output_dir(output_dir)
    return sizes


def pairs_csv_pixel_sizes(path: Path, *, force: bool) -> dict[str, float]:
    """Per-image pixel sizes of a pairs CSV (optional columns ``mpp`` for the IHC image and
    ``he_mpp`` for the H&E image), keyed by the name or entry ID the row gives; checked now."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return {}  # pair_images reports it
    out: dict[str, float] = {}
    for n, raw in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        for col, key in (("mpp", "ihc"), ("he_mpp", "he")):
            text, name = row.get(col, ""), row.get(key, "")
            if text and name:
                try:
                    value = float(text)
                except ValueError:
                    raise UserInputError(f"pairs CSV {path} line {n}: {col} {text!r} is not a number",
                                         hint="µm per pixel, e.g. 0.25 (or leave it empty)") from None
                check_pixel_size(value, what=f"pairs CSV {path.name} line {n} ({name})",
                                           source=f"its {col} column", force=force, force_flag="--force-mpp")
                out[name] = value
    return out


def check_project_pair(e: Any, he: Any | None, *, options: Any, moved: Callable[[Any], bool],
                       rois: Sequence[Any] | None = None, roi_source: str | None = None,
                       csv_mpps: Mapping[str, float] | None = None, fallback: float | None = None,
                       force: bool = False) -> tuple[float | None, float | None, list[str]]:
    """Before a project's IHC image (``ImageEntry``) and its H&E partner are scored: each file is
    the image its entry records (:func:`entry_file_mismatch`; ``moved(entry)``: found elsewhere
    than recorded), an ROI file they come from holds annotations, and their pixel sizes (pairs
    CSV, else project, file, ``fallback``: ``batch --mpp``) and work pass :func:`project_image_mpp`.

    Returns the IHC and H&E pixel sizes and warnings; raises :class:`UserInputError` (naming
    the entry) to refuse the image.
    """
    from .errors import Her2Error

    warnings: list[str] = []
    for x in (e, he):
        refusal, warning = entry_file_mismatch(x, moved=moved(x)) if x is not None else (None, None)
        if refusal:
            raise UserInputError(refusal)
        warnings += [warning] if warning else []
    roi_entry = he if he is not None else e
    if roi_source and roi_source != "project" and not rois:
        raise UserInputError(f"entry {roi_entry.entry_id} {roi_entry.name!r}: its ROI file {roi_source} "
                             "holds no annotations", hint="export them again, or remove the file to score all tissue")
    if options is None:  # dry run: the default options
        from .pipeline import ScoreOptions

        options = ScoreOptions()
    csv_mpps = csv_mpps or {}
    bounds = [r.geometry.bounds for r in rois or [] if getattr(r, "geometry", None) is not None] or None
    out: list[float | None] = []
    for x, on_grid in ((e, he is None), (he, True)):
        if x is None or x.path is None:
            out.append(None)
            continue
        given = next((csv_mpps[k] for k in (x.name, x.stem, x.entry_id) if k in csv_mpps), None)
        try:
            out.append(project_image_mpp(
                x.path, recorded=x.mpp if given is None else given, fallback=fallback, options=options,
                recorded_source="recorded in the project" if given is None else "the --pairs CSV",
                what=f"entry {x.entry_id} {x.name!r}", force=force, on_grid=on_grid,
                roi_bounds=bounds if on_grid else None))
        except Her2Error as err:
            raise UserInputError(err.message if "entry" in err.message else f"entry {x.entry_id}: {err.message}",
                                 hint=err.hint) from err
    return out[0], out[1], warnings


def check_cases(cases: Iterable[Any], *, config: PreflightConfig = _DEFAULT) -> None:
    """``validate`` / ``calibrate``: every case's pixel size plausible and ROI file not empty."""
    for case in cases:
        what = f"case {getattr(case, 'name', '?')} (row {getattr(case, 'row', '?')})"
        check_pixel_size(getattr(case, "mpp", None), what=what, source="its mpp", force_flag="",
                         config=config)
        if getattr(case, "roi", None) is not None and getattr(case, "rois", None) is None:
            read_roi_file(case.roi, what=f"{what}: ROI file")


# --------------------------------------------------------------------------- ROIs


def roi_file_info(path: str | os.PathLike[str], *, n_features: int | None = None) -> dict[str, Any]:
    """Where ROIs came from, for the provenance: path, sha256, bytes (and how many features)."""
    from ._io import sha256_file

    p = Path(path)
    info: dict[str, Any] = {"path": os.fspath(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}
    if n_features is not None:
        info["features"] = n_features
    return info


def roi_features_info(features: Sequence[Any]) -> dict[str, Any]:
    """Provenance of ROIs received as GeoJSON features (the server): sha256 of their canonical JSON."""
    import hashlib
    import json

    text = json.dumps(list(features), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return {"path": None, "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
            "bytes": len(text.encode("utf-8", "surrogatepass")), "features": len(features)}


def record_roi_source(summary: dict[str, Any], info: Mapping[str, Any] | None) -> None:
    """Put where the ROIs came from (:func:`roi_file_info`, :func:`roi_features_info`) into a
    run's provenance (``summary["provenance"]["inputs"]["roi"]``)."""
    prov = summary.get("provenance")
    if info is not None and isinstance(prov, dict):
        prov.setdefault("inputs", {})["roi"] = dict(info)


def read_roi_file(path: str | os.PathLike[str], *, what: str = "--roi") -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The objects of a QuPath GeoJSON ROI file and its provenance record; refuses an empty file."""
    from .qupath.geojson import read_geojson

    objects = tuple(read_geojson(path))
    check_features(objects, what=f"{what} {path}")
    return objects, roi_file_info(path, n_features=len(objects))


def check_features(features: Iterable[Any] | None, *, what: str) -> None:
    """Refuse ROIs given but empty: they would silently score the whole slide."""
    if features is not None and not list(features):
        raise UserInputError(
            f"{what} holds no features (no regions), so nothing says what to score",
            hint="export the annotations again (export_annotations.groovy, or File > Export objects "
            "as GeoJSON), or leave the ROIs out to score all tissue",
        )


# --------------------------------------------------------------------------- outputs


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike[str], *, what: str = "output directory") -> None:
    """Refuse an output directory that cannot be created or written (nothing is left behind)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserInputError(f"{what} {p} exists and is not a directory", hint="choose another -o")
    _check_writable(p if p.is_dir() else _existing_ancestor(p), p, what)


def check_output_file(path: str | os.PathLike[str], *, what: str = "output file") -> None:
    """Refuse an output file whose folder cannot be created or written."""
    p = Path(path)
    if p.is_dir():
        raise UserInputError(f"{what} {p} is a directory", hint="give a file name, e.g. calibration.json")
    _check_writable(_existing_ancestor(p.parent), p, what)


def _check_writable(base: Path, target: Path, what: str) -> None:
    if not base.is_dir():
        raise UserInputError(f"{what} {target} cannot be created: {base} is not a directory",
                             hint="choose another -o")
    try:  # the real test (ACLs, read-only mounts, root): create and remove a temporary folder
        probe = tempfile.mkdtemp(dir=base, prefix=".her2-qupath-probe.")
    except OSError as err:
        raise UserInputError(f"{what} {target} cannot be written: {err.strerror or err}",
                             hint="choose a folder you can write to with -o") from err
    with contextlib.suppress(OSError):
        os.rmdir(probe)


# --------------------------------------------------------------------------- project entries


@dataclass(frozen=True)
class FileFormat:
    """What an image file holds, from its header: size, samples per pixel and bits per sample."""

    width: int
    height: int
    channels: int | None
    bits: int | None

    @property
    def rgb(self) -> bool:
        return self.channels in (3, 4) and self.bits == 8


def file_format(path: str | os.PathLike[str]) -> FileFormat | None:
    """The header of a TIFF, PNG or JPEG file, or None when it cannot be read."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
        if head[:2] in (b"II", b"MM"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                page: Any = tif.series[0].levels[0].keyframe if tif.series else tif.pages[0]
                bits = page.bitspersample
                return FileFormat(int(page.imagewidth), int(page.imagelength), int(page.samplesperpixel),
                                  int(max(bits) if isinstance(bits, tuple) else bits))
        from PIL import Image

        with Image.open(p) as img:
            bands = len(img.getbands())
            bits = {"I;16": 16, "I;16B": 16, "I": 32, "F": 32, "1": 1}.get(img.mode, 8)
            return FileFormat(img.size[0], img.size[1], bands, bits)
    except (OSError, ValueError, SyntaxError, EOFError, LookupError, TypeError, AttributeError,
            RuntimeError, struct.error):  # unreadable here: the scorer reports it with its own message
        return None


_PIXEL_BITS = {"UINT8": 8, "INT8": 8, "UINT16": 16, "INT16": 16, "UINT32": 32, "INT32": 32,
               "FLOAT32": 32, "FLOAT64": 64}


def recorded_format(*metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """What QuPath recorded about an image's pixels (server metadata: ``pixelType``, ``isRGB``,
    ``channels``, ``channelType``; an ``imageType`` when present); later mappings win."""
    out: dict[str, Any] = {}
    for meta in metadata:
        if not isinstance(meta, Mapping):
            continue
        if isinstance(meta.get("pixelType"), str):
            out["pixel_type"] = meta["pixelType"].upper()
        if isinstance(meta.get("isRGB"), bool):
            out["rgb"] = meta["isRGB"]
        if isinstance(meta.get("channels"), list):
            out["channels"] = len(meta["channels"])
        if isinstance(meta.get("channelType"), str):
            out["channel_type"] = meta["channelType"]
        if isinstance(meta.get("imageType"), str):
            out["image_type"] = meta["imageType"].upper()
    return out


def _describe(width: Any, height: Any, rec: Mapping[str, Any]) -> str:
    parts = [f"{width}×{height}" if width and height else "size unknown"]
    bits = _PIXEL_BITS.get(str(rec.get("pixel_type")))
    if bits:
        parts.append(f"{bits}-bit")
    if rec.get("rgb"):
        parts.append("RGB")
    elif rec.get("channels"):
        parts.append(f"{rec['channels']} channel(s)")
    if rec.get("image_type"):
        parts.append(str(rec["image_type"]).lower().replace("_", " "))
    return " ".join(parts)


def entry_file_mismatch(entry: Any, *, moved: bool = True) -> tuple[str | None, str | None]:
    """``(refusal, warning)``: why ``entry``'s file is not the image its project entry records.

    Pixel type, RGB or not, channel count and fluorescence vs brightfield differing: refused.
    A different size is refused for a file found elsewhere than the recorded path
    (``moved``: found by name under ``--image-root``, or relative to a moved project), where a
    name is all that ties it to the entry; at the recorded path, where QuPath itself opens it,
    it is a warning. ``(None, None)`` when it matches or the file cannot be read here."""
    fmt = None if entry.path is None else file_format(entry.path)
    if fmt is None:
        return None, None
    rec: Mapping[str, Any] = getattr(entry, "recorded", None) or {}
    problems = []
    size_differs = bool(entry.width and entry.height and (entry.width, entry.height) != (fmt.width, fmt.height))
    rec_bits = _PIXEL_BITS.get(str(rec.get("pixel_type")))
    if rec_bits and fmt.bits and rec_bits != fmt.bits:
        problems.append("bit depth")
    if rec.get("rgb") is not None and fmt.channels is not None and bool(rec["rgb"]) != fmt.rgb:
        problems.append("RGB")
    elif rec.get("rgb") is False and rec.get("channels") and fmt.channels and rec["channels"] != fmt.channels:
        problems.append("channels")
    if str(rec.get("image_type", "")).startswith("FLUORESCENCE") and fmt.rgb:
        problems.append("image type")
    if size_differs and (moved or problems):
        problems.insert(0, "size")
    found = f"{fmt.width}×{fmt.height} {fmt.bits}-bit " + ("RGB" if fmt.rgb else f"{fmt.channels} channel(s)")
    text = (f"entry {entry.entry_id} {entry.name!r} records a {_describe(entry.width, entry.height, rec)} "
            f"image but {entry.path} is {found}")
    if problems:
        return f"refused: {text} ({', '.join(problems)} differ): not the same image", None
    if size_differs:
        return None, f"warning: {text} (size differs): check it is the same image"
    return None, None
