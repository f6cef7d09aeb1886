"""Outlines of labelled cells and nuclei as shapely polygons in QuPath pixel coordinates."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._base import _pack

if TYPE_CHECKING:  # pragma: no cover - typing only
    from shapely.geometry import Polygon

__all__ = ["label_polygons"]


def _half_pixel_grid(mask: np.ndarray) -> np.ndarray:
    """The region inside the level-0.5 contour of ``mask``, sampled every half pixel.

    Point ``(2r, 2c)`` is pixel ``(r, c)``; a point between two pixels is in
    when either is (the contour passes through it when exactly one is); a
    point between four is in when at least two are (the contour cuts a corner
    where only one is). Without saddles, the border of this region traced
    8-connected visits exactly the vertices of the marching-squares contour
    and, between two of them, the pixel corners it crosses on a straight
    edge.
    """
    m = mask.view(np.uint8)
    rows, cols = m.shape
    grid = np.empty((2 * rows - 1, 2 * cols - 1), dtype=np.uint8)
    grid[::2, ::2] = m
    top, bottom = m[:-1], m[1:]
    grid[1::2, ::2] = top | bottom
    grid[::2, 1::2] = m[:, :-1] | m[:, 1:]
    grid[1::2, 1::2] = (top[:, :-1] + top[:, 1:] + bottom[:, :-1] + bottom[:, 1:]) >= 2
    return grid


def _rank(c: np.ndarray) -> tuple[float, int, int]:
    """Largest area first; on a tie the piece reached first in a row-major scan (as skimage)."""
    import cv2

    top = int(c[:, 0, 1].min())
    left = int(c[c[:, 0, 1] == top, 0, 0].min())
    return (-cv2.contourArea(c), top, left)


def _trace_crops(labels: np.ndarray, ids: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Marching-squares outlines (level 0.5) of the largest piece of labels ``ids``.

    ``boxes`` holds each label's bounding box ``(r0, r1, c0, c1)``; no label
    may have a saddle (two of its pixels touching only diagonally). Each
    label's mask, in its box with a false frame of one pixel, is laid out in
    one mosaic (the frames keep the pieces of two labels apart), whose
    half-pixel grid (:func:`_half_pixel_grid`) is traced with one
    ``cv2.findContours``. Returns, per label, its closed vertex list in tile
    pixel coordinates as shapely's ragged layout wants it (``coords``,
    vertex counts): the vertices that :func:`skimage.measure.find_contours`
    gives on the label's crop, in its order (same start point and
    orientation), and which labels got none.
    """
    import cv2

    from ._compiled_cells import crop_mosaic

    r0, r1, c0, c1 = boxes.T
    heights, widths = r1 - r0 + 2, c1 - c0 + 2  # the crop and its frame
    top, left, size = _pack(heights, widths, max(256, int(np.sqrt((heights * widths).sum()))))
    slot = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    slot[ids] = np.arange(len(ids))
    mosaic = crop_mosaic(np.ascontiguousarray(labels), slot, top, left, r0, c0, int(size[0]),
                         int(size[1]))
    contours, _ = cv2.findContours(_half_pixel_grid(mosaic), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    # each piece lies in one crop: the crop holding the pixel of its first grid point
    # (the last crop starting left of it on the shelf starting above it)
    pieces: list[list[np.ndarray]] = [[] for _ in ids]
    if contours:
        x, y = np.array([c[0, 0] for c in contours], dtype=np.int64).T
        shelves = np.unique(top)
        shelf = shelves[np.searchsorted(shelves, y // 2, side="right") - 1]
        wide = int(size[1]) + 1
        by_place = np.argsort(top * wide + left)
        place = (top * wide + left)[by_place]
        owner = by_place[np.searchsorted(place, shelf * wide + x // 2, side="right") - 1]
        for c, o in zip(contours, owner.tolist(), strict=True):
            pieces[o].append(c)
    chosen = [p[0] if len(p) == 1 else (min(p, key=_rank) if p else None) for p in pieces]
    found = np.array([c is not None for c in chosen], dtype=bool)
    pts_list = [c.reshape(-1, 2) for c in chosen if c is not None]
    if not pts_list:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64), found
    k_of = np.flatnonzero(found)
    lengths = np.array([len(q) for q in pts_list], dtype=np.int64)
    pts = np.concatenate(pts_list).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    seg = np.repeat(np.arange(len(lengths)), lengths)
    # skimage closes each contour at the last square it scans: start at the bottom
    # midpoint of the rightmost pixel of the bottom row (the first such point), and go
    # on to the left
    key = pts[:, 1] * (int(size[1]) * 2 + 2) + pts[:, 0]
    top_key = np.maximum.reduceat(key, starts)
    first = np.full(len(lengths), np.iinfo(np.int64).max)
    at = np.flatnonzero(key == top_key[seg])
    np.minimum.at(first, seg[at], at - starts[seg[at]])
    x0, y0 = pts[starts + first].T
    nx, ny = pts[starts + (first + 1) % lengths].T
    step = np.where((nx == x0 + 1) & (ny == y0 - 1), -1, 1)
    t = np.arange(int(lengths.sum() + len(lengths))) - np.repeat(
        np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]), lengths + 1)
    seg1 = np.repeat(np.arange(len(lengths)), lengths + 1)
    ring = pts[starts[seg1] + (first[seg1] + step[seg1] * t) % lengths[seg1]]
    keep = ((ring[:, 0] + ring[:, 1]) & 1) == 1  # edge midpoints, not pixel corners
    counts = np.bincount(seg1[keep], minlength=len(lengths))
    kk = k_of[seg1[keep]]
    # crop vertex (2 x, 2 y) is tile point (x + c0 - 0.5, y + r0 - 0.5): crop pixel
    # (r, c) is tile pixel (r0 + r - 1, c0 + c - 1), whose centre is at +0.5
    local = ring[keep] - np.stack([2 * left[kk], 2 * top[kk]], axis=1)
    coords = local / 2.0 + (np.stack([c0[kk], r0[kk]], axis=1) - 0.5)
    return coords, counts, found


def _trace_crop_skimage(piece: np.ndarray, offset: tuple[float, float]) -> Polygon | None:
    """Largest marching-squares outline of a boolean crop; ``offset`` ``(x, y)`` of crop (0, 0).

    The general path (any crop, saddles included), used where
    :func:`_trace_crops` declines (saddles).
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


def label_polygons(
    labels: np.ndarray, n: int | None = None, *, tolerance: float = 0.5
) -> list[Polygon]:
    """Outline of each label ``1..n`` as a shapely polygon in QuPath pixel coordinates.

    The contour is traced along pixel edges (marching squares at level 0.5 on
    the label's mask), simplified by Douglas-Peucker with ``tolerance``
    pixels. A label made of several pieces keeps its largest; a missing label
    gets an empty polygon.

    The labels are traced together: each in its bounding box, the boxes laid
    out in one mosaic traced with one ``cv2.findContours`` on a half-pixel
    grid (:func:`_trace_crops`), which gives the vertices of
    :func:`skimage.measure.find_contours` exactly; the rare label with two
    pixels touching only at a corner is traced by scikit-image itself.
    """
    import shapely
    from shapely.geometry import Polygon, box

    from ._compiled_cells import label_layout

    labels = np.ascontiguousarray(labels)
    if labels.dtype.kind not in "iu":
        labels = labels.astype(np.int64)
    n = int(labels.max()) if n is None else int(n)
    n = max(n, 0)
    boxes, saddle = label_layout(labels, n)  # = ndi.find_objects and the 2 x 2 saddles
    present = boxes[:, 0] >= 0
    out: list[Polygon] = [Polygon()] * n
    fast = np.flatnonzero(present & ~saddle[1:]).tolist()
    slow = np.flatnonzero(present & saddle[1:]).tolist()
    if fast:
        coords, counts, found = _trace_crops(labels, np.array(fast) + 1, boxes[fast])
        traced = [i for i, f in zip(fast, found.tolist(), strict=True) if f]
        slow += [i for i, f in zip(fast, found.tolist(), strict=True) if not f]
        if traced:
            offsets = np.concatenate([[0], np.cumsum(counts)])
            polys = shapely.from_ragged_array(
                shapely.GeometryType.POLYGON, coords, (offsets, np.arange(len(traced) + 1))
            )
            for i, poly in zip(traced, polys, strict=True):
                out[i] = poly
    for i in sorted(slow):
        r0, r1, c0, c1 = boxes[i].tolist()
        best = _trace_crop_skimage(labels[r0:r1, c0:c1] == i + 1, (c0 - 0.5, r0 - 0.5))
        out[i] = box(c0, r0, c1, r1) if best is None or best.is_empty else best
    if tolerance > 0:
        geoms = np.array(out, dtype=object)
        simple = shapely.simplify(geoms, tolerance, preserve_topology=False)
        ok = (
            (shapely.get_type_id(simple) == 3)
            & ~shapely.is_empty(simple)
            & shapely.is_valid(simple)
        )
        out = [s if k else g for s, k, g in zip(simple, ok, out, strict=True)]
    return out
