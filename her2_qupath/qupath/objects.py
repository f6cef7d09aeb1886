"""What the product writes into QuPath, and how it recognises its own objects later.

One rule for every path (``score``, ``batch``, the server, the Groovy scripts):

* every object's name starts with ``her2-qupath:`` (tiles ``her2-qupath: NFW/2+``, cells
  ``her2-qupath: cell``, regions ``her2-qupath: Region 1 HER2 2+ (HER2-low)``);
* every object's metadata holds the product's version under ``her2-qupath`` and the id of
  the run that made it under ``her2-qupath run``;
* an object is the product's when its name starts with the marker or its metadata holds
  it (:func:`is_product_object`); a re-run replaces exactly those, never the user's.

The builders of the objects themselves (:func:`tile_object`, :func:`annotation_object`,
:func:`cell_object`: geometry made valid for QuPath, the product's marker in the
metadata) are here too, and the other direction, :func:`rois_from_objects`: the user's
annotations that are regions of interest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import shapely

from .. import __version__
from ..config import PRODUCT_MARKER
from ..errors import GeoJSONError
from .classes import RGB, class_matches, normalise_class
from .geojson import QuPathObject
from .validate import POLYGONAL_TYPES, polygonal_part

__all__ = ["RUN_KEY", "CELL_NAME", "product_name", "product_metadata", "is_product_object",
           "mark_product_object", "classification_name", "tile_object", "annotation_object",
           "cell_object", "rois_from_objects"]

logger = logging.getLogger(__name__)

#: metadata key of the run that wrote an object
RUN_KEY = f"{PRODUCT_MARKER} run"
#: the name of every cell the product writes
CELL_NAME = f"{PRODUCT_MARKER}: cell"


def product_name(name: str | None, fallback: str = "object") -> str:
    """``"her2-qupath: <name>"`` (unchanged when it already starts with the marker)."""
    text = str(name) if name else fallback
    return text if text.startswith(PRODUCT_MARKER) else f"{PRODUCT_MARKER}: {text}"


def product_metadata(run_id: str | None) -> dict[str, str]:
    """The metadata of every object the product writes: its version and the run's id."""
    meta = {PRODUCT_MARKER: __version__}
    if run_id:
        meta[RUN_KEY] = str(run_id)
    return meta


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def classification_name(obj: Any) -> str | None:
    """The class of an object (a ``QuPathObject``, a GeoJSON dict, names or a string) as
    QuPath shows it (``"Tumor: Positive"``); None when unclassified."""
    c = _get(obj, "classification")
    if c is None:
        return None
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        return c.get("name") or ": ".join(c.get("names") or []) or None
    if isinstance(c, (tuple, list)):
        return ": ".join(str(n) for n in c) or None
    return str(c)


def is_product_object(obj: Any, marker: str = PRODUCT_MARKER) -> bool:
    """True for objects this product wrote: name starting with the marker, or the marker in
    the metadata (a ``QuPathObject``, a GeoJSON properties dict or anything with those fields)."""
    name = _get(obj, "name")
    if isinstance(name, str) and name.startswith(marker):
        return True
    meta = _get(obj, "metadata") or {}
    return isinstance(meta, dict) and marker in meta


def mark_product_object(obj: Any, *, run_id: str) -> Any:
    """A copy of ``obj`` named by :func:`product_name` with :func:`product_metadata` of ``run_id``
    (a ``QuPathObject`` is copied; other objects are changed in place and returned)."""
    name = product_name(_get(obj, "name") or classification_name(obj) or _get(obj, "object_type"))
    meta = {**dict(_get(obj, "metadata") or {}), **product_metadata(run_id)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, name=name, metadata=meta)
    obj.name = name
    obj.metadata = meta
    return obj


# --------------------------------------------------------------------------- builders


def _marker(metadata: Mapping[str, str] | None) -> dict[str, str]:
    out = {PRODUCT_MARKER: __version__}
    out.update(metadata or {})
    return out


