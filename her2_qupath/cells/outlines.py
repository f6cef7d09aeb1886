"""Outlines of labelled cells and nuclei in QuPath pixel coordinates, as arrays.

An :class:`Outlines` holds polygons in shapely's "ragged" layout (vertices,
ring offsets, polygon offsets) and reads as a sequence of shapely polygons,
made only when one is asked for. :func:`label_outlines` traces, simplifies and
checks every label's outline in compiled loops (:mod:`._compiled_outlines`)
and leaves the rare outline those cannot vouch for to scikit-image and GEOS.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from shapely.geometry import Polygon

__all__ = ["Outlines", "label_outlines", "label_polygons"]


@dataclass(frozen=True, eq=False)
class Outlines:
    """Polygons in shapely's ragged layout: vertices, ring offsets, polygon offsets.

    Polygon ``i`` has rings ``polys[i]:polys[i + 1]``; ring ``r`` has vertices
    ``rings[r]:rings[r + 1]`` of ``coords`` (``(k, 2)`` float64 ``x, y``).
    ``valid[i]`` (when given) marks polygons known to be valid: one simple ring
    (checked exactly when traced). A simple ring stays simple under the maps
    :meth:`moved` applies (its vertices lie on a half-pixel grid, far from
    touching anything but their neighbours compared with any rounding), so
    the mark carries over. Indexing gives shapely polygons (made once, on
    first use).
    """

    coords: np.ndarray
    rings: np.ndarray
    polys: np.ndarray
    valid: np.ndarray | None = None

    @classmethod
    def from_polygons(cls, polygons: Any) -> Outlines:
        if isinstance(polygons, Outlines):
            return polygons
        import shapely

        geoms = np.asarray(list(polygons), dtype=object)
        if geoms.size == 0:
            return cls.empty()
        kind, coords, (rings, polys) = shapely.to_ragged_array(geoms)
        if kind != shapely.GeometryType.POLYGON:  # pragma: no cover - outlines are polygons
            raise TypeError(f"cell outlines must be polygons, got {kind!r}")
        return cls(np.ascontiguousarray(coords, dtype=np.float64), rings.astype(np.int64),
                   polys.astype(np.int64))

    @classmethod
    def empty(cls) -> Outlines:
        return cls(np.zeros((0, 2)), np.zeros(1, np.int64), np.zeros(1, np.int64),
                   np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.polys) - 1

    def __getitem__(self, i: int) -> Any:
        return self._geometries[i]

    def __iter__(self) -> Any:
        return iter(self._geometries)

    @functools.cached_property
    def _geometries(self) -> np.ndarray:
        return self.geometries()

    def take(self, idx: np.ndarray) -> Outlines:
        """The polygons ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return Outlines.empty()
        n_rings = self.polys[idx + 1] - self.polys[idx]
        ring_ids = _ranges(self.polys[idx], n_rings)
        n_verts = self.rings[ring_ids + 1] - self.rings[ring_ids]
        vert_ids = _ranges(self.rings[ring_ids], n_verts)
        rings = np.concatenate([[0], np.cumsum(n_verts)]).astype(np.int64)
        polys = np.concatenate([[0], np.cumsum(n_rings)]).astype(np.int64)
        return Outlines(self.coords[vert_ids], rings, polys,
                        None if self.valid is None else self.valid[idx])

    def moved(self, shift: float, scale: tuple[float, float], offset: tuple[float, float]) -> Outlines:
        """``(p + shift) * scale + offset``, in that order and rounding (shapely's affinity)."""
        s = np.asarray(scale, dtype=np.float64)
        c = (self.coords + shift) * s + np.asarray(offset)
        keep = self.valid is not None and bool(np.all(np.isfinite(s) & (s != 0)))
        return Outlines(c, self.rings, self.polys, self.valid if keep else None)

    def geometries(self) -> np.ndarray:
        """The polygons as shapely objects (for checks and the rare slow path)."""
        import shapely

        if len(self) == 0:
            return np.zeros(0, dtype=object)
        return shapely.from_ragged_array(shapely.GeometryType.POLYGON, self.coords,
                                         (self.rings, self.polys))

    def is_valid(self) -> np.ndarray:
        """``shapely.is_valid`` of each polygon; those marked ``valid`` are not checked again."""
        import shapely

        known = np.zeros(len(self), dtype=bool) if self.valid is None else self.valid.copy()
        rest = np.flatnonzero(~known)
        if rest.size:
            known[rest] = shapely.is_valid(self.take(rest).geometries())
        return known

    def coordinates_json(self) -> list[str]:
        """Each polygon's GeoJSON ``coordinates`` as ``json.dumps`` writes them.

        Whole-number vertices (the cells of a tile placed on the slide) are
        written by a compiled formatter; others, by ``json.dumps`` itself.
        """
        from ._compiled_cells import polygon_json

        c = self.coords
        if len(self) == 0:
            return []
        whole = np.isfinite(c).all() and bool(np.all(np.abs(c) < 2.0**52)) and bool(
            np.all(c == np.floor(c))) and not bool(np.any(np.signbit(c) & (c == 0)))
        if not whole:
            xy = c.tolist()
            return [json.dumps([xy[self.rings[r]:self.rings[r + 1]]
                                for r in range(self.polys[i], self.polys[i + 1])],
                               allow_nan=False) for i in range(len(self))]
        buf, starts = polygon_json(c.astype(np.int64), self.rings, self.polys)
        text = buf.tobytes().decode("ascii")
        bounds = starts.tolist()
        return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def simple_ok(self) -> np.ndarray:
        """Per polygon: one ring or more, each closed with 4+ finite vertices (JSON-safe)."""
        nv = np.diff(self.rings)
        ring_ok = nv >= 4
        if ring_ok.any():
            first = self.coords[np.where(ring_ok, self.rings[:-1], 0)]
            last = self.coords[np.where(ring_ok, self.rings[1:] - 1, 0)]
            ring_ok &= (first == last).all(axis=1)
        finite = np.isfinite(self.coords).all(axis=1)
        bad_vert = np.concatenate([[0], np.cumsum(~finite)])
        ring_ok &= (bad_vert[self.rings[1:]] - bad_vert[self.rings[:-1]]) == 0
        bad_ring = np.concatenate([[0], np.cumsum(~ring_ok)])
        n_rings = np.diff(self.polys)
        ok = (n_rings >= 1) & ((bad_ring[self.polys[1:]] - bad_ring[self.polys[:-1]]) == 0)
        return ok


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each start and length."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    base = np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths)
    return base + np.arange(total, dtype=np.int64)


