"""File-level helpers: register two slide files, warp point CSVs and GeoJSON.

GeoJSON is handled as plain JSON so every member QuPath writes (``id``,
``properties`` with ``objectType``/``classification``/``measurements``,
``nucleusGeometry`` of cells, unknown extras) passes through unchanged; only
coordinates are transformed.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text, sha256_file
from .._types import ProgressCallback
from ..config import RegistrationConfig
from ..errors import GeoJSONError, UserInputError
from ..slide import open_slide
from .core import register
from .mapping import warp_geometry
from .transform import Transform

__all__ = [
    "register_slides",
    "read_points_csv",
    "write_points_csv",
    "warp_points_csv",
    "warp_geojson",
    "check_transform_fits",
]

log = logging.getLogger(__name__)

#: GeoJSON members of a Feature that hold geometries (QuPath stores cell nuclei in the second)
GEOMETRY_MEMBERS = ("geometry", "nucleusGeometry")


def register_slides(fixed_path: str | os.PathLike[str], moving_path: str | os.PathLike[str],
                    config: RegistrationConfig = RegistrationConfig(), *,  # noqa: B008
                    fixed_mpp: float | None = None, moving_mpp: float | None = None,
                    progress: ProgressCallback | None = None, metric: str = "auto") -> Transform:
    """Open two slide files, register them and record their names and SHA-256 hashes."""
    with open_slide(fixed_path, mpp=fixed_mpp) as fixed, open_slide(moving_path, mpp=moving_mpp) as moving:
        transform = register(fixed, moving, config, progress=progress, metric=metric)
    return transform.with_metadata(
        fixed_name=Path(fixed_path).name, moving_name=Path(moving_path).name,
        fixed_sha256=sha256_file(fixed_path), moving_sha256=sha256_file(moving_path),
    )


def check_transform_fits(transform: Transform, fixed_size: tuple[int, int] | None = None,
                         moving_size: tuple[int, int] | None = None) -> None:
    """Raise when the slides' level-0 sizes differ from the ones the transform was made for."""
    for name, want, have in (("fixed (H&E)", transform.fixed_size, fixed_size),
                             ("moving (IHC)", transform.moving_size, moving_size)):
        if have is not None and tuple(int(v) for v in have) != tuple(want):
            raise UserInputError(
                f"the transform was made for a {name} image of {want[0]}x{want[1]} px, "
                f"this one is {have[0]}x{have[1]}",
                hint="register this pair again (her2-qupath register)",
            )


# -- points CSV -----------------------------------------------------------------
def read_points_csv(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Header, rows (as text) and the ``(N, 2)`` X, Y values of a points CSV."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"points file {path} not found", hint="check the path")
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if r]
    if not rows:
        raise UserInputError(f"points file {path} is empty", hint="it needs a header with X and Y")
    header = [h.strip() for h in rows[0]]
    try:
        ix, iy = header.index("X"), header.index("Y")
    except ValueError as err:
        raise UserInputError(f"points file {path} has columns {header}, not X and Y",
                             hint="name the coordinate columns X and Y (QuPath's and ANHIR's convention)") from err
    body = rows[1:]
    try:
        xy = np.array([[float(r[ix]), float(r[iy])] for r in body], dtype=np.float64).reshape(-1, 2)
    except (ValueError, IndexError) as err:
        raise UserInputError(f"points file {path} has a row without numeric X and Y: {err}",
                             hint="every row needs numbers in the X and Y columns") from err
    return header, body, xy


def _fmt(v: float) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".") if np.isfinite(v) else "NaN"


def write_points_csv(path: str | os.PathLike[str], header: list[str], rows: list[list[str]],
                     xy: np.ndarray) -> Path:
    """Write rows back with their X, Y replaced (other columns kept), atomically."""
    ix, iy = header.index("X"), header.index("Y")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row, (x, y) in zip(rows, xy, strict=True):
        row = list(row)
        row[ix], row[iy] = _fmt(float(x)), _fmt(float(y))
        writer.writerow(row)
    return atomic_write_text(path, out.getvalue())


