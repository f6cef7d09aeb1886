"""Image URIs and files of a QuPath project: decode URIs, find moved images, read pixel sizes.

QuPath records each image as a URI in ``project.qpproj`` (inside the entry's
server builder) and in ``data/<entryID>/server.json``. :func:`uri_to_path`
decodes it, :func:`server_builder_uri` finds it in nested builders,
:func:`pixel_size_from_metadata` reads the pixel calibration beside it and
:func:`resolve_image_path` finds the file when the project or its images moved
(searching ``--image-root`` folders through a :class:`FileIndex`).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "FileIndex",
    "strip_ext",
    "uri_to_path",
    "server_builder_uri",
    "pixel_size_from_metadata",
    "resolve_image_path",
]


def strip_ext(name: str) -> str:
    """An image name without its file extension(s) (``.ome.tiff`` and the like as one)."""
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


class FileIndex:
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
    image_roots: Sequence[Path] | FileIndex = (),
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
    index = image_roots if isinstance(image_roots, FileIndex) else FileIndex(list(image_roots))
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