def _trace_crop_skimage(piece: np.ndarray, offset: tuple[float, float]) -> Polygon | None:
    """Largest marching-squares outline of a boolean crop; ``offset`` ``(x, y)`` of crop (0, 0).

    The general path (any crop, saddles included), for labels with a 2 x 2 saddle.
    """
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    crop = np.zeros((piece.shape[0] + 2, piece.shape[1] + 2), dtype=np.float32)
    crop[1:-1, 1:-1] = piece
    best: Polygon | None = None
    for contour in find_contours(crop, 0.5):
        if len(contour) < 4:
            continue
        poly = Polygon(contour[:, ::-1] + offset)
        if not poly.is_valid:
            poly = poly.buffer(0)
            if poly.geom_type != "Polygon":
                poly = max(getattr(poly, "geoms", [Polygon()]), key=lambda g: g.area)
        if best is None or poly.area > best.area:
            best = poly
    return best


def _slow_outlines(labels: np.ndarray, slow: np.ndarray, traced: list[Any], boxes: np.ndarray,
                   tolerance: float) -> Outlines:
    """Outlines of labels ``slow + 1`` by scikit-image and GEOS: ``traced[j]`` is label
    ``slow[j] + 1``'s traced ring (None: trace its crop with scikit-image)."""
    import shapely
    from shapely.geometry import box

    out = []
    for i, ring in zip(slow.tolist(), traced, strict=True):
        if ring is not None:
            out.append(shapely.polygons(ring))
            continue
        r0, r1, c0, c1 = boxes[i].tolist()
        best = _trace_crop_skimage(labels[r0:r1, c0:c1] == i + 1, (c0 - 0.5, r0 - 0.5))
        out.append(box(c0, r0, c1, r1) if best is None or best.is_empty else best)
    if tolerance > 0:
        geoms = np.array(out, dtype=object)
        simple = shapely.simplify(geoms, tolerance, preserve_topology=False)
        ok = (shapely.get_type_id(simple) == 3) & ~shapely.is_empty(simple) & shapely.is_valid(simple)
        out = [s if k else g for s, k, g in zip(simple, ok, out, strict=True)]
    return Outlines.from_polygons(out)