def _geometry_of(shape: Any, what: str = "geometry") -> Any:
    """A tile's polygon or a geometry, made valid (polygonal parts kept) for QuPath."""
    geom = shape.polygon if hasattr(shape, "polygon") and not hasattr(shape, "geom_type") else shape
    if geom is None or not hasattr(geom, "geom_type"):
        raise GeoJSONError(f"{what} must be a shapely geometry, got {type(shape).__name__}")
    if not geom.is_valid:
        fixed = shapely.make_valid(geom)
        if geom.geom_type in POLYGONAL_TYPES:
            fixed = polygonal_part(fixed)
        if fixed.is_empty:
            raise GeoJSONError(
                f"{what} is not valid ({shapely.is_valid_reason(geom)}) and has no area left",
                hint="check the outline that produced it",
            )
        logger.debug("repaired an invalid %s (%s)", what, shapely.is_valid_reason(geom))
        geom = fixed
    return geom


def _class_arg(classification: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """A classification given as a name or a sequence of names (derived class), normalised."""
    if classification is None:
        return None
    return normalise_class(
        classification if isinstance(classification, str) else tuple(classification)
    )


def tile_object(
    tile_polygon: Any,
    classification: str | Sequence[str] | None,
    measurements: Mapping[str, float] | None = None,
    name: str | None = None,
    *,
    object_type: Literal["tile", "detection"] = "tile",
    metadata: Mapping[str, str] | None = None,
    is_locked: bool = False,
) -> QuPathObject:
    """A tile (or detection) object for a tile polygon or a :class:`~her2_qupath.tiling.Tile`."""
    cls = _class_arg(classification)
    return QuPathObject(
        geometry=_geometry_of(tile_polygon),
        object_type=object_type,
        classification=cls,
        name=name,
        measurements=dict(measurements or {}),
        metadata=_marker(metadata),
        is_locked=is_locked,
    )


def annotation_object(
    geometry: Any,
    classification: str | Sequence[str] | None = None,
    measurements: Mapping[str, float] | None = None,
    name: str | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    is_locked: bool = False,
    color: RGB | None = None,
) -> QuPathObject:
    """An annotation (a region: a scored ROI, the tissue outline)."""
    cls = _class_arg(classification)
    return QuPathObject(
        geometry=_geometry_of(geometry),
        object_type="annotation",
        classification=cls,
        color=color,
        name=name,
        measurements=dict(measurements or {}),
        metadata=_marker(metadata),
        is_locked=is_locked,
    )


def cell_object(
    cell_polygon: Any,
    nucleus_polygon: Any,
    classification: str | Sequence[str] | None = None,
    measurements: Mapping[str, float] | None = None,
    name: str | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
) -> QuPathObject:
    """A cell: its boundary as the geometry and its nucleus as ``nucleusGeometry``."""
    cls = _class_arg(classification)
    return QuPathObject(
        geometry=_geometry_of(cell_polygon, "cell outline"),
        object_type="cell",
        classification=cls,
        name=name,
        measurements=dict(measurements or {}),
        nucleus_geometry=None
        if nucleus_polygon is None
        else _geometry_of(nucleus_polygon, "nucleus"),
        metadata=_marker(metadata),
    )


def rois_from_objects(
    objects: Iterable[QuPathObject], roi_class: str | None = None
) -> list[tuple[Any, str | None]]:
    """Annotations with an area as ``(geometry, name)`` pairs, optionally of one class.

    ``roi_class`` matches by :func:`~her2_qupath.qupath.classes.class_matches` (the
    whole class or any part of it, case ignored: ``tumor`` matches ``Tumor: HER2 2+``). Annotations without area (points, lines) are skipped; from a
    mixed geometry collection only the polygons are kept. ``name`` is the
    annotation's name (None when it has none). The geometries can be passed
    straight to ``tile_grid(..., rois=...)``; a tile's ``roi_index`` then indexes
    this list.
    """
    out: list[tuple[Any, str | None]] = []
    for k, obj in enumerate(objects):
        if obj.object_type != "annotation":
            continue
        if roi_class is not None and not class_matches(obj.class_name, roi_class):
            continue
        geom = obj.geometry
        if geom.geom_type not in POLYGONAL_TYPES:
            geom = polygonal_part(geom)
        if geom.is_empty or geom.area <= 0:
            logger.info(
                "annotation %d (%s) has no area; not used as an ROI", k, obj.geometry.geom_type
            )
            continue
        out.append((geom, obj.name))
    return out
