"""The thin layer over paquo: every call into QuPath's Java classes lives here.

Nothing here starts a JVM at import time. :func:`qupath_status` finds out
whether paquo could start QuPath by looking at the file system only (paquo's
own finder, without importing ``paquo.java``). :func:`replace_product_objects`
works on anything that behaves like ``paquo.hierarchy.QuPathPathObjectHierarchy``
(``annotations`` / ``detections`` proxies with ``discard``, ``add_annotation``,
``add_detection``, ``add_tile``, ``add_cell``, ``no_autoflush()``), so it is
tested without QuPath.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import HER2_COLORS, PRODUCT_MARKER
from ..errors import ProjectError, QuPathUnavailable
from .entries import Brightfield, ImageEntry, WriteReport, entry_from_parts, project_file
from .geojson import from_feature
from .objects import is_product_object
from .paths import FileIndex

__all__ = ["QuPathStatus", "qupath_status", "PaquoProject", "replace_product_objects", "object_kind",
           "quiet_java_logging", "ensure_brightfield", "set_stain_vectors"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuPathStatus:
    available: bool
    message: str
    qupath_dir: Path | None = None


def qupath_status() -> QuPathStatus:
    """Can paquo start QuPath here? Answered from the file system, without starting a JVM."""
    try:
        from paquo import _config
        from paquo.jpype_backend import find_qupath
    except ImportError as err:  # paquo or jpype missing
        return QuPathStatus(False, f"paquo is not importable ({err}); pip install paquo")
    # fresh settings: paquo's module-level ones keep the environment of their first read
    settings = _config._get_settings() if hasattr(_config, "_get_settings") else _config.settings
    kwargs = _config.to_kwargs(settings)
    env_dir = os.environ.get("PAQUO_QUPATH_DIR")
    if env_dir is not None:
        kwargs["qupath_dir"] = env_dir
    try:
        info = find_qupath(**kwargs)
    except (ValueError, FileNotFoundError, IsADirectoryError) as err:
        where = kwargs.get("qupath_dir") or "the default search folders"
        return QuPathStatus(
            False,
            f"no QuPath installation found in {where} ({err}); "
            "set PAQUO_QUPATH_DIR to the QuPath folder (the one holding lib/app on Linux, "
            "QuPath.app on macOS)",
        )
    return QuPathStatus(True, f"QuPath at {info.app_dir.parent.parent}", info.app_dir.parent.parent)


def quiet_java_logging(log_manager: Any = None) -> bool:
    """Keep QuPath's Java logging at WARN unless this product logs at INFO or DEBUG (``-v``).

    paquo turns QuPath's logging to DEBUG when it starts the JVM, and lines the JVM
    prints outside paquo's redirection reach the console. Returns whether the
    level was lowered. ``log_manager`` is QuPath's ``LogManager`` class (default:
    paquo's; None when this QuPath has none).
    """
    if logging.getLogger("her2_qupath").getEffectiveLevel() <= logging.INFO:
        return False
    if log_manager is None:
        try:
            from paquo.java import LogManager as log_manager  # noqa: N813
        except ImportError:
            return False
    if log_manager is None:
        return False
    log_manager.setWarn()
    return True


def set_stain_vectors(image: Any, stains: str) -> None:
    """Set the colour-deconvolution stains of a paquo image entry from QuPath's stain string
    (the argument of QuPath's ``setColorDeconvolutionStains``, as in a summary's
    ``provenance.stain_vectors_qupath``). paquo has no setter: this uses the entry's
    ``ImageData``, the one paquo saves."""
    from paquo.jpype_backend import JClass  # the JVM is running: the image came from paquo

    stain_class = JClass("qupath.lib.color.ColorDeconvolutionStains")
    image._image_data.setColorDeconvolutionStains(stain_class.parseColorDeconvolutionStainsArg(stains))


def ensure_brightfield(
    image: Any,
    image_types: Any,
    stains: str | None = None,
    *,
    stain_type: Brightfield = "H-DAB",
    set_stains: Callable[[Any, str], None] | None = None,
) -> bool:
    """An entry whose image type is "Not set" becomes Brightfield (H-DAB) — the type the results
    were measured as — or, for the H&E partner of a pair (``stain_type="H&E"``), Brightfield (H&E), with ``stains`` (QuPath's stain string of the vectors the run used) as its
    colour-deconvolution stains when given; a type the user chose, and its stains, are left
    alone. ``image_types`` is paquo's ``QuPathImageType``; ``set_stains`` sets an entry's
    stains (default: :func:`set_stain_vectors`). Returns whether the type was changed."""
    if image.image_type not in (None, image_types.UNSET):
        return False
    image.image_type = (image_types.BRIGHTFIELD_H_DAB if stain_type == "H-DAB"
                        else image_types.BRIGHTFIELD_H_E)
    if stains:
        (set_stains or set_stain_vectors)(image, stains)
    return True


def object_kind(obj: Any) -> Literal["annotation", "detection", "tile", "cell"]:
    """The QuPath object type of a QuPathObject (``object_type`` attribute)."""
    kind = str(getattr(obj, "object_type", "annotation") or "annotation").lower()
    if kind not in ("annotation", "detection", "tile", "cell"):
        raise ProjectError(f"cannot write QuPath object type {kind!r}", hint="use annotation/detection/tile/cell")
    return kind  # type: ignore[return-value]


def _classification(obj: Any) -> tuple[str | None, tuple[int, int, int] | None]:
    c = getattr(obj, "classification", None)
    color = getattr(obj, "color", None)
    if isinstance(c, dict):
        name = c.get("name") or ": ".join(c.get("names") or []) or None
        color = c.get("color") or color
    elif isinstance(c, (tuple, list)):
        name = ": ".join(str(n) for n in c) or None
    else:
        name = c
    if name and color is None:
        color = HER2_COLORS.get(name.split(":")[-1].strip())
    return name, (tuple(color)[:3] if color is not None else None)  # type: ignore[return-value]


def _default_path_class(name: str, color: tuple[int, int, int] | None) -> Any:
    from paquo.classes import QuPathPathClass

    parent = None
    parts = [p.strip() for p in name.split(":")]
    for part in parts[:-1]:
        parent = QuPathPathClass(part, parent=parent)
    return QuPathPathClass(parts[-1], color=color, parent=parent)


def replace_product_objects(
    hierarchy: Any,
    objects: Sequence[Any],
    *,
    marker: str = PRODUCT_MARKER,
    make_path_class: Callable[[str, tuple[int, int, int] | None], Any] = _default_path_class,
    entry_id: str = "",
) -> WriteReport:
    """Remove this product's earlier objects from ``hierarchy`` and add ``objects``.

    Only objects whose name starts with ``marker`` are removed (children are
    kept, so a user's objects below ours survive); each added object is named
    with the marker (``mark_product_object`` has done so already). Bulk work
    runs inside ``no_autoflush()``: one hierarchy event instead of one per object.
    """
    with hierarchy.no_autoflush():
        removed = 0
        for proxy in (hierarchy.detections, hierarchy.annotations):
            ours = [o for o in list(proxy) if is_product_object(o, marker)]
            for o in ours:
                proxy.discard(o)
            removed += len(ours)
        user = len(hierarchy.annotations) + len(hierarchy.detections)
        classes: dict[tuple[str, Any], Any] = {}
        for obj in objects:
            name, color = _classification(obj)
            pc = None
            if name:
                key = (name, color)
                if key not in classes:
                    classes[key] = make_path_class(name, color)
                pc = classes[key]
            measurements = {str(k): float(v) for k, v in (getattr(obj, "measurements", None) or {}).items()
                            if isinstance(v, (int, float))}
            kind = object_kind(obj)
            geom = obj.geometry
            if kind == "annotation":
                added = hierarchy.add_annotation(roi=geom, path_class=pc, measurements=measurements)
            elif kind == "tile":
                added = hierarchy.add_tile(roi=geom, path_class=pc, measurements=measurements)
            elif kind == "cell" and getattr(obj, "nucleus_geometry", None) is not None:
                added = hierarchy.add_cell(
                    roi=geom, path_class=pc, measurements=measurements, nucleus_roi=obj.nucleus_geometry
                )
            else:
                added = hierarchy.add_detection(roi=geom, path_class=pc, measurements=measurements)
            obj_name = getattr(obj, "name", None) or marker
            if not str(obj_name).startswith(marker):
                obj_name = f"{marker}: {obj_name}"
            added.name = obj_name
            if kind == "annotation" and getattr(obj, "is_locked", False):
                added.locked = True
    return WriteReport(entry_id=entry_id, removed=removed, added=len(objects), user_objects=user)


class PaquoProject:
    """A QuPath project opened through paquo (QuPath must be installed)."""

    backend = "paquo"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: Literal["r", "r+"] = "r",
        image_roots: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        status = qupath_status()
        if not status.available:
            raise QuPathUnavailable(status.message)
        from paquo.projects import QuPathProject  # starts the JVM

        quiet_java_logging()
        self.path = project_file(path)
        self.mode = mode
        try:
            self._qp = QuPathProject(self.path, mode=mode)
        except (OSError, ValueError) as err:
            raise ProjectError(f"paquo cannot open {self.path}: {err}", hint="is it a QuPath project?") from err
        self.version: str | None = self._qp.version
        self._index = FileIndex([Path(r) for r in image_roots])
        self._by_id: dict[str, Any] = {}

    @property
    def project_dir(self) -> Path:
        return self.path.parent

    def images(self) -> list[ImageEntry]:
        out = []
        for image in self._qp.images:
            eid = str(image.entry_id)
            self._by_id[eid] = image
            try:
                uri = image.uri
            except (RuntimeError, NotImplementedError) as err:
                log.warning("entry %s: %s", eid, err)
                uri = None
            out.append(
                entry_from_parts(
                    entry_id=eid,
                    name=str(image.image_name),
                    uri=uri,
                    metadata=dict(image.metadata),
                    builder_metadata=None,
                    project_dir=self.project_dir,
                    old_project_uri=None,
                    index=self._index,
                )
            )
        return out

    def _image(self, entry: ImageEntry) -> Any:
        if not self._by_id:
            self.images()
        try:
            return self._by_id[entry.entry_id]
        except KeyError as err:
            raise ProjectError(f"no entry {entry.entry_id} in {self.path}", hint="list images with --dry-run") from err

    def user_annotations(self, entry: ImageEntry) -> list[Any] | None:
        image = self._image(entry)
        out = []
        for ann in image.hierarchy.annotations:
            if is_product_object(ann):
                continue
            out.append(from_feature(ann.to_geojson()))
        return out

    def write_objects(
        self, entry: ImageEntry, objects: Sequence[Any], *, metadata: dict[str, str] | None = None,
        stains: str | None = None, stain_type: Brightfield = "H-DAB",
    ) -> WriteReport:
        """Replace this product's objects; ``metadata`` (keys starting with the marker) goes on the entry.

        An entry whose image type is "Not set" becomes Brightfield of ``stain_type`` (H-DAB for
        the IHC slide, H&E for its partner) with ``stains`` (QuPath's stain string of the vectors
        the run used) when given (:func:`ensure_brightfield`).
        """
        if self.mode == "r":
            raise ProjectError("project opened read-only", hint="open it with mode='r+' to write")
        image = self._image(entry)
        for key in metadata or {}:
            if not key.startswith(PRODUCT_MARKER):
                raise ProjectError(f"metadata key {key!r} lacks the product marker", hint="prefix it")
        report = replace_product_objects(image.hierarchy, objects, entry_id=entry.entry_id)
        from paquo.images import QuPathImageType

        if ensure_brightfield(image, QuPathImageType, stains, stain_type=stain_type):
            log.info("%s: image type set to Brightfield (%s)%s", entry.name, stain_type,
                     " with the stain vectors used" if stains else "")
        for key, value in (metadata or {}).items():
            image.metadata[key] = str(value)
        self._add_project_classes(objects)
        return report

    def _add_project_classes(self, objects: Sequence[Any]) -> None:
        """Append the classes of ``objects`` that the project's class list lacks (QuPath's class pane).

        The user's classes keep their order and colours; only missing ones are added.
        """
        current = list(self._qp.path_classes)
        known = {str(pc.id) for pc in current}
        added = []
        for obj in objects:
            name, color = _classification(obj)
            if not name:
                continue
            pc = _default_path_class(name, color)
            if str(pc.id) not in known:
                known.add(str(pc.id))
                added.append(pc)
        if added:
            self._qp.path_classes = [*current, *added]
            log.debug("added classes to the project's class list: %s", ", ".join(str(pc.id) for pc in added))

    def save(self) -> None:
        if self.mode != "r":
            self._qp.save()

    def close(self) -> None:
        self.save()

    def __enter__(self) -> PaquoProject:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