def label_outlines(labels: np.ndarray, n: int | None = None, *, tolerance: float = 0.5) -> Outlines:
    """Outline of each label ``1..n``: :func:`label_polygons` as :class:`Outlines`."""
    from ._compiled_outlines import FINAL, GEOS, SADDLE, outline_rings

    labels = np.ascontiguousarray(labels)
    if labels.dtype.kind not in "iu":
        labels = labels.astype(np.int64)
    if n is None:
        n = int(labels.max()) if labels.size else 0
    n = max(int(n), 0)
    if n == 0:
        return Outlines.empty()
    coords, counts, kind, boxes = outline_rings(labels, n, float(tolerance))
    starts = np.cumsum(counts) - counts
    slow = np.flatnonzero((kind == GEOS) | (kind == SADDLE))
    mine = np.flatnonzero(kind == FINAL)
    if slow.size == 0:
        rings = np.concatenate([[0], np.cumsum(counts[mine])])
        polys = np.concatenate([[0], np.cumsum(counts > 0)])
        return Outlines(coords, rings, polys, kind == FINAL)
    traced = [coords[starts[i]:starts[i] + counts[i]] if kind[i] == GEOS else None
              for i in slow.tolist()]
    other = _slow_outlines(labels, slow, traced, boxes, float(tolerance))
    # splice: the rings of both, ordered by label (stable: a polygon's rings stay in order)
    ring_label = np.concatenate([mine, np.repeat(slow, np.diff(other.polys))])
    ring_len = np.concatenate([counts[mine], np.diff(other.rings)])
    ring_start = np.concatenate([starts[mine], other.rings[:-1] + len(coords)])
    order = np.argsort(ring_label, kind="stable")
    verts = _ranges(ring_start[order], ring_len[order])
    rings = np.concatenate([[0], np.cumsum(ring_len[order])])
    polys = np.concatenate([[0], np.cumsum(np.bincount(ring_label, minlength=n))])
    return Outlines(np.concatenate([coords, other.coords])[verts], rings, polys, kind == FINAL)


def label_polygons(
    labels: np.ndarray, n: int | None = None, *, tolerance: float = 0.5
) -> list[Polygon]:
    """Outline of each label ``1..n`` as a shapely polygon in QuPath pixel coordinates.

    The contour is traced along pixel edges (marching squares at level 0.5 on
    the label's mask: the vertices of :func:`skimage.measure.find_contours`, in
    its order), simplified by Douglas-Peucker with ``tolerance`` pixels as
    shapely's ``simplify(preserve_topology=False)`` does, whose result is kept
    when it is a valid polygon. A label made of several pieces keeps its
    largest; a missing label gets an empty polygon. Tracing, simplification
    and the validity of simple rings are compiled loops; a label with two
    pixels touching only at a corner is traced by scikit-image, and a
    simplified ring that is not simple is left to GEOS.
    """
    return list(label_outlines(labels, n, tolerance=tolerance))
