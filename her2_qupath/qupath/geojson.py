"""QuPath-exact GeoJSON: objects written the way QuPath 0.4-0.7 writes them.

A QuPath object is a GeoJSON ``Feature``::

    {"type": "Feature",
     "id": "<UUID>",                               # since QuPath 0.4
     "geometry": {...},                            # level-0 pixel coordinates
     "nucleusGeometry": {...},                     # cells only, beside "geometry"
     "properties": {
        "objectType": "annotation" | "detection" | "tile" | "cell",
        "name": "...",                             # optional
        "color": [r, g, b],                        # optional object colour
        "classification": {"name": "Tumor", "color": [r, g, b]}
                       or {"names": ["Tumor", "HER2 2+"], "color": [r, g, b]},
        "isLocked": true,                          # only written when true
        "measurements": {"Area": 12.5, "Mean": "NaN"},
        "metadata": {"key": "value"}}}             # strings (QuPath 0.5+)

Reading also accepts what older QuPath versions and other tools write:
classification as a plain string (``"Tumor: Positive"`` is a derived class) or
as the pre-0.4 object with ``colorRGB`` (a packed ARGB int); measurements as a
list of ``{"name": ..., "value": ...}``; the object type in the 0.2-era ``id``
(``"PathAnnotationObject"``) or in ``object_type``; ``NaN`` written bare.

The rules live in :mod:`her2_qupath.qupath.validate` (one place, used leniently
by the reader and strictly before anything is written: everything this module
writes passes :func:`~her2_qupath.qupath.validate.validate_features`); the object
builders (tiles, annotations, cells) and the ROI selection in
:mod:`her2_qupath.qupath.objects`; class names and colours in
:mod:`her2_qupath.qupath.classes`.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import shapely
from shapely.geometry import mapping

from .._io import atomic_write_bytes
from ..errors import GeoJSONError
from .classes import RGB, as_rgb, class_color, normalise_class
from .validate import OBJECT_TYPES, as_feature_list, feature_fields, validate_features

__all__ = [
    "QuPathObject",
    "to_feature",
    "from_feature",
    "to_features",
    "write_geojson",
    "read_geojson",
    "load_features",
]

logger = logging.getLogger(__name__)

ObjectType = Literal["annotation", "detection", "tile", "cell"]


# --------------------------------------------------------------------------- the object


def _geom_equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return a.geom_type == b.geom_type and bool(a.equals_exact(b, 0.0))


def _values_equal(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@dataclass(eq=False)
class QuPathObject:
    """One QuPath object: geometry (level-0 pixels) and what QuPath shows with it.

    ``classification`` is a class name (``"HER2 2+"``), a derived class as a tuple
    of names (``("Tumor", "HER2 2+")``, QuPath's ``Tumor: HER2 2+``) or None;
    ``color`` is the classification colour (defaults from :func:`class_color`);
    ``object_color`` is QuPath's optional per-object colour.
    """

    geometry: Any
    object_type: ObjectType = "annotation"
    classification: str | tuple[str, ...] | None = None
    color: RGB | None = None
    name: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    nucleus_geometry: Any = None
    metadata: dict[str, str] = field(default_factory=dict)
    is_locked: bool = False
    object_color: RGB | None = None

    def __post_init__(self) -> None:
        if self.object_type not in OBJECT_TYPES:
            raise GeoJSONError(
                f"object type {self.object_type!r} is not one of {', '.join(OBJECT_TYPES)}",
                hint="use 'annotation' for regions, 'tile'/'detection' for tiles, 'cell' for cells",
            )
        try:
            self.classification = normalise_class(self.classification)
            uuid.UUID(str(self.id))
        except ValueError as err:
            raise GeoJSONError(
                f"invalid object: {err}", hint="use a UUID id and a class name"
            ) from err
        self.id = str(self.id)
        if self.classification is not None and self.color is None:
            self.color = class_color(self.classification)
        if self.color is not None:
            self.color = as_rgb(self.color, where="color")
        if self.object_color is not None:
            self.object_color = as_rgb(self.object_color, where="object_color")
        try:
            self.measurements = {str(k): float(v) for k, v in self.measurements.items()}
        except (TypeError, ValueError) as err:
            raise GeoJSONError(
                f"measurements must be numbers: {err}", hint="use float('nan') for a missing value"
            ) from err
        self.metadata = {str(k): str(v) for k, v in self.metadata.items()}
        if self.nucleus_geometry is not None and self.object_type != "cell":
            raise GeoJSONError(
                f"only cells carry a nucleus geometry, not a {self.object_type}",
                hint="use object_type='cell'",
            )

    @property
    def names(self) -> tuple[str, ...]:
        """The classification's names (empty when unclassified)."""
        if self.classification is None:
            return ()
        if isinstance(self.classification, str):
            return (self.classification,)
        return self.classification

    @property
    def class_name(self) -> str | None:
        """QuPath's string form of the classification (``"Tumor: HER2 2+"``)."""
        return ": ".join(self.names) if self.classification is not None else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuPathObject):
            return NotImplemented
        return (
            self.object_type == other.object_type
            and self.classification == other.classification
            and self.color == other.color
            and self.name == other.name
            and self.id == other.id
            and self.metadata == other.metadata
            and self.is_locked == other.is_locked
            and self.object_color == other.object_color
            and self.measurements.keys() == other.measurements.keys()
            and all(_values_equal(v, other.measurements[k]) for k, v in self.measurements.items())
            and _geom_equal(self.geometry, other.geometry)
            and _geom_equal(self.nucleus_geometry, other.nucleus_geometry)
        )

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- writing


