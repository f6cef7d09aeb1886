"""The mapping ``I``: H&E tiles, points and geometries carried into the IHC slide.

``map_tile`` gives an H&E tile's outline in IHC level-0 coordinates;
``read_mapped_tile`` reads that (rotated, possibly deformed) region from the
IHC slide and resamples it to an upright ``f × f`` tile, pixel for pixel the
partner of the H&E tile. Because the transform is one-to-one, every H&E tile
has exactly one IHC partner and distinct H&E tiles get distinct partners (the
paper's bijection ``I(p_ij^HE) = p_ij^IHC``, eq. 4).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import UserInputError
from .transform import Transform

__all__ = ["map_tile", "read_mapped_tile", "warp_geometry", "tile_sample_grid"]

log = logging.getLogger(__name__)


def _densify_length(transform: Transform) -> float | None:
    """Longest edge (fixed level-0 px) that stays straight enough under the field."""
    if transform.field is None:
        return None
    return max(1.0, 0.25 * min(transform.field.spacing))


def _segmentize(geom: Any, length: float) -> Any:
    """Subdivide edges, keeping the geometry type (GEOS turns one-part multis into singles)."""
    import shapely
    from shapely.geometry import GeometryCollection, MultiLineString, MultiPoint, MultiPolygon

    kinds = {"MultiPolygon": MultiPolygon, "MultiLineString": MultiLineString,
             "MultiPoint": MultiPoint, "GeometryCollection": GeometryCollection}
    if geom.geom_type in kinds:
        parts = [_segmentize(p, length) for p in shapely.get_parts(geom)]
        return kinds[geom.geom_type](parts)
    return shapely.segmentize(geom, max_segment_length=length)


def warp_geometry(transform: Transform, geom: Any, *, inverse: bool = False) -> Any:
    """Map any shapely geometry fixed → moving (or moving → fixed with ``inverse``).

    Works for every geometry type (points, lines, polygons with holes, multi-parts,
    collections). Under a non-rigid field, edges are first subdivided (a quarter of
    the field's grid spacing) so straight edges follow the deformation.
    """
    import shapely

    if not isinstance(geom, shapely.Geometry):
        raise UserInputError(f"expected a shapely geometry, got {type(geom).__name__}",
                             hint="convert GeoJSON with shapely.geometry.shape")
    if geom.is_empty:
        return geom
    seg = _densify_length(transform)
    if seg is not None:
        # densify in the source space: under inverse that is moving space, scaled accordingly
        length = seg * (transform.scale if inverse else 1.0)
        geom = _segmentize(geom, length)
    func = transform.apply_inverse if inverse else transform.apply
    return shapely.transform(geom, lambda xy: func(xy))


def map_tile(transform: Transform, tile: Any) -> Any:
    """The tile's outline (``tile.polygon`` or its level-0 box) in moving level-0 coordinates."""
    from shapely.geometry import box

    poly = getattr(tile, "polygon", None)
    if poly is None:
        poly = box(tile.x, tile.y, tile.x + tile.width, tile.y + tile.height)
    return warp_geometry(transform, poly)


def tile_sample_grid(transform: Transform, tile: Any) -> tuple[np.ndarray, np.ndarray]:
    """Moving level-0 coordinates ``(X, Y)`` of the centres of the ``f × f`` output pixels."""
    f = int(tile.size)
    sx = tile.width / f
    sy = tile.height / f
    jj = tile.x + (np.arange(f) + 0.5) * sx - 0.5
    ii = tile.y + (np.arange(f) + 0.5) * sy - 0.5
    xs, ys = np.meshgrid(jj, ii)
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1)
    mp = transform.apply(pts)
    return mp[:, 0].reshape(f, f), mp[:, 1].reshape(f, f)


def _read_box(slide: Any, x0: int, y0: int, x1: int, y1: int, downsample: float,
              transform: Transform) -> tuple[np.ndarray, float, float]:
    """RGB covering the level-0 box at about ``downsample``.

    Returns the image and its exact scale (level-0 pixels per image pixel in x
    and y); the image's top-left pixel starts at level-0 ``(x0, y0)``.
    """
    import cv2

    w0, h0 = max(1, x1 - x0), max(1, y1 - y0)
    ds = max(1.0, downsample)
    out_w, out_h = max(1, int(np.ceil(w0 / ds))), max(1, int(np.ceil(h0 / ds)))
    if isinstance(slide, np.ndarray):
        H, W = slide.shape[:2]
        canvas = np.full((h0, w0, 3), 255, np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if sx1 > sx0 and sy1 > sy0:
            canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = slide[sy0:sy1, sx0:sx1, :3]
        if ds == 1.0:
            return canvas, 1.0, 1.0
        img = cv2.resize(canvas, (out_w, out_h), interpolation=cv2.INTER_AREA)
        return img, w0 / out_w, h0 / out_h
    mpp = getattr(slide, "mpp_or_none", None) or transform.moving_mpp
    if mpp is not None and hasattr(slide, "read_region_mpp"):
        # read_region_mpp covers size * (requested mpp / slide mpp) level-0 pixels
        img = np.asarray(slide.read_region_mpp((x0, y0), (out_w, out_h), mpp * ds))[..., :3]
        return np.ascontiguousarray(img).astype(np.uint8, copy=False), ds, ds
    level = slide.best_level_for_downsample(ds) if hasattr(slide, "best_level_for_downsample") else 0
    lds = float(slide.level_downsamples[level]) if hasattr(slide, "level_downsamples") else 1.0
    size = (max(1, int(np.ceil(w0 / lds))), max(1, int(np.ceil(h0 / lds))))
    img = np.asarray(slide.read_region((x0, y0), level, size))[..., :3]
    return np.ascontiguousarray(img).astype(np.uint8, copy=False), lds, lds


def read_mapped_tile(slide: Any, transform: Transform, tile: Any) -> np.ndarray:
    """The IHC partner of an H&E tile: an upright ``(f, f, 3)`` uint8 image.

    Reads the bounding box of the mapped tile from the moving slide (a slide
    object or an RGB array taken as level 0) at the tile's resolution and
    resamples it through the transform (bilinear; glass-white outside the slide).
    """
    import cv2

    f = int(tile.size)
    mx, my = tile_sample_grid(transform, tile)
    # level-0 moving pixels per output pixel: the tile's own pixel size times the transform's scale
    ds = max(1.0, (tile.width / f) * transform.scale)
    pad = int(np.ceil(2 * ds)) + 1
    x0, y0 = int(np.floor(mx.min())) - pad, int(np.floor(my.min())) - pad
    x1, y1 = int(np.ceil(mx.max())) + pad + 1, int(np.ceil(my.max())) + pad + 1
    img, sx, sy = _read_box(slide, x0, y0, x1, y1, ds, transform)
    # level-0 x = x0 + s * (u + 0.5) - 0.5  =>  u = (x - x0 + 0.5) / s - 0.5
    u = ((mx - x0 + 0.5) / sx - 0.5).astype(np.float32)
    v = ((my - y0 + 0.5) / sy - 0.5).astype(np.float32)
    return cv2.remap(img, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=(255, 255, 255))
