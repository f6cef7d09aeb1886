"""QuPath projects: list images, pair H&E with IHC, find ROIs, write results safely.

Two back-ends share one interface, :class:`ProjectView`:

* ``"paquo"`` — QuPath's own Java classes through paquo (needs a QuPath
  installation, found through ``PAQUO_QUPATH_DIR``). It reads the annotation
  hierarchy and writes results straight into the project (see :mod:`._paquo`).
* ``"json"`` — ``project.qpproj`` read as plain JSON when QuPath is absent. It
  lists entries, their image URIs, metadata and pixel sizes, and reads the
  header of each ``data/<entryID>/data.qpdata`` (which QuPath wrote it). It
  cannot read or write the object hierarchy: ROIs then come from GeoJSON files
  and results go to GeoJSON files that QuPath imports.

Writing into a project is guarded: :func:`ensure_project_closed` refuses when
the project looks open in QuPath, :func:`backup_project` copies
``project.qpproj`` and every touched ``data/<entryID>/`` first, and only
objects this product wrote (:func:`is_product_object`) are ever replaced.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import json
import logging
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol, runtime_checkable

from ..config import ProjectConfig
from ..errors import ProjectError, ProjectLocked, QuPathUnavailable, UserInputError
from ..preflight import recorded_format
from .objects import is_product_object, mark_product_object
from .qpdata import QPDataHeader, read_qpdata_header, read_server_json

__all__ = [
    "ImageEntry",
    "ProjectView",
    "JsonProject",
    "ImagePair",
    "Pairing",
    "WriteReport",
    "open_project",
    "project_file",
    "uri_to_path",
    "server_builder_uri",
    "pixel_size_from_metadata",
    "resolve_image_path",
    "filter_entries",
    "pair_images",
    "find_roi_file",
    "is_product_object",
    "mark_product_object",
    "looks_open",
    "ensure_project_closed",
    "project_write_lock",
    "backup_project",
    "entry_output_dir",
]

log = logging.getLogger(__name__)

_DEFAULT_CONFIG = ProjectConfig()

Backend = Literal["auto", "paquo", "json"]


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class ImageEntry:
    """One image of a QuPath project, as far as the project files describe it."""

    entry_id: str
    name: str
    uri: str | None
    path: Path | None  # resolved local file (None: not a local file or not found)
    exists: bool
    metadata: dict[str, str] = field(default_factory=dict)
    mpp: float | None = None
    width: int | None = None
    height: int | None = None
    data_dir: Path | None = None
    qupath_version: str | None = None  # QuPath that last wrote data.qpdata
    data_version: int | None = None
    problem: str | None = None  # why the image cannot be used (missing file, ...)
    #: what QuPath recorded about the pixels (preflight.recorded_format: pixel_type, rgb, channels)
    recorded: dict[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """The image name without its file extension(s)."""
        return _strip_ext(self.name)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description for reports."""
        d = dataclasses.asdict(self)
        d["path"] = os.fspath(self.path) if self.path else None
        d["data_dir"] = os.fspath(self.data_dir) if self.data_dir else None
        return d


@dataclass(frozen=True)
class WriteReport:
    """What a write-back changed in one image's hierarchy."""

    entry_id: str
    removed: int
    added: int
    user_objects: int


@runtime_checkable
class ProjectView(Protocol):
    """The one interface both back-ends implement."""

    backend: str
    path: Path  # the project.qpproj file
    version: str | None  # QuPath version recorded in project.qpproj

    @property
    def project_dir(self) -> Path: ...

    def images(self) -> list[ImageEntry]: ...

    def user_annotations(self, entry: ImageEntry) -> list[Any] | None:
        """The user's annotations (QuPathObject), or None when this back-end cannot read them."""
        ...

    def write_objects(
        self, entry: ImageEntry, objects: Sequence[Any], *, metadata: dict[str, str] | None = None
    ) -> WriteReport:
        """Replace this product's objects of ``entry`` by ``objects`` (paquo only).

        ``metadata`` (keys starting with the product marker) is set on the
        project entry, where QuPath's project list shows it.
        """
        ...

    def save(self) -> None: ...

    def close(self) -> None: ...