def _number(value: float) -> float | int | str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _listify(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    return value


def _xy(geom: Any) -> list[Any]:
    return shapely.get_coordinates(geom).tolist()  # type: ignore[no-any-return]


def _polygon_coords(poly: Any) -> list[Any]:
    return [_xy(poly.exterior)] + [_xy(ring) for ring in poly.interiors]


def _geometry_json(geom: Any) -> dict[str, Any]:
    """GeoJSON geometry with exact coordinates (float64 values, which JSON round-trips)."""
    kind = geom.geom_type
    if geom.is_empty or kind == "GeometryCollection":
        if kind == "GeometryCollection" and not geom.is_empty:
            return {"type": kind, "geometries": [_geometry_json(g) for g in geom.geoms]}
        return _listify(mapping(geom))  # type: ignore[no-any-return]
    if kind == "Polygon":
        coords: Any = _polygon_coords(geom)
    elif kind == "MultiPolygon":
        coords = [_polygon_coords(p) for p in geom.geoms]
    elif kind == "Point":
        coords = _xy(geom)[0]
    elif kind in ("LineString", "LinearRing", "MultiPoint"):
        kind = "LineString" if kind == "LinearRing" else kind
        coords = _xy(geom)
    elif kind == "MultiLineString":
        coords = [_xy(g) for g in geom.geoms]
    else:  # pragma: no cover - shapely has no other types
        return _listify(mapping(geom))  # type: ignore[no-any-return]
    return {"type": kind, "coordinates": coords}


def to_feature(obj: QuPathObject) -> dict[str, Any]:
    """The GeoJSON feature of ``obj``, keys in QuPath's order, NaN as ``"NaN"``."""
    feature: dict[str, Any] = {
        "type": "Feature",
        "id": obj.id,
        "geometry": _geometry_json(obj.geometry),
    }
    if obj.object_type == "cell" and obj.nucleus_geometry is not None:
        feature["nucleusGeometry"] = _geometry_json(obj.nucleus_geometry)
    props: dict[str, Any] = {"objectType": obj.object_type}
    if obj.name is not None:
        props["name"] = obj.name
    if obj.object_color is not None:
        props["color"] = list(obj.object_color)
    if obj.classification is not None:
        names = obj.names
        cls: dict[str, Any] = {"name": names[0]} if len(names) == 1 else {"names": list(names)}
        cls["color"] = list(obj.color or class_color(names))
        props["classification"] = cls
    if obj.is_locked:
        props["isLocked"] = True
    if obj.measurements:
        props["measurements"] = {k: _number(v) for k, v in obj.measurements.items()}
    if obj.metadata:
        props["metadata"] = dict(obj.metadata)
    feature["properties"] = props
    return feature


def to_features(objects: Iterable[QuPathObject]) -> list[dict[str, Any]]:
    return [to_feature(o) for o in objects]


def write_geojson(
    path: str | os.PathLike[str],
    objects: Iterable[QuPathObject],
    *,
    collection: bool = True,
    indent: int | None = None,
) -> Path:
    """Write objects as QuPath imports them, atomically; ``.gz`` paths are gzipped.

    ``collection=True`` writes a ``FeatureCollection`` (QuPath's
    ``"FEATURE_COLLECTION"`` export option), else a bare JSON array of features.
    The features pass :func:`validate_features` before anything is written.
    """
    features = to_features(objects)
    validate_features(features)
    data: Any = {"type": "FeatureCollection", "features": features} if collection else features
    text = json.dumps(data, indent=indent, allow_nan=False, ensure_ascii=False)
    payload = (text + "\n").encode("utf-8")
    path = Path(path)
    if path.suffix.lower() == ".gz":
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    atomic_write_bytes(path, payload)
    logger.info("wrote %d objects to %s", len(features), path)
    return path


# --------------------------------------------------------------------------- reading


def _parse_json_bytes(raw: bytes, source: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise GeoJSONError(
            f"{source} is not UTF-8 text", hint="export the objects from QuPath as GeoJSON"
        ) from err
    except json.JSONDecodeError as err:
        raise GeoJSONError(
            f"{source} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}",
            hint="export the objects from QuPath as GeoJSON (File > Export objects as GeoJSON)",
        ) from err


def _read_path(path: Path) -> Any:
    if not path.exists():
        raise GeoJSONError(f"GeoJSON file {path} does not exist", hint="check the path")
    if path.is_dir():
        raise GeoJSONError(
            f"{path} is a directory, not a GeoJSON file", hint="pass the .geojson file"
        )
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise GeoJSONError(f"{path} is a damaged gzip file", hint="export it again") from err
    elif raw[:4] == b"PK\x03\x04":
        return _read_zip(path, raw)
    return _parse_json_bytes(raw, str(path))


def _read_zip(path: Path, raw: bytes) -> Any:
    features: list[Any] = []
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith((".geojson", ".json"))]
            if not members:
                raise GeoJSONError(
                    f"{path} holds no .geojson or .json file", hint="zip the GeoJSON export"
                )
            for member in members:
                features.extend(
                    as_feature_list(_parse_json_bytes(zf.read(member), f"{path}:{member}"))
                )
    except zipfile.BadZipFile as err:
        raise GeoJSONError(f"{path} is a damaged zip file", hint="export it again") from err
    return features


def load_features(path_or_data: Any) -> list[Any]:
    """The raw feature dicts of a path (``.geojson``, ``.json``, ``.gz``, ``.zip``),
    JSON text/bytes, or already parsed data (dict or list)."""
    if isinstance(path_or_data, (dict, list)):
        return as_feature_list(path_or_data)
    if isinstance(path_or_data, bytes):
        raw = gzip.decompress(path_or_data) if path_or_data[:2] == b"\x1f\x8b" else path_or_data
        return as_feature_list(_parse_json_bytes(raw, "GeoJSON data"))
    if isinstance(path_or_data, str) and path_or_data.lstrip()[:1] in ("{", "["):
        return as_feature_list(_parse_json_bytes(path_or_data.encode("utf-8"), "GeoJSON text"))
    if isinstance(path_or_data, (str, os.PathLike)):
        return as_feature_list(_read_path(Path(path_or_data)))
    raise GeoJSONError(
        f"cannot read GeoJSON from a {type(path_or_data).__name__}",
        hint="pass a path, JSON text, or parsed JSON (dict or list)",
    )


def read_geojson(path_or_data: Any, *, repair: bool = False) -> list[QuPathObject]:
    """Read QuPath objects from a file, JSON text or parsed data.

    Invalid features raise :class:`GeoJSONError` naming the feature index and the
    fix. ``repair=True`` fixes invalid polygons with ``shapely.make_valid``
    (keeping the polygonal parts) instead of raising.
    """
    features = load_features(path_or_data)
    return [from_feature(f, i, repair=repair) for i, f in enumerate(features)]


def from_feature(
    feature: Mapping[str, Any], index: int = 0, *, repair: bool = False
) -> QuPathObject:
    """Parse one feature (any form QuPath 0.2-0.7 reads); errors name ``index``."""
    return QuPathObject(**feature_fields(feature, index, repair=repair, strict=False))
