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
``validate_features`` encodes QuPath's rules in one place; everything this
module writes passes it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import os
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._io import atomic_write_bytes
from ..config import HER2_COLORS, PRODUCT_MARKER
from ..errors import GeoJSONError
from .classes import class_matches
from .objects import is_product_object

__all__ = [
    "OBJECT_TYPES",
    "QuPathObject",
    "to_feature",
    "from_feature",
    "to_features",
    "write_geojson",
    "read_geojson",
    "load_features",
    "validate_features",
    "class_color",
    "tile_object",
    "annotation_object",
    "cell_object",
    "rois_from_objects",
    "is_product_object",
    "polygonal_part",
]

logger = logging.getLogger(__name__)

ObjectType = Literal["annotation", "detection", "tile", "cell"]
RGB = tuple[int, int, int]

#: The object types this product writes and reads (QuPath's ``objectType`` values).
OBJECT_TYPES: tuple[str, ...] = ("annotation", "detection", "tile", "cell")
#: Pre-0.4 type names (QuPath 0.2 stored them in ``id``) and aliases QuPath accepts.
_TYPE_ALIASES: dict[str, str] = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathTileObject": "tile",
    "PathCellObject": "cell",
}
_UNSUPPORTED_TYPES = {"tmaCore", "tma_core", "TMACoreObject", "root", "PathRootObject"}
_GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)
_POLYGONAL = ("Polygon", "MultiPolygon")
_NONFINITE = {
    "nan": math.nan,
    "infinity": math.inf,
    "-infinity": -math.inf,
    "inf": math.inf,
    "-inf": -math.inf,
}


# --------------------------------------------------------------------------- colours


def class_color(name: str | Sequence[str]) -> RGB:
    """Colour of a classification: the HER2 colours from config, else a stable hash colour.

    A derived class (``("Tumor", "HER2 2+")``) takes the colour of its last HER2 name
    if it has one. Other names get a colour from the MD5 of the name, mid-bright so it
    shows on both the slide and QuPath's dark overlay.
    """
    names = (name,) if isinstance(name, str) else tuple(name)
    for part in reversed(names):
        if part in HER2_COLORS:
            return HER2_COLORS[part]
    digest = hashlib.md5(": ".join(names).encode("utf-8"), usedforsecurity=False).digest()
    return tuple(int(64 + b % 160) for b in digest[:3])  # type: ignore[return-value]


def _unpack_rgb(value: int) -> RGB:
    """RGB of a packed (A)RGB int as Java writes it (signed 32-bit)."""
    v = int(value) & 0xFFFFFFFF
    return ((v >> 16) & 255, (v >> 8) & 255, v & 255)


def _rgb(value: Any, *, where: str) -> RGB:
    """Normalise ``[r, g, b]``, ``[r, g, b, a]`` or a packed int to an RGB tuple."""
    if isinstance(value, bool):
        raise ValueError(f"{where} must be [r, g, b] integers 0-255, got {value!r}")
    if isinstance(value, int):
        return _unpack_rgb(value)
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], int):
            return _unpack_rgb(value[0])
        if len(value) in (3, 4) and all(
            isinstance(c, (int, float))
            and not isinstance(c, bool)
            and float(c).is_integer()
            and 0 <= c <= 255
            for c in value
        ):
            r, g, b = (int(c) for c in value[:3])
            return (r, g, b)
    raise ValueError(f"{where} must be [r, g, b] integers 0-255, got {value!r}")


# --------------------------------------------------------------------------- the object


def _normalise_class(value: Any) -> str | tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = tuple(p.strip() for p in value.split(":"))
        if any(not p for p in parts):
            raise ValueError(f"classification {value!r} has an empty name")
        return parts[0] if len(parts) == 1 else parts
    if isinstance(value, (list, tuple)):
        parts = tuple(str(p) for p in value)
        if not parts or any(not p.strip() for p in parts):
            raise ValueError(f"classification {value!r} has an empty name")
        return parts[0] if len(parts) == 1 else parts
    raise ValueError(f"classification must be a string or a sequence of names, got {value!r}")


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
            self.classification = _normalise_class(self.classification)
            uuid.UUID(str(self.id))
        except ValueError as err:
            raise GeoJSONError(
                f"invalid object: {err}", hint="use a UUID id and a class name"
            ) from err
        self.id = str(self.id)
        if self.classification is not None and self.color is None:
            self.color = class_color(self.classification)
        if self.color is not None:
            self.color = _rgb(self.color, where="color")
        if self.object_color is not None:
            self.object_color = _rgb(self.object_color, where="object_color")
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
    import shapely

    return shapely.get_coordinates(geom).tolist()  # type: ignore[no-any-return]