def project_file(path: str | os.PathLike[str]) -> Path:
    """``path`` (a project folder or its ``project.qpproj``) as the ``.qpproj`` file."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "project.qpproj"
    elif p.suffix != ".qpproj":
        raise UserInputError(
            f"{p} is not a QuPath project", hint="give the project folder or its project.qpproj file"
        )
    if not p.is_file():
        raise ProjectError(
            f"no QuPath project at {p}", hint="give the folder that holds project.qpproj"
        )
    return p


# --------------------------------------------------------------------------- URIs and paths


def _strip_ext(name: str) -> str:
    base = name.split(" - ")[0] if " - " in name and "." in name.split(" - ")[0] else name
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    stem, dot, _ = base.rpartition(".")
    return stem if dot and stem else base


def uri_to_path(uri: str) -> Path | None:
    """A local path for a QuPath image URI (``file:/...``), percent-decoded; None if not a file URI.

    QuPath writes ``file:/home/a%20b/%C3%A9.svs`` (one slash, percent-encoded
    UTF-8); Windows paths come as ``file:/C:/...`` and network shares as
    ``file://server/share/...``.
    """
    if not uri:
        return None
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "" or (len(parts.scheme) == 1 and uri[1:2] == ":"):
        return Path(uri)  # a plain path (or a bare Windows drive path)
    if parts.scheme.lower() != "file":
        return None
    path = urllib.parse.unquote(parts.path, encoding="utf-8", errors="strict")
    if re.match(r"^/[A-Za-z]:[/\\]", path):
        return Path(path[1:])  # file:/C:/x -> C:/x (a Windows drive path)
    if parts.netloc and parts.netloc.lower() != "localhost":
        return Path(f"//{parts.netloc}{path}")
    return Path(path)


def server_builder_uri(builder: dict[str, Any] | None) -> str | None:
    """The image URI of a QuPath server builder, following nested builders.

    Plain images keep it in ``uri``; rotated, channel-transformed and similar
    servers wrap another builder under ``builder``; sparse servers list
    ``regions`` each with a ``builder``.
    """
    if not isinstance(builder, dict):
        return None
    uri = builder.get("uri")
    if isinstance(uri, str) and uri:
        return uri
    inner = builder.get("builder")
    if isinstance(inner, dict):
        found = server_builder_uri(inner)
        if found:
            return found
    for key in ("regions", "builders"):
        for item in builder.get(key) or []:
            found = server_builder_uri(item.get("builder") if isinstance(item, dict) and "builder" in item else item)
            if found:
                return found
    return None


_UNIT_TO_UM = {"µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3}


def pixel_size_from_metadata(metadata: dict[str, Any]) -> float | None:
    """Mean pixel size in micrometres from a QuPath server's ``pixelCalibration``; None if uncalibrated."""
    cal = metadata.get("pixelCalibration") or {}
    sizes = []
    for key in ("pixelWidth", "pixelHeight"):
        item = cal.get(key) or {}
        factor = _UNIT_TO_UM.get(str(item.get("unit", "")).strip())
        value = item.get("value")
        if factor is None or not isinstance(value, (int, float)) or not value > 0:
            return None
        sizes.append(float(value) * factor)
    return sum(sizes) / len(sizes) if sizes else None


