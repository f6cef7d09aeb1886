"""The tile grid ``P_R(S)`` of a slide.

Tiles are ``f x f`` pixels at a working pixel size ``mpp`` (defaults 512 px at
0.5 um/px, the paper's setting). At level 0 of a slide with pixel size
``slide_mpp`` a tile spans ``f' = f * mpp / slide_mpp`` pixels, and with an
overlap of ``o`` working pixels neighbouring tiles start ``s' = (f - o) * mpp /
slide_mpp`` level-0 pixels apart. For a slide of ``W x H`` level-0 pixels the
grid has

    C = max(1, ceil((W - f') / s') + 1)   columns,   R = max(1, ceil((H - f') / s') + 1)   rows

which without overlap is the paper's ``C = ceil(W / f')`` and ``R = ceil(H / f')``.
Tile ``(i, j)`` is row ``i``, column ``j`` and covers the level-0 box
``[j s', j s' + f') x [i s', i s' + f')``. Tiles on the right and bottom edges
reach past the image; they keep their full box (and polygon) and are padded
with white when read; ``Tile.image_fraction`` records how much of the box lies
inside the image.

Tiles can be restricted to tissue (``TilingConfig.min_tissue_fraction`` of the
box, measured on a :class:`~her2_qupath.tissue.TissueMask`) and to regions of
interest given as shapely geometries (``min_roi_overlap`` of the box inside
one region; a tile that overlaps several regions belongs to the one it
overlaps most, recorded in ``Tile.roi_index``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import TilingConfig
from .errors import UserInputError

__all__ = ["Tile", "TileGrid", "tile_grid", "grid_shape", "read_tile", "tile_mask"]

logger = logging.getLogger(__name__)

_EPS = 1e-9
_DEFAULT_TILING = TilingConfig()  # frozen: safe to share as a default


@dataclass(frozen=True)
class Tile:
    """One tile ``p_ij``: row ``i``, column ``j``; its box in level-0 pixels.

    ``x, y, width, height`` are level-0 pixels (floats: a tile at 0.5 um/px on a
    0.499 um/px slide spans 513.03 level-0 pixels). ``size`` is the tile edge in
    pixels at the working pixel size ``mpp``.
    """

    row: int
    col: int
    x: float
    y: float
    width: float
    height: float
    size: int
    mpp: float
    tissue_fraction: float | None = None  # None when no tissue mask was given
    roi_index: int | None = None  # index into the ROIs given to tile_grid, None without ROIs
    image_fraction: float = 1.0  # fraction of the box inside the image (< 1 on edges)
    roi_fraction: float | None = None  # fraction of the box inside its ROI

    @property
    def index(self) -> tuple[int, int]:
        return (self.row, self.col)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(x, y, width, height)`` in level-0 pixels."""
        return (self.x, self.y, self.width, self.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in level-0 pixels (shapely's order)."""
        return (self.x, self.y, self.x + self.width, self.y + self.height)

    @property
    def polygon(self) -> Any:
        """The full tile box as a shapely polygon in level-0 coordinates."""
        from shapely.geometry import box

        return box(*self.bounds)

    @property
    def location(self) -> tuple[int, int]:
        """Integer level-0 top-left corner, for reading."""
        return (int(math.floor(self.x + 0.5)), int(math.floor(self.y + 0.5)))


@dataclass(frozen=True)
class TileGrid:
    """The tiles of ``P_R(S)`` that survived the tissue and ROI filters."""

    tiles: tuple[Tile, ...]
    n_rows: int
    n_cols: int
    tile_size: int
    mpp: float
    stride: int  # pixels at the working mpp between tile origins (tile_size - overlap)
    dimensions: tuple[int, int]  # level-0 (width, height)
    slide_mpp: float = 0.0
    n_rois: int = 0
    _lookup: dict[tuple[int, int], int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._lookup:
            self._lookup.update({(t.row, t.col): k for k, t in enumerate(self.tiles)})

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def __getitem__(self, k: int) -> Tile:
        return self.tiles[k]

    @property
    def n_total(self) -> int:
        """Tiles in the full grid before filtering (``R * C``)."""
        return self.n_rows * self.n_cols

    @property
    def level0_tile_size(self) -> float:
        """``f'``: the tile edge in level-0 pixels."""
        return self.tile_size * self.mpp / self.slide_mpp if self.slide_mpp else float("nan")

    @property
    def level0_stride(self) -> float:
        return self.stride * self.mpp / self.slide_mpp if self.slide_mpp else float("nan")

    def by_index(self, i: int, j: int) -> Tile:
        """Tile at row ``i``, column ``j``; KeyError if filtered out or outside the grid."""
        try:
            return self.tiles[self._lookup[(i, j)]]
        except KeyError:
            raise KeyError(
                f"no tile at row {i}, column {j} (grid {self.n_rows}x{self.n_cols}, "
                f"{len(self.tiles)} tiles kept after the tissue/ROI filters)"
            ) from None

    def __contains__(self, index: object) -> bool:
        return index in self._lookup

    def boxes(self) -> np.ndarray:
        """``(n, 4)`` array of ``(x, y, width, height)`` in level-0 pixels."""
        if not self.tiles:
            return np.zeros((0, 4))
        return np.array([t.box for t in self.tiles], dtype=np.float64)

    def polygons(self) -> np.ndarray:
        """The tile polygons as a numpy array of shapely geometries."""
        import shapely

        b = self.boxes()
        return shapely.box(b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3])


def grid_shape(
    dimensions: tuple[int, int], level0_size: float, level0_stride: float
) -> tuple[int, int]:
    """``(R, C)``: rows and columns so that the tiles cover a ``W x H`` image."""
    width, height = dimensions

    def count(extent: float) -> int:
        if extent <= level0_size:
            return 1
        return int(math.ceil((extent - level0_size) / level0_stride - _EPS)) + 1

    return count(height), count(width)


def _check(config: TilingConfig, dimensions: tuple[int, int], slide_mpp: float) -> None:
    if config.tile_size < 1:
        raise UserInputError(f"tile size must be >= 1 pixel, got {config.tile_size}")
    if not 0 <= config.overlap < config.tile_size:
        raise UserInputError(
            f"overlap must be in [0, tile size), got {config.overlap} for tile size {config.tile_size}",
            hint="use an overlap smaller than the tile size",
        )
    if not (config.mpp > 0 and math.isfinite(config.mpp)):
        raise UserInputError(f"working pixel size must be > 0 um/px, got {config.mpp}")
    if not (slide_mpp and slide_mpp > 0 and math.isfinite(slide_mpp)):
        raise UserInputError(
            f"slide pixel size must be > 0 um/px, got {slide_mpp}",
            hint="pass --mpp for images that carry no pixel size",
        )
    width, height = dimensions
    if width < 1 or height < 1:
        raise UserInputError(f"slide dimensions must be positive, got {dimensions}")


def _roi_overlap(
    polys: np.ndarray, areas: np.ndarray, rois: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """For every tile, the ROI it overlaps most and the overlapping fraction of its box."""
    import shapely

    best_frac = np.zeros(len(polys))
    best_idx = np.full(len(polys), -1, dtype=np.int64)
    if len(polys) == 0:
        return best_frac, best_idx
    tree = shapely.STRtree(polys)
    for k, roi in enumerate(rois):
        if roi is None or roi.is_empty:
            continue
        if not roi.is_valid:
            logger.warning("ROI %d is not valid (%s); repaired", k, shapely.is_valid_reason(roi))
            roi = shapely.make_valid(roi)
        if roi.area <= 0:
            logger.warning("ROI %d has no area (a %s); it selects no tiles", k, roi.geom_type)
            continue
        shapely.prepare(roi)
        idx = tree.query(roi, predicate="intersects")
        if len(idx) == 0:
            logger.warning("ROI %d lies outside the tile grid", k)
            continue
        frac = np.ones(len(idx))
        inside = shapely.contains(roi, polys[idx])
        partial = ~inside
        if partial.any():
            inter = shapely.intersection(polys[idx[partial]], roi)
            frac[partial] = shapely.area(inter) / areas[idx[partial]]
        better = frac > best_frac[idx]
        best_frac[idx[better]] = frac[better]
        best_idx[idx[better]] = k
    return best_frac, best_idx


def tile_grid(
    dimensions: tuple[int, int],
    slide_mpp: float,
    config: TilingConfig = _DEFAULT_TILING,
    *,
    tissue: Any = None,
    rois: Sequence[Any] | None = None,
) -> TileGrid:
    """Build the tile grid ``P_R(S)`` over a ``(width, height)`` level-0 slide.

    ``tissue``: a :class:`~her2_qupath.tissue.TissueMask`; tiles whose box is less
    than ``config.min_tissue_fraction`` tissue are dropped.
    ``rois``: shapely geometries in level-0 coordinates; tiles with less than
    ``config.min_roi_overlap`` of their box inside their best ROI are dropped.
    Without either filter every tile of the ``R x C`` grid is kept.
    """
    import shapely

    dimensions = (int(dimensions[0]), int(dimensions[1]))
    _check(config, dimensions, slide_mpp)
    scale = config.mpp / slide_mpp
    size0 = config.tile_size * scale
    stride_px = config.tile_size - config.overlap
    stride0 = stride_px * scale
    n_rows, n_cols = grid_shape(dimensions, size0, stride0)
    width, height = dimensions

    rows, cols = np.divmod(np.arange(n_rows * n_cols, dtype=np.int64), n_cols)
    x = cols * stride0
    y = rows * stride0
    area = size0 * size0
    image_frac = (np.minimum(x + size0, width) - x) * (np.minimum(y + size0, height) - y) / area
    keep = np.ones(len(rows), dtype=bool)

    tissue_frac = None
    if tissue is not None:
        boxes = np.stack([x, y, np.full_like(x, size0), np.full_like(y, size0)], axis=1)
        tissue_frac = tissue.fractions_in(boxes)
        keep &= tissue_frac >= config.min_tissue_fraction - _EPS

    roi_idx = roi_frac = None
    if rois is not None:
        rois = list(rois)
        for k, roi in enumerate(rois):
            if roi is not None and not hasattr(roi, "geom_type"):
                raise UserInputError(
                    f"ROI {k} is a {type(roi).__name__}, not a shapely geometry",
                    hint="pass geometries, e.g. [g for g, _name in rois_from_objects(objects)]",
                )
        # only tiles that passed the tissue filter need the geometry work
        cand = np.flatnonzero(keep)
        polys = shapely.box(x[cand], y[cand], x[cand] + size0, y[cand] + size0)
        frac_c, idx_c = _roi_overlap(polys, np.full(len(cand), area), rois)
        roi_frac = np.zeros(len(rows))
        roi_idx = np.full(len(rows), -1, dtype=np.int64)
        roi_frac[cand] = frac_c
        roi_idx[cand] = idx_c
        keep &= (roi_idx >= 0) & (roi_frac >= config.min_roi_overlap - _EPS)
        for k in range(len(rois)):
            if not np.any(keep & (roi_idx == k)):
                logger.warning(
                    "ROI %d selects no tile: no tile has >= %.0f %% of its area inside it "
                    "(lower min_roi_overlap or the tile size for small regions)",
                    k,
                    100 * config.min_roi_overlap,
                )

    sel = np.flatnonzero(keep)
    xs, ys, fr = x[sel].tolist(), y[sel].tolist(), image_frac[sel].tolist()
    rs, cs = rows[sel].tolist(), cols[sel].tolist()
    tf = tissue_frac[sel].tolist() if tissue_frac is not None else [None] * len(sel)
    ri = roi_idx[sel].tolist() if roi_idx is not None else [None] * len(sel)
    rf = roi_frac[sel].tolist() if roi_frac is not None else [None] * len(sel)
    f, mpp = int(config.tile_size), float(config.mpp)
    tiles = tuple(
        Tile(r, c, xx, yy, size0, size0, f, mpp, t, k, imf, rfr)
        for r, c, xx, yy, t, k, imf, rfr in zip(rs, cs, xs, ys, tf, ri, fr, rf, strict=True)
    )
    logger.info(
        "tile grid %dx%d (%d tiles of %d px at %.3g um/px = %.1f level-0 px); kept %d",
        n_rows,
        n_cols,
        n_rows * n_cols,
        f,
        mpp,
        size0,
        len(tiles),
    )
    return TileGrid(
        tiles=tiles,
        n_rows=n_rows,
        n_cols=n_cols,
        tile_size=f,
        mpp=mpp,
        stride=stride_px,
        dimensions=dimensions,
        slide_mpp=float(slide_mpp),
        n_rois=0 if rois is None else len(rois),
    )


def read_tile(slide: Any, tile: Tile) -> np.ndarray:
    """Pixels of ``tile`` at its working pixel size: ``(size, size, 3)`` uint8 RGB.

    Delegates to ``slide.read_region_mpp``, which pads with white outside the image.
    """
    region = slide.read_region_mpp(tile.location, (tile.size, tile.size), tile.mpp)
    region = np.asarray(region)
    if region.shape[:2] != (tile.size, tile.size):
        raise UserInputError(
            f"slide returned a {region.shape[1]}x{region.shape[0]} region for a "
            f"{tile.size}x{tile.size} tile at ({tile.row}, {tile.col})",
            hint="the slide reader must return exactly the requested size",
        )
    return region[..., :3]


def tile_mask(geometry: Any, tile: Tile) -> np.ndarray:
    """Which pixels of ``tile`` (``(size, size)`` bool, at its working MPP) lie inside ``geometry``.

    ``geometry`` is a shapely (Multi)Polygon in the same level-0 frame as the tile;
    holes are honoured. A pixel counts when its centre lies inside.
    """
    import cv2
    from shapely.geometry import box

    f = tile.size
    sx = f / tile.width
    sy = f / tile.height
    clipped = geometry.intersection(box(*tile.bounds))
    mask = np.zeros((f, f), dtype=np.uint8)
    if clipped.is_empty:
        return mask.astype(bool)
    polys = [clipped] if clipped.geom_type == "Polygon" else [
        g for g in getattr(clipped, "geoms", []) if g.geom_type == "Polygon"]

    def ring(coords: Any) -> np.ndarray:
        xy = np.asarray(coords, dtype=np.float64)[:, :2]
        px = np.empty_like(xy)
        px[:, 0] = (xy[:, 0] - tile.x) * sx - 0.5
        px[:, 1] = (xy[:, 1] - tile.y) * sy - 0.5
        return np.round(px * 16).astype(np.int32)  # 4 fractional bits for sub-pixel edges

    for poly in polys:
        cv2.fillPoly(mask, [ring(poly.exterior.coords)], 1, lineType=cv2.LINE_8, shift=4)
        for hole in poly.interiors:
            cv2.fillPoly(mask, [ring(hole.coords)], 0, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)
