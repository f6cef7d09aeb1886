"""The images of a QuPath project as both back-ends list them, and where their files lie.

:class:`ImageEntry` is one image as far as the project files describe it;
:func:`entry_from_parts` builds one from what a back-end read (the entry's
``data/<entryID>/`` folder, its ``data.qpdata`` header and ``server.json``, the
image file found through :func:`~.paths.resolve_image_path`). :class:`ProjectView`
is the interface both back-ends implement (``project.JsonProject`` and
``_paquo.PaquoProject``). :func:`find_roi_file` and :func:`entry_output_dir`
say where an entry's exported ROIs and results live.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from ..config import ProjectConfig
from ..errors import ProjectError, UserInputError
from ..preflight import recorded_format
from .paths import (
    FileIndex,
    pixel_size_from_metadata,
    resolve_image_path,
    server_builder_uri,
    strip_ext,
)
from .qpdata import QPDataHeader, read_qpdata_header, read_server_json

__all__ = [
    "Brightfield",
    "ImageEntry",
    "WriteReport",
    "ProjectView",
    "project_file",
    "entry_from_parts",
    "filter_entries",
    "entry_output_dir",
    "find_roi_file",
]

#: The brightfield image type an unset entry gets on write-back: H-DAB (IHC) or H&E (its partner).
Brightfield = Literal["H-DAB", "H&E"]

_DEFAULT_CONFIG = ProjectConfig()


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
        return strip_ext(self.name)

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
        self, entry: ImageEntry, objects: Sequence[Any], *, metadata: dict[str, str] | None = None,
        stains: str | None = None, stain_type: Brightfield = "H-DAB",
    ) -> WriteReport:
        """Replace this product's objects of ``entry`` by ``objects`` (paquo only).

        ``metadata`` (keys starting with the product marker) is set on the
        project entry, where QuPath's project list shows it; ``stains`` (QuPath's
        stain string of the vectors the run used) become the entry's stains when
        its image type was not set, which becomes Brightfield of ``stain_type``.
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


def entry_from_parts(
    *,
    entry_id: str,
    name: str,
    uri: str | None,
    metadata: dict[str, Any],
    builder_metadata: dict[str, Any] | None,
    project_dir: Path,
    old_project_uri: str | None,
    index: FileIndex,
) -> ImageEntry:
    """An :class:`ImageEntry` from what a back-end read of the entry, completed from its
    ``data/<entryID>/`` folder (``server.json``, the ``data.qpdata`` header) and its image file."""
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