def warp_points_csv(transform: Transform, src: str | os.PathLike[str], dst: str | os.PathLike[str],
                    *, inverse: bool = False) -> int:
    header, rows, xy = read_points_csv(src)
    mapped = transform.apply_inverse(xy) if inverse else transform.apply(xy)
    write_points_csv(dst, header, rows, mapped)
    return len(rows)


# -- GeoJSON --------------------------------------------------------------------------
def _warp_geometry_dict(transform: Transform, geom: dict[str, Any], inverse: bool) -> dict[str, Any]:
    import shapely.geometry

    if geom.get("type") == "GeometryCollection":
        out = dict(geom)
        out["geometries"] = [_warp_geometry_dict(transform, g, inverse) for g in geom.get("geometries", [])]
        return out
    try:
        shp = shapely.geometry.shape(geom)
    except (shapely.errors.ShapelyError, ValueError, TypeError, LookupError, AttributeError) as err:
        raise GeoJSONError(f"cannot read a {geom.get('type')!r} geometry: {err}",
                           hint="export the objects from QuPath as GeoJSON") from err
    warped = warp_geometry(transform, shp, inverse=inverse)
    out = dict(geom)  # keep foreign members
    mapped = shapely.geometry.mapping(warped)
    out["type"] = mapped["type"]
    out["coordinates"] = _round(mapped["coordinates"])
    return out


def _round(coords: Any) -> Any:
    if isinstance(coords, (list, tuple)):
        if coords and isinstance(coords[0], (int, float)):
            return [round(float(c), 4) for c in coords]
        return [_round(c) for c in coords]
    return coords


def _warp_feature(transform: Transform, feat: dict[str, Any], inverse: bool) -> dict[str, Any]:
    out = copy.copy(feat)
    for key in GEOMETRY_MEMBERS:
        g = feat.get(key)
        if isinstance(g, dict):
            out[key] = _warp_geometry_dict(transform, g, inverse)
    return out


def _check_polygons(data: Any) -> None:
    """Refuse polygons that are not valid (self-intersections ...) as ``score`` does: a warped
    broken outline would only fail later, on the other slide."""
    import shapely
    import shapely.geometry

    feats = data if isinstance(data, list) else (
        data.get("features", []) if data.get("type") == "FeatureCollection" else [data])
    for i, f in enumerate(feats):
        geom = f.get("geometry") if isinstance(f, dict) else None
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            shp = shapely.geometry.shape(geom)
        except (ValueError, TypeError, AttributeError, IndexError) as err:
            raise GeoJSONError(f"feature {i}: cannot read its {geom.get('type')}: {err}",
                               hint="export the objects from QuPath as GeoJSON") from err
        if not shp.is_valid:
            raise GeoJSONError(f"feature {i}: the {geom['type']} is not valid "
                               f"({shapely.is_valid_reason(shp)})",
                               hint="fix the outline in QuPath (no self-intersections) and export it again")


def warp_geojson(transform: Transform, data: Any, *, inverse: bool = False) -> Any:
    """Transform every geometry in GeoJSON data (FeatureCollection, Feature, list or geometry).

    Properties and every other member are kept unchanged, as is the structure.
    """
    if isinstance(data, list):
        _check_polygons(data)
        return [warp_geojson(transform, d, inverse=inverse) for d in data]
    if not isinstance(data, dict) or "type" not in data:
        raise GeoJSONError("input is not GeoJSON (no \"type\" member)",
                           hint="give a FeatureCollection, a Feature, a list of Features or a geometry")
    kind = data["type"]
    if kind in ("FeatureCollection", "Feature"):
        _check_polygons(data)  # as `score` reads regions: a self-intersecting polygon is refused
    if kind == "FeatureCollection":
        out = dict(data)
        out["features"] = [_warp_feature(transform, f, inverse) for f in data.get("features", [])]
        return out
    if kind == "Feature":
        return _warp_feature(transform, data, inverse)
    return _warp_geometry_dict(transform, data, inverse)
