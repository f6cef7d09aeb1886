"""QuPath projects: open one, list images, pair H&E with IHC, find ROIs, write results safely.

Two back-ends share one interface, :class:`~.entries.ProjectView`:

* ``"paquo"`` — QuPath's own Java classes through paquo (needs a QuPath
  installation, found through ``PAQUO_QUPATH_DIR``). It reads the annotation
  hierarchy and writes results straight into the project (see :mod:`._paquo`).
* ``"json"`` — ``project.qpproj`` read as plain JSON when QuPath is absent
  (:class:`JsonProject`). It lists entries, their image URIs, metadata and
  pixel sizes, and reads the header of each ``data/<entryID>/data.qpdata``
  (which QuPath wrote it). It cannot read or write the object hierarchy: ROIs
  then come from GeoJSON files and results go to GeoJSON files that QuPath imports.

:func:`open_project` picks the back-end. The rest of the project layer lives
in modules this one re-exports, so ``her2_qupath.qupath.project`` keeps
offering all of it: :mod:`.paths` (image URIs and files), :mod:`.entries`
(:class:`~.entries.ImageEntry`, ROI and output places), :mod:`.pairing`
(:func:`~.pairing.pair_images`, :func:`~.pairing.partner_of`) and
:mod:`.safety`.

Writing into a project is guarded: :func:`~.safety.ensure_project_closed`
refuses when the project looks open in QuPath, :func:`~.safety.backup_project`
copies ``project.qpproj`` and every touched ``data/<entryID>/`` first, and only
objects this product wrote (:func:`~.objects.is_product_object`) are ever replaced.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import ProjectError, QuPathUnavailable
from . import _paquo
from .entries import (
    Brightfield,
    ImageEntry,
    ProjectView,
    WriteReport,
    entry_from_parts,
    entry_output_dir,
    filter_entries,
    find_roi_file,
    project_file,
)
from .objects import is_product_object, mark_product_object
from .pairing import ImagePair, Pairing, pair_images, partner_of
from .paths import (
    FileIndex,
    pixel_size_from_metadata,
    resolve_image_path,
    server_builder_uri,
    uri_to_path,
)
from .safety import backup_project, ensure_project_closed, looks_open, project_write_lock

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
    "partner_of",
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

Backend = Literal["auto", "paquo", "json"]


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
        self._index = FileIndex([Path(r) for r in image_roots])
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
                    entry_from_parts(
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
        self, entry: ImageEntry, objects: Sequence[Any], *, metadata: dict[str, str] | None = None,
        stains: str | None = None, stain_type: Brightfield = "H-DAB",
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
    status = _paquo.qupath_status()
    if status.available:
        return _paquo.PaquoProject(pfile, mode=mode, image_roots=image_roots)
    if backend == "paquo":
        raise QuPathUnavailable(status.message, hint=_qupath_hint())
    log.info("QuPath not available (%s); reading %s as JSON", status.message, pfile)
    return JsonProject(pfile, image_roots=image_roots)