class _FileIndex:
    """File-name index of the ``--image-root`` folders, built on first use."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = [Path(r).expanduser() for r in roots]
        self._index: dict[str, list[Path]] | None = None

    def find(self, name: str) -> list[Path]:
        if self._index is None:
            self._index = {}
            for root in self.roots:
                if root.is_file():
                    self._index.setdefault(root.name.casefold(), []).append(root)
                    continue
                for dirpath, _dirs, files in os.walk(root):
                    for f in files:
                        self._index.setdefault(f.casefold(), []).append(Path(dirpath) / f)
        return self._index.get(name.casefold(), [])


def resolve_image_path(
    uri: str | None,
    *,
    project_dir: Path,
    old_project_uri: str | None = None,
    image_roots: Sequence[Path] | _FileIndex = (),
) -> tuple[Path | None, str | None]:
    """Find the local file of an image URI; returns ``(path, problem)``.

    Tried in order: the URI's own path; the same path relative to the
    project's old location applied to its new one (QuPath's rule for moved
    projects); a file of the same name below any ``image_roots`` folder.
    """
    if not uri:
        return None, "the project entry has no image URI"
    path = uri_to_path(uri)
    if path is None:
        return None, f"image URI {uri} is not a local file (only file: URIs can be scored)"
    if path.is_file():
        return path, None
    old_dir = uri_to_path(old_project_uri).parent if old_project_uri and uri_to_path(old_project_uri) else None
    if old_dir is not None:
        try:
            rel = PurePosixPath(path.as_posix()).relative_to(PurePosixPath(old_dir.as_posix()))
        except ValueError:
            rel = None
        if rel is not None and (project_dir / rel).is_file():
            return project_dir / rel, None
    index = image_roots if isinstance(image_roots, _FileIndex) else _FileIndex(list(image_roots))
    if index.roots:
        hits = index.find(path.name)
        if len(hits) == 1:
            return hits[0], None
        if len(hits) > 1:
            return None, (
                f"image {path.name} found {len(hits)} times below --image-root "
                f"({', '.join(map(str, hits[:3]))}); give a more specific --image-root"
            )
    hint = "pass --image-root DIR (searched by file name)" if not index.roots else "check --image-root"
    return None, f"image file not found: {path} ({hint})"


# --------------------------------------------------------------------------- JSON back-end


def _entry_from_parts(
    *,
    entry_id: str,
    name: str,
    uri: str | None,
    metadata: dict[str, Any],
    builder_metadata: dict[str, Any] | None,
    project_dir: Path,
    old_project_uri: str | None,
    index: _FileIndex,
) -> ImageEntry:
    data_dir = project_dir / "data" / entry_id
    header: QPDataHeader | None = None
    problems: list[str] = []
    qpdata = data_dir / "data.qpdata"
    if qpdata.is_file():
        try:
            header = read_qpdata_header(qpdata)
        except ProjectError as err:
            problems.append(str(err))
    mpp = pixel_size_from_metadata(builder_metadata or {})
    width = (builder_metadata or {}).get("width")
    height = (builder_metadata or {}).get("height")
    smeta: dict[str, Any] = {}
    server_json = data_dir / "server.json"
    if server_json.is_file():
        try:
            server = read_server_json(server_json)
            smeta = server.get("metadata") or {}
            mpp = pixel_size_from_metadata(smeta) or mpp
            width = smeta.get("width", width)
            height = smeta.get("height", height)
            uri = uri or server_builder_uri(server)
        except ProjectError as err:
            problems.append(str(err))
    if header is not None:
        mpp = mpp or header.mpp
        uri = uri or header.image_uri
    path, problem = resolve_image_path(
        uri, project_dir=project_dir, old_project_uri=old_project_uri, image_roots=index
    )
    if problem:
        problems.insert(0, problem)
    return ImageEntry(
        entry_id=entry_id,
        name=name,
        uri=uri,
        path=path,
        exists=path is not None,
        metadata={str(k): str(v) for k, v in (metadata or {}).items()},
        mpp=mpp,
        width=int(width) if isinstance(width, (int, float)) else None,
        height=int(height) if isinstance(height, (int, float)) else None,
        data_dir=data_dir if data_dir.is_dir() else None,
        qupath_version=header.qupath_version if header else None,
        data_version=header.data_version if header else None,
        problem="; ".join(problems) or None,
        recorded=recorded_format(builder_metadata, smeta),
    )


class JsonProject:
    """A QuPath project read from ``project.qpproj`` as JSON (no QuPath needed, read-only)."""

    backend = "json"

    def __init__(self, path: str | os.PathLike[str], *, image_roots: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.path = project_file(path)
        try:
            self._data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ProjectError(
                f"cannot read {self.path} as JSON: {err}",
                hint="restore project.qpproj from project.qpproj.backup in the same folder",
            ) from err
        if not isinstance(self._data.get("images"), list):
            raise ProjectError(f"{self.path} has no 'images' list", hint="is this a QuPath project file?")
        self.version: str | None = self._data.get("version")
        self._index = _FileIndex([Path(r) for r in image_roots])
        self._images: list[ImageEntry] | None = None

    @property
    def project_dir(self) -> Path:
        return self.path.parent

    def images(self) -> list[ImageEntry]:
        if self._images is None:
            out = []
            for item in self._data["images"]:
                builder = item.get("serverBuilder") or {}
                out.append(
                    _entry_from_parts(
                        entry_id=str(item.get("entryID")),
                        name=str(item.get("imageName") or ""),
                        uri=server_builder_uri(builder),
                        metadata=item.get("metadata") or {},
                        builder_metadata=_builder_metadata(builder),
                        project_dir=self.project_dir,
                        old_project_uri=self._data.get("uri"),
                        index=self._index,
                    )
                )
            self._images = out
        return list(self._images)

    def user_annotations(self, entry: ImageEntry) -> list[Any] | None:
        return None  # the hierarchy lives in the Java stream; QuPath is needed to read it

    def write_objects(
        self, entry: ImageEntry, objects: Sequence[Any], *, metadata: dict[str, str] | None = None
    ) -> WriteReport:
        raise QuPathUnavailable(
            "writing objects into a QuPath project needs QuPath",
            hint=_qupath_hint(),
        )

    def save(self) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> JsonProject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _builder_metadata(builder: dict[str, Any]) -> dict[str, Any]:
    meta = builder.get("metadata")
    if isinstance(meta, dict):
        return meta
    inner = builder.get("builder")
    return _builder_metadata(inner) if isinstance(inner, dict) else {}


def _qupath_hint() -> str:
    return (
        "install QuPath and set PAQUO_QUPATH_DIR to its folder (e.g. /opt/QuPath), "
        "or import the GeoJSON files this run wrote with import_results.groovy"
    )


def open_project(
    path: str | os.PathLike[str],
    *,
    backend: Backend = "auto",
    mode: Literal["r", "r+"] = "r",
    image_roots: Sequence[str | os.PathLike[str]] = (),
) -> ProjectView:
    """Open a project with paquo when QuPath is installed (or ``backend="paquo"``), else as JSON.

    ``backend="paquo"`` raises :class:`QuPathUnavailable` without QuPath; the
    check never starts a JVM.
    """
    pfile = project_file(path)
    if backend == "json":
        return JsonProject(pfile, image_roots=image_roots)
    from . import _paquo

    status = _paquo.qupath_status()
    if status.available:
        return _paquo.PaquoProject(pfile, mode=mode, image_roots=image_roots)
    if backend == "paquo":
        raise QuPathUnavailable(status.message, hint=_qupath_hint())
    log.info("QuPath not available (%s); reading %s as JSON", status.message, pfile)
    return JsonProject(pfile, image_roots=image_roots)


def filter_entries(entries: Iterable[ImageEntry], patterns: Sequence[str]) -> list[ImageEntry]:
    """Entries whose image name (or entry ID) matches any glob in ``patterns`` (all if none)."""
    entries = list(entries)
    if not patterns:
        return entries
    return [
        e
        for e in entries
        if any(fnmatch.fnmatchcase(e.name.casefold(), p.casefold()) or e.entry_id == p for p in patterns)
    ]


# --------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class ImagePair:
    """One IHC image to score, with its H&E partner when there is one."""

    case: str
    ihc: ImageEntry
    he: ImageEntry | None = None


@dataclass(frozen=True)
class Pairing:
    """The pairs found and the images left out, each with the reason."""

    pairs: list[ImagePair]
    unpaired: list[tuple[ImageEntry, str]]
    method: str


def _is_he(stain: str | None, he_stains: Sequence[str]) -> bool:
    return stain is not None and stain.strip().casefold() in {s.casefold() for s in he_stains}


def _group_pairs(
    groups: dict[str, list[tuple[ImageEntry, str]]], he_stains: Sequence[str]
) -> tuple[list[ImagePair], list[tuple[ImageEntry, str]]]:
    pairs: list[ImagePair] = []
    unpaired: list[tuple[ImageEntry, str]] = []
    for case, members in groups.items():
        hes = [e for e, s in members if _is_he(s, he_stains)]
        ihcs = [e for e, s in members if not _is_he(s, he_stains)]
        if len(hes) > 1:
            names = ", ".join(e.name for e in hes)
            for e in ihcs:
                unpaired.append((e, f"case {case!r} has {len(hes)} H&E images ({names}); scored alone"))
                pairs.append(ImagePair(case, e, None))
            for e in hes:
                unpaired.append((e, f"case {case!r} has several H&E images; give a pairs CSV"))
            continue
        he = hes[0] if hes else None
        if not ihcs and he is not None:
            unpaired.append((he, f"case {case!r} has no IHC image"))
        for e in ihcs:
            if he is None:
                unpaired.append((e, f"case {case!r} has no H&E image; scored alone"))
            pairs.append(ImagePair(case, e, he))
    return pairs, unpaired


def pair_images(
    entries: Sequence[ImageEntry],
    *,
    pattern: str | None = None,
    pairs_csv: str | os.PathLike[str] | None = None,
    metadata_key: str | None = None,
    config: ProjectConfig = _DEFAULT_CONFIG,
) -> Pairing:
    """Pair H&E and IHC images by ``pattern`` (named groups ``case`` and ``stain``), a CSV or metadata.

    Without any of them every image is scored as IHC on its own, except
    images whose ``stain`` metadata names an H&E stain. The CSV has columns
    ``ihc`` and ``he`` (image names or entry IDs) and optionally ``case``.
    """
    chosen = [x for x in (pattern, pairs_csv, metadata_key) if x]
    if len(chosen) > 1:
        raise UserInputError(
            "choose one way to pair images", hint="give only one of --pair-pattern, --pairs, --pair-metadata"
        )
    if pairs_csv:
        return _pair_by_csv(entries, Path(pairs_csv))
    groups: dict[str, list[tuple[ImageEntry, str]]] = {}
    unmatched: list[tuple[ImageEntry, str]] = []
    if pattern:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise UserInputError(f"--pair-pattern is not a valid regular expression: {err}",
                                 hint="e.g. '(?P<case>.+)_(?P<stain>HE|HER2)'") from err
        if not {"case", "stain"} <= set(rx.groupindex):
            raise UserInputError(
                "--pair-pattern needs the named groups 'case' and 'stain'",
                hint="e.g. '(?P<case>.+)_(?P<stain>HE|HER2)'",
            )
        for e in entries:
            m = rx.fullmatch(e.stem) or rx.fullmatch(e.name) or rx.search(e.name)
            if m is None:
                unmatched.append((e, f"name does not match --pair-pattern {pattern!r}"))
                continue
            groups.setdefault(m.group("case"), []).append((e, m.group("stain")))
        pairs, unpaired = _group_pairs(groups, config.he_stains)
        return Pairing(pairs, unmatched + unpaired, "pattern")
    if metadata_key:
        for e in entries:
            case = e.metadata.get(metadata_key)
            if case is None:
                unmatched.append((e, f"no metadata value {metadata_key!r}"))
                continue
            stain = e.metadata.get(config.stain_metadata_key)
            groups.setdefault(case, []).append((e, stain or "IHC"))
        pairs, unpaired = _group_pairs(groups, config.he_stains)
        return Pairing(pairs, unmatched + unpaired, "metadata")
    pairs = []
    for e in entries:
        if _is_he(e.metadata.get(config.stain_metadata_key), config.he_stains):
            unmatched.append((e, "H&E image (stain metadata) without pairing; not scored"))
        else:
            pairs.append(ImagePair(e.stem, e, None))
    return Pairing(pairs, unmatched, "none")


def partner_of(ihc: str, images: Sequence[Mapping[str, Any]], *, pattern: str | None = None,
               metadata_key: str | None = None, config: ProjectConfig = _DEFAULT_CONFIG) -> dict[str, Any]:
    """The H&E partner of the image named ``ihc`` among ``images`` (name, id, metadata), by
    the rules of :func:`pair_images`: ``{"ihc", "he" (None: none), "case", "method", "reason"}``."""
    entries = [ImageEntry(entry_id=str(im.get("id") or k), name=str(im["name"]), uri=None, path=None,
                          exists=False, metadata=dict(im.get("metadata") or {}))
               for k, im in enumerate(images, start=1)]
    if not any(e.name == ihc for e in entries):
        raise UserInputError(f"{ihc!r} is not among the images sent",
                             hint="send the project's image list, the IHC image included")
    found = pair_images(entries, pattern=pattern, metadata_key=metadata_key, config=config)
    pair = next((p for p in found.pairs if p.ihc.name == ihc), None)
    reason = next((why for e, why in found.unpaired if e.name == ihc), None)
    if pair is not None and pair.he is None and reason is None:
        reason = "no pairing rule given: send pair_pattern or pair_metadata"
    return {"ihc": ihc, "he": pair.he.name if pair and pair.he else None,
            "case": pair.case if pair else None, "method": found.method,
            "reason": None if pair and pair.he else reason or "not paired"}


def _pair_by_csv(entries: Sequence[ImageEntry], path: Path) -> Pairing:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise UserInputError(f"cannot read pairs CSV {path}: {err}", hint="check the --pairs path") from err
    if not rows or "ihc" not in {k.strip().lower() for k in rows[0]}:
        raise UserInputError(
            f"pairs CSV {path} needs a header with columns 'ihc' and 'he' (optional 'case')",
            hint="e.g. 'case,ihc,he' then 'A1,A1_HER2.svs,A1_HE.svs'",
        )
    by_key: dict[str, ImageEntry] = {}
    for e in entries:
        by_key.setdefault(e.name, e)
        by_key.setdefault(e.stem, e)
        by_key.setdefault(e.entry_id, e)
    pairs: list[ImagePair] = []
    used: set[str] = set()
    missing: list[str] = []
    for n, row in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        ihc = by_key.get(row.get("ihc", ""))
        he_name = row.get("he", "")
        he = by_key.get(he_name) if he_name else None
        if ihc is None:
            missing.append(f"line {n}: ihc {row.get('ihc')!r}")
            continue
        if he_name and he is None:
            missing.append(f"line {n}: he {he_name!r}")
            continue
        pairs.append(ImagePair(row.get("case") or ihc.stem, ihc, he))
        used.update({ihc.entry_id} | ({he.entry_id} if he else set()))
    if missing:
        raise UserInputError(
            f"pairs CSV {path} names images not in the project: {'; '.join(missing[:5])}"
            + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""),
            hint="use the image names QuPath shows in the Project tab, or entry IDs",
        )
    unpaired = [(e, "not listed in the pairs CSV") for e in entries if e.entry_id not in used]
    return Pairing(pairs, unpaired, "csv")


# --------------------------------------------------------------------------- ROIs and outputs


def entry_output_dir(project_dir: Path, entry: ImageEntry, config: ProjectConfig = _DEFAULT_CONFIG) -> Path:
    """``PROJECT/her2_qupath/<entryID>/``: where results and exported ROIs of an entry live."""
    return project_dir / config.output_dirname / entry.entry_id


def find_roi_file(
    entry: ImageEntry,
    *,
    project_dir: Path,
    roi: str | os.PathLike[str] | None = None,
    config: ProjectConfig = _DEFAULT_CONFIG,
) -> Path | None:
    """The GeoJSON file holding ``entry``'s ROIs, or None.

    Looked for in order: ``--roi`` (a file: used for every image; a folder:
    ``<entryID>.geojson``, ``<image name>.geojson`` or ``<image stem>.geojson``
    inside it); ``PROJECT/her2_qupath/<entryID>/rois.geojson`` (written by
    ``export_annotations.groovy``); ``<image file>.geojson`` and
    ``<image stem>.geojson`` beside the image.
    """
    names = [f"{entry.entry_id}.geojson", f"{entry.name}.geojson", f"{entry.stem}.geojson"]
    candidates: list[Path] = []
    if roi is not None:
        r = Path(roi)
        if r.is_file():
            return r
        if not r.is_dir():
            raise UserInputError(f"--roi {r} does not exist", hint="give a GeoJSON file or a folder of them")
        candidates += [r / n for n in names]
    candidates.append(entry_output_dir(project_dir, entry, config) / config.roi_filename)
    if entry.path is not None:
        candidates += [entry.path.with_name(entry.path.name + ".geojson"), entry.path.with_name(entry.stem + ".geojson")]
    return next((c for c in candidates if c.is_file()), None)


# --------------------------------------------------------------------------- safety


def looks_open(
    project_dir: Path, *, config: ProjectConfig = _DEFAULT_CONFIG, now: float | None = None
) -> list[str]:
    """Reasons to believe the project is open in QuPath or being written (empty: looks closed).

    QuPath keeps no lock file. It rewrites ``project.qpproj`` (moving the old
    one to ``project.qpproj.backup``) and ``data/<entryID>/data.qpdata`` when it
    saves, so a save within ``config.recent_write_seconds`` is the signal. A
    lock this product holds while writing is reported too.
    """
    now = time.time() if now is None else now
    reasons: list[str] = []
    lock = project_dir / config.lock_filename
    if lock.exists():
        reasons.append(f"another her2-qupath run is writing it ({lock} exists)")
    files = [project_dir / "project.qpproj", project_dir / "project.qpproj.backup"]
    data = project_dir / "data"
    if data.is_dir():
        files += list(data.glob("*/data.qpdata"))
    newest = max(((f.stat().st_mtime, f) for f in files if f.is_file()), default=None)
    if newest is not None:
        age = now - newest[0]
        if age < config.recent_write_seconds:
            rel = newest[1].relative_to(project_dir)
            reasons.append(f"{rel} was saved {max(age, 0):.0f} s ago (QuPath may have it open)")
    return reasons


def ensure_project_closed(
    project_dir: Path, *, force: bool = False, config: ProjectConfig = _DEFAULT_CONFIG
) -> None:
    """Raise :class:`ProjectLocked` when the project looks open, unless ``force``."""
    reasons = looks_open(project_dir, config=config)
    if reasons and not force:
        raise ProjectLocked(
            f"project {project_dir} looks open: {'; '.join(reasons)}",
            hint=(
                "close the project in QuPath (or quit QuPath), wait "
                f"{config.recent_write_seconds:.0f} s and run again, or pass --force if it is surely closed"
            ),
        )
    if reasons:
        log.warning("writing despite: %s (--force)", "; ".join(reasons))


class project_write_lock:  # noqa: N801 - used like a function in a with statement
    """Hold ``PROJECT/.her2-qupath.lock`` while writing, so two runs never write at once."""

    def __init__(self, project_dir: Path, *, config: ProjectConfig = _DEFAULT_CONFIG) -> None:
        self.path = project_dir / config.lock_filename

    def __enter__(self) -> Path:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError as err:
            raise ProjectLocked(
                f"another her2-qupath run is writing {self.path.parent}",
                hint=f"wait for it to finish, or delete {self.path} if no run is active",
            ) from err
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        return self.path

    def __exit__(self, *exc: object) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def backup_project(
    project_dir: Path,
    entry_ids: Iterable[str],
    *,
    config: ProjectConfig = _DEFAULT_CONFIG,
    stamp: str | None = None,
) -> Path:
    """Copy ``project.qpproj`` and each ``data/<entryID>/`` to ``PROJECT/her2_qupath/backups/<stamp>/``.

    The copy is made in a temporary folder and moved into place in one step;
    to restore, copy the files back over the project with QuPath closed.
    """
    from .._io import atomic_output_dir

    stamp = stamp or time.strftime("%Y%m%dT%H%M%S")
    dest = project_dir / config.output_dirname / config.backup_dirname / stamp
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{stamp}-{n}")
        n += 1
    with atomic_output_dir(dest, overwrite=False) as tmp:
        for name in ("project.qpproj", "project.qpproj.backup"):
            if (project_dir / name).is_file():
                shutil.copy2(project_dir / name, tmp / name)
        for eid in entry_ids:
            src = project_dir / "data" / str(eid)
            if src.is_dir():
                shutil.copytree(src, tmp / "data" / str(eid))
    log.info("backed up project files to %s", dest)
    return dest


