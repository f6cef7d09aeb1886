"""QuPath's rules for a GeoJSON feature, in one place: what reading accepts, what writing must meet.

:func:`feature_fields` checks one feature the way QuPath 0.2-0.7 reads it and
returns the fields of its :class:`~her2_qupath.qupath.geojson.QuPathObject`
(:func:`~her2_qupath.qupath.geojson.from_feature` builds the object from them);
with ``strict=True`` it also demands what this product always writes (a UUID
``id``, an ``objectType``, a classification with a colour, measurements as an
object). :func:`validate_features` runs the strict check over features before
they are written (:func:`~her2_qupath.qupath.geojson.write_geojson`, the streamed
writer of :mod:`her2_qupath.qupath.stream`); everything the product writes passes it.
Errors are :class:`~her2_qupath.errors.GeoJSONError` naming the feature's index
and the fix.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from ..errors import GeoJSONError
from .classes import RGB, as_rgb, normalise_class, unpack_rgb

__all__ = [
    "OBJECT_TYPES",
    "POLYGONAL_TYPES",
    "as_feature_list",
    "feature_fields",
    "polygonal_part",
    "validate_features",
]

logger = logging.getLogger(__name__)

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
POLYGONAL_TYPES: tuple[str, ...] = ("Polygon", "MultiPolygon")
_NONFINITE = {
    "nan": math.nan,
    "infinity": math.inf,
    "-infinity": -math.inf,
    "inf": math.inf,
    "-inf": -math.inf,
}


def _err(index: int, message: str, hint: str) -> GeoJSONError:
    return GeoJSONError(f"feature {index}: {message}", hint=hint)


def as_feature_list(data: Any) -> list[Any]:
    """The features of a list, a FeatureCollection or a single Feature (others raise)."""
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
    parts = [_ring(r, k, index, where) for k, r in enumerate(_seq(rings, index, where))]
    if not parts:
        raise _err(index, f"{where} polygon has no rings", "give the polygon its outline")
    return shapely.Polygon(parts[0], holes=parts[1:] or None)


def _build(gtype: str, coords: Any, index: int, where: str) -> Any:
    """Shapely geometry from GeoJSON coordinates, checking their nesting and values."""
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
    if polygonal and gtype not in POLYGONAL_TYPES:
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
        if gtype in POLYGONAL_TYPES:
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
            return normalise_class(value), None
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
        color = unpack_rgb(value["colorRGB"]) if isinstance(value.get("colorRGB"), int) else None
        return normalise_class(names), color
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
        color = as_rgb(value["color"], where="classification colour")
    except ValueError as err:
        raise _err(index, str(err), 'use "color": [r, g, b] with integers 0-255') from err
    try:
        cls = normalise_class(value["name"] if has_name else value["names"])
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


def feature_fields(feature: Any, index: int, *, repair: bool, strict: bool) -> dict[str, Any]:
    """The one place QuPath's rules are encoded; strict adds what this product always writes.

    Returns the checked fields of the feature's ``QuPathObject`` (its keyword
    arguments; ``id`` only when the feature has a usable one). ``repair`` fixes
    invalid polygons with ``shapely.make_valid`` instead of raising.
    """
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
            object_color = as_rgb(props["color"], where="object colour")
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
    fields: dict[str, Any] = {
        "geometry": geometry,
        "object_type": kind,
        "classification": cls,
        "color": cls_color,
        "name": name,
        "measurements": measurements,
        "nucleus_geometry": nucleus,
        "metadata": metadata,
        "is_locked": locked,
        "object_color": object_color,
    }
    if obj_id is not None:
        fields["id"] = obj_id
    return fields


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
    feats = as_feature_list(features)
    for i, f in enumerate(feats):
        feature_fields(f, i, repair=False, strict=True)
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