def _polygon_coords(poly: Any) -> list[Any]:
    return [_xy(poly.exterior)] + [_xy(ring) for ring in poly.interiors]


def _geometry_json(geom: Any) -> dict[str, Any]:
    """GeoJSON geometry with exact coordinates (float64 values, which JSON round-trips)."""
    from shapely.geometry import mapping

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
                    _as_feature_list(_parse_json_bytes(zf.read(member), f"{path}:{member}"))
                )
    except zipfile.BadZipFile as err:
        raise GeoJSONError(f"{path} is a damaged zip file", hint="export it again") from err
    return features


def _as_feature_list(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            feats = data.get("features")
            if not isinstance(feats, list):
                raise GeoJSONError(
                    "FeatureCollection has no 'features' array", hint='add "features": [...]'
                )
            return feats
        if kind == "Feature":
            return [data]
        if kind in _GEOMETRY_TYPES:
            raise GeoJSONError(
                f"got a bare {kind} geometry, not a Feature",
                hint='wrap it as {"type": "Feature", "geometry": ..., "properties": {"objectType": "annotation"}}',
            )
        raise GeoJSONError(
            f"JSON object of type {kind!r} is not GeoJSON that QuPath imports",
            hint="use a Feature, a FeatureCollection or a list of Features",
        )
    raise GeoJSONError(
        f"expected GeoJSON (an object or a list), got {type(data).__name__}",
        hint="use a Feature, a FeatureCollection or a list of Features",
    )


def load_features(path_or_data: Any) -> list[Any]:
    """The raw feature dicts of a path (``.geojson``, ``.json``, ``.gz``, ``.zip``),
    JSON text/bytes, or already parsed data (dict or list)."""
    if isinstance(path_or_data, (dict, list)):
        return _as_feature_list(path_or_data)
    if isinstance(path_or_data, bytes):
        raw = gzip.decompress(path_or_data) if path_or_data[:2] == b"\x1f\x8b" else path_or_data
        return _as_feature_list(_parse_json_bytes(raw, "GeoJSON data"))
    if isinstance(path_or_data, str) and path_or_data.lstrip()[:1] in ("{", "["):
        return _as_feature_list(_parse_json_bytes(path_or_data.encode("utf-8"), "GeoJSON text"))
    if isinstance(path_or_data, (str, os.PathLike)):
        return _as_feature_list(_read_path(Path(path_or_data)))
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


def _err(index: int, message: str, hint: str) -> GeoJSONError:
    return GeoJSONError(f"feature {index}: {message}", hint=hint)


def _positions(seq: Any, index: int, where: str, *, single: bool = False) -> np.ndarray:
    """A list of ``[x, y(, z)]`` positions (or one position) as a float array, checked."""
    bad = _err(
        index,
        f"{where} has bad coordinates ({json.dumps(seq, default=str)[:80]})",
        "positions are [x, y] finite numbers, nested as RFC 7946 says for the type",
    )
    if not isinstance(seq, (list, tuple)):
        raise bad
    try:
        arr = np.asarray(seq)
    except (ValueError, TypeError) as err:  # ragged nesting
        raise bad from err
    ndim = 1 if single else 2
    if (
        arr.dtype.kind not in "iuf"
        or arr.ndim != ndim
        or arr.shape[-1] not in (2, 3)
        or not np.isfinite(arr).all()
    ):
        raise bad
    return arr.astype(np.float64, copy=False)


def _seq(value: Any, index: int, where: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _err(index, f"{where} coordinates are malformed", "follow RFC 7946 nesting")
    return list(value)


def _ring(seq: Any, k: int, index: int, where: str) -> np.ndarray:
    arr = _positions(seq, index, where)
    if len(arr) < 4 or not np.array_equal(arr[0], arr[-1]):
        raise _err(
            index,
            f"{where} ring {k} has {len(arr)} positions"
            + ("" if len(arr) < 4 else " and is not closed"),
            "a ring needs at least 4 positions and must end where it starts "
            "(QuPath cannot build it otherwise)",
        )
    return arr


def _polygon(rings: Any, index: int, where: str) -> Any:
    import shapely

    parts = [_ring(r, k, index, where) for k, r in enumerate(_seq(rings, index, where))]
    if not parts:
        raise _err(index, f"{where} polygon has no rings", "give the polygon its outline")
    return shapely.Polygon(parts[0], holes=parts[1:] or None)


def _build(gtype: str, coords: Any, index: int, where: str) -> Any:
    """Shapely geometry from GeoJSON coordinates, checking their nesting and values."""
    import shapely

    if gtype == "Point":
        return shapely.Point(_positions(coords, index, where, single=True))
    if gtype == "MultiPoint":
        return shapely.MultiPoint(_positions(coords, index, where))
    if gtype == "LineString":
        arr = _positions(coords, index, where)
        if len(arr) < 2:
            raise _err(
                index, f"{where} line has {len(arr)} position", "give a line 2 or more positions"
            )
        return shapely.LineString(arr)
    if gtype == "MultiLineString":
        lines = [_build("LineString", c, index, where) for c in _seq(coords, index, where)]
        return shapely.MultiLineString(lines)
    if gtype == "Polygon":
        return _polygon(coords, index, where)
    polys = [_polygon(c, index, where) for c in _seq(coords, index, where)]
    return shapely.MultiPolygon(polys)


def polygonal_part(geom: Any) -> Any:
    """The union of the polygons inside ``geom`` (an empty Polygon if there are none)."""
    import shapely
    from shapely.geometry import Polygon

    polys: list[Any] = []

    def walk(g: Any) -> None:
        if isinstance(g, Polygon):
            if not g.is_empty:
                polys.append(g)
        elif hasattr(g, "geoms"):
            for part in g.geoms:
                walk(part)

    walk(geom)
    return shapely.union_all(polys) if polys else Polygon()


def _parse_geometry(obj: Any, index: int, where: str, *, repair: bool, polygonal: bool) -> Any:
    """Check a GeoJSON geometry against QuPath's reader and return it as shapely."""
    import shapely

    if not isinstance(obj, dict):
        raise _err(
            index,
            f"{where} is missing or not an object",
            'add "geometry": {"type": ..., "coordinates": ...}',
        )
    gtype = obj.get("type")
    if gtype not in _GEOMETRY_TYPES:
        raise _err(
            index,
            f"{where} type {gtype!r} is not a GeoJSON geometry type",
            f"use one of {', '.join(_GEOMETRY_TYPES)}",
        )
    if polygonal and gtype not in _POLYGONAL:
        raise _err(
            index,
            f"{where} is a {gtype}, but this object needs an area",
            "use a Polygon or MultiPolygon",
        )
    if gtype == "GeometryCollection":
        parts = obj.get("geometries")
        if not isinstance(parts, list):
            raise _err(
                index,
                f"{where} GeometryCollection has no 'geometries' array",
                "add the member geometries",
            )
        geoms = [_parse_geometry(p, index, where, repair=repair, polygonal=False) for p in parts]
        return shapely.GeometryCollection(geoms)
    if "coordinates" not in obj:
        raise _err(
            index,
            f"{where} has no coordinates",
            'add "coordinates" (QuPath cannot read it without)',
        )
    try:
        geom = _build(gtype, obj["coordinates"], index, where)
    except (ValueError, TypeError, shapely.errors.GEOSException) as err:
        if isinstance(err, GeoJSONError):
            raise
        raise _err(
            index,
            f"{where} cannot be built ({err})",
            "close polygon rings and give each at least 4 positions",
        ) from err
    if geom.is_empty:
        raise _err(index, f"{where} is empty", "give the object a non-empty geometry")
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        if not repair:
            raise _err(
                index,
                f"{where} is not valid ({reason})",
                "fix the outline (no self-intersections) or read with repair=True",
            )
        fixed = shapely.make_valid(geom)
        if gtype in _POLYGONAL:
            fixed = polygonal_part(fixed)
        if fixed.is_empty:
            raise _err(
                index,
                f"{where} is not valid ({reason}) and has no area left after repair",
                "redraw the outline",
            )
        logger.warning("feature %d: repaired invalid %s (%s)", index, where, reason)
        geom = fixed
    return geom


def _parse_classification(value: Any, index: int, *, strict: bool) -> tuple[Any, RGB | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        if strict:
            raise _err(
                index,
                f"classification {value!r} is a plain string",
                'write {"name": ..., "color": [r, g, b]} as QuPath 0.4+ does',
            )
        try:
            return _normalise_class(value), None
        except ValueError as err:
            raise _err(index, str(err), "give the class a name") from err
    if not isinstance(value, dict):
        raise _err(
            index,
            f"classification must be a string or an object, got {value!r}",
            'use {"name": ..., "color": [r, g, b]}',
        )
    if not value:
        return None, None  # QuPath's NULL_CLASS
    legacy = "colorRGB" in value or "parentClass" in value
    if legacy and not strict:
        names = _legacy_names(value, index)
        color = _unpack_rgb(value["colorRGB"]) if isinstance(value.get("colorRGB"), int) else None
        return _normalise_class(names), color
    has_name = isinstance(value.get("name"), str) and value["name"].strip() != ""
    has_names = (
        isinstance(value.get("names"), list)
        and len(value["names"]) > 0
        and all(isinstance(n, str) and n.strip() for n in value["names"])
    )
    if not (has_name or has_names):
        raise _err(
            index,
            f"classification {value!r} has no 'name' or 'names'",
            'add "name": "<class>" (or "names": [...] for a derived class)',
        )
    if "color" not in value:
        raise _err(
            index,
            f"classification {value.get('name') or value.get('names')!r} has a name but no colour (QuPath throws on import)",
            'add "color": [r, g, b] to the classification',
        )
    try:
        color = _rgb(value["color"], where="classification colour")
    except ValueError as err:
        raise _err(index, str(err), 'use "color": [r, g, b] with integers 0-255') from err
    try:
        cls = _normalise_class(value["name"] if has_name else value["names"])
    except ValueError as err:
        raise _err(index, str(err), "give every class a name") from err
    return cls, color


def _legacy_names(value: dict[str, Any], index: int) -> list[str]:
    """Names of a pre-0.4 PathClass object (``name`` plus nested ``parentClass``)."""
    names: list[str] = []
    node: Any = value
    while isinstance(node, dict) and node:
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise _err(
                index,
                f"legacy classification {value!r} has no name",
                'use {"name": ..., "color": [r, g, b]}',
            )
        names.append(name)
        node = node.get("parentClass")
    return list(reversed(names))


def _parse_measurements(value: Any, index: int, *, strict: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    if value is None:
        return out
    if isinstance(value, list):
        if strict:
            raise _err(
                index,
                "measurements are a list (the pre-0.4 form)",
                'write an object {"name": value}',
            )
        for k, item in enumerate(value):
            if not (
                isinstance(item, dict) and isinstance(item.get("name"), str) and "value" in item
            ):
                raise _err(
                    index,
                    f"measurement {k} is not {{'name': ..., 'value': ...}}: {item!r}",
                    "give each a name and a value",
                )
            out[item["name"]] = _measurement_value(item["value"], index, item["name"])
        return out
    if not isinstance(value, dict):
        raise _err(
            index,
            f"measurements must be an object of numbers, got {type(value).__name__}",
            'write {"name": number}',
        )
    for k, v in value.items():
        out[str(k)] = _measurement_value(v, index, k)
    return out


def _measurement_value(v: Any, index: int, name: str) -> float:
    if isinstance(v, bool) or v is None:
        raise _err(
            index,
            f"measurement {name!r} is {json.dumps(v)}, not a number",
            'write a number or "NaN"',
        )
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in _NONFINITE:
        return _NONFINITE[v.strip().lower()]
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    raise _err(index, f"measurement {name!r} is {v!r}, not a number", 'write a number or "NaN"')


def _object_type(
    feature: dict[str, Any], props: dict[str, Any], index: int, *, strict: bool
) -> str:
    fid = feature.get("id")
    if "objectType" in props:
        raw = props["objectType"]
    elif strict:
        raise _err(
            index,
            "properties have no objectType",
            f'add "objectType": one of {", ".join(OBJECT_TYPES)}',
        )
    elif "object_type" in props:
        raw = props["object_type"]
    elif "type" in props and isinstance(props["type"], str):
        raw = props["type"]
    elif isinstance(fid, str) and fid in _TYPE_ALIASES:
        raw = fid
    else:
        return "annotation"  # QuPath's default for a feature without a type
    if not isinstance(raw, str):
        raise _err(
            index,
            f"objectType must be a string, got {raw!r}",
            f"use one of {', '.join(OBJECT_TYPES)}",
        )
    kind = raw if strict else _TYPE_ALIASES.get(raw, raw)
    if kind in _UNSUPPORTED_TYPES:
        raise _err(
            index,
            f"objectType {raw!r} (TMA cores, the root) is not supported here",
            "export annotations, detections, tiles or cells",
        )
    if kind not in OBJECT_TYPES:
        raise _err(
            index,
            f"objectType {raw!r} is not one of {', '.join(OBJECT_TYPES)}",
            "fix the objectType",
        )
    return kind


def _parse_feature(feature: Any, index: int, *, repair: bool, strict: bool) -> QuPathObject:
    """The one place QuPath's rules are encoded; strict adds what this product always writes."""
    if not isinstance(feature, dict):
        raise _err(
            index,
            f"is a {type(feature).__name__}, not a GeoJSON Feature object",
            'use {"type": "Feature", ...}',
        )
    if feature.get("type") != "Feature":
        raise _err(
            index, f"has type {feature.get('type')!r}, not 'Feature'", 'set "type": "Feature"'
        )
    props = feature.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise _err(index, "properties must be an object", 'use "properties": {...}')
    kind = _object_type(feature, props, index, strict=strict)

    fid = feature.get("id")
    obj_id: str | None = None
    if fid is None:
        if strict:
            raise _err(index, "has no id", "write a UUID string as the feature's id (QuPath 0.4+)")
    elif not (not strict and isinstance(fid, str) and fid in _TYPE_ALIASES):
        try:
            parsed: str | None = str(uuid.UUID(str(fid)))
        except ValueError:
            parsed = None
        if parsed is None or (strict and str(fid) != parsed):
            if strict:
                raise _err(
                    index, f"id {fid!r} is not a UUID", "write a canonical UUID string (uuid4)"
                )
            logger.debug("feature %d: id %r is not a UUID; a new one is generated", index, fid)
        else:
            obj_id = parsed

    polygonal = kind in ("cell", "tile")
    geometry = _parse_geometry(
        feature.get("geometry"), index, "geometry", repair=repair, polygonal=polygonal
    )
    nucleus = None
    if "nucleusGeometry" in feature and feature["nucleusGeometry"] is not None:
        if kind != "cell":
            raise _err(
                index,
                f"a {kind} has a nucleusGeometry",
                'only cells ("objectType": "cell") have a nucleus',
            )
        nucleus = _parse_geometry(
            feature["nucleusGeometry"], index, "nucleusGeometry", repair=repair, polygonal=True
        )
    if "nucleusGeometry" in props:
        raise _err(
            index,
            "nucleusGeometry is inside properties",
            "put nucleusGeometry beside geometry, at the feature's top level",
        )

    name = props.get("name")
    if name is not None and not isinstance(name, str):
        raise _err(index, f"name must be a string, got {name!r}", "write the name as a string")
    cls, cls_color = _parse_classification(props.get("classification"), index, strict=strict)
    object_color = None
    if props.get("color") is not None:
        try:
            object_color = _rgb(props["color"], where="object colour")
        except ValueError as err:
            raise _err(index, str(err), 'use "color": [r, g, b]') from err
    locked = props.get("isLocked", False)
    if not isinstance(locked, bool):
        raise _err(index, f"isLocked must be true or false, got {locked!r}", "write a JSON boolean")
    measurements = _parse_measurements(props.get("measurements"), index, strict=strict)
    meta_raw = props.get("metadata") or {}
    if not isinstance(meta_raw, dict):
        raise _err(
            index, "metadata must be an object of strings", 'use "metadata": {"key": "value"}'
        )
    metadata: dict[str, str] = {}
    for k, v in meta_raw.items():
        if isinstance(v, str):
            metadata[str(k)] = v
        elif strict or isinstance(v, (dict, list)):
            raise _err(
                index, f"metadata {k!r} is {v!r}, not a string", "write metadata values as strings"
            )
        else:
            metadata[str(k)] = json.dumps(v)
    kwargs: dict[str, Any] = {}
    if obj_id is not None:
        kwargs["id"] = obj_id
    return QuPathObject(
        geometry=geometry,
        object_type=kind,  # type: ignore[arg-type]
        classification=cls,
        color=cls_color,
        name=name,
        measurements=measurements,
        nucleus_geometry=nucleus,
        metadata=metadata,
        is_locked=locked,
        object_color=object_color,
        **kwargs,
    )


def from_feature(
    feature: Mapping[str, Any], index: int = 0, *, repair: bool = False
) -> QuPathObject:
    """Parse one feature (any form QuPath 0.2-0.7 reads); errors name ``index``."""
    return _parse_feature(feature, index, repair=repair, strict=False)


def validate_features(features: Any) -> int:
    """Check features against QuPath's rules, as this product writes them; return the count.

    Rules: each item is a ``Feature`` with a UUID ``id``; ``properties.objectType`` is
    one of annotation/detection/tile/cell; ``geometry`` is a GeoJSON geometry with
    well-formed coordinates, polygons valid (no self-intersection) and tiles/cells
    polygonal; ``classification`` an object with ``name`` or ``names`` AND ``color``
    ``[r, g, b]``; ``measurements`` an object of numbers (non-finite as ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``); ``metadata`` an object of strings; ``isLocked``
    a boolean; ``nucleusGeometry`` only on cells, polygonal, beside ``geometry``.
    Raises :class:`GeoJSONError` naming the first bad feature's index and the fix.
    A FeatureCollection or a single Feature is accepted as well as a list.
    """
    feats = _as_feature_list(features)
    for i, f in enumerate(feats):
        _parse_feature(f, i, repair=False, strict=True)
        # JSON numbers only: a NaN float would be written as bare NaN (not JSON)
        props = f.get("properties") or {}
        for k, v in (props.get("measurements") or {}).items():
            if isinstance(v, float) and not math.isfinite(v):
                raise _err(
                    i,
                    f"measurement {k!r} is a bare {v}",
                    'write non-finite values as "NaN"/"Infinity"',
                )
    return len(feats)


# --------------------------------------------------------------------------- helpers


def _marker(metadata: Mapping[str, str] | None) -> dict[str, str]:
    from .. import __version__

    out = {PRODUCT_MARKER: __version__}
    out.update(metadata or {})
    return out


def _geometry_of(shape: Any, what: str = "geometry") -> Any:
    """A tile's polygon or a geometry, made valid (polygonal parts kept) for QuPath."""
    import shapely

    geom = shape.polygon if hasattr(shape, "polygon") and not hasattr(shape, "geom_type") else shape
    if geom is None or not hasattr(geom, "geom_type"):
        raise GeoJSONError(f"{what} must be a shapely geometry, got {type(shape).__name__}")
    if not geom.is_valid:
        fixed = shapely.make_valid(geom)
        if geom.geom_type in _POLYGONAL:
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
    return _normalise_class(
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
        if geom.geom_type not in _POLYGONAL:
            geom = polygonal_part(geom)
        if geom.is_empty or geom.area <= 0:
            logger.info(
                "annotation %d (%s) has no area; not used as an ROI", k, obj.geometry.geom_type
            )
            continue
        out.append((geom, obj.name))
    return out
