"""Outlines of labelled cells and nuclei as shapely polygons in QuPath pixel coordinates."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from shapely.geometry import Polygon

__all__ = ["label_polygons"]


def _saddle_labels(padded: np.ndarray) -> set[int]:
    """Labels of which two pixels touch only diagonally (a 2 x 2 saddle)."""
    a, b, c, d = padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
    first = (a == d) & (a != 0) & (b != a) & (c != a)
    second = (b == c) & (b != 0) & (a != b) & (d != b)
    return set(np.unique(a[first]).tolist()) | set(np.unique(b[second]).tolist())


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


def _trace_crop(mask: np.ndarray) -> np.ndarray | None:
    """Marching-squares outline (level 0.5) of the largest piece of a boolean crop.

    ``mask`` has a false border of one pixel and no saddle (two of its pixels
    touching only diagonally). Returns the closed ``(k, 2)`` int vertex list
    ``(2 x, 2 y)`` in crop pixel coordinates: the vertices that
    :func:`skimage.measure.find_contours` gives on the crop, in its order
    (same start point and orientation), or None when the crop is empty.
    """
    import cv2

    grid = _half_pixel_grid(mask)
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    if len(contours) > 1:
        # largest area; on a tie the piece reached first in a row-major scan (as skimage)
        def rank(c: np.ndarray) -> tuple[float, int, int]:
            top = int(c[:, 0, 1].min())
            left = int(c[c[:, 0, 1] == top, 0, 0].min())
            return (-cv2.contourArea(c), top, left)

        contour = min(contours, key=rank)
    else:
        contour = contours[0]
    pts = contour.reshape(-1, 2)
    k = len(pts)
    # skimage closes each contour at the last square it scans: start at the bottom
    # midpoint of the rightmost pixel of the bottom row, and go on to the left
    s = int(np.argmax(pts[:, 1] * grid.shape[1] + pts[:, 0]))
    x0, y0 = pts[s]
    nx, ny = pts[(s + 1) % k]
    step = -1 if (nx == x0 + 1 and ny == y0 - 1) else 1
    ring = pts[(s + step * np.arange(k + 1)) % k]
    return ring[((ring[:, 0] + ring[:, 1]) & 1) == 1]  # edge midpoints, not pixel corners


def _trace_crop_skimage(piece: np.ndarray, offset: tuple[float, float]) -> Polygon | None:
    """Largest marching-squares outline of a boolean crop; ``offset`` ``(x, y)`` of crop (0, 0).

    The general path (any crop, saddles included), used where
    :func:`_trace_crop` declines.
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

    Each label is traced in its bounding box with one ``cv2.findContours``
    on a half-pixel grid (:func:`_trace_crop`), which gives the vertices of
    :func:`skimage.measure.find_contours` exactly; the rare label with two
    pixels touching only at a corner is traced by scikit-image itself.
    """
    import shapely
    from scipy import ndimage as ndi
    from shapely.geometry import Polygon, box

    labels = np.asarray(labels)
    n = int(labels.max()) if n is None else int(n)
    slices = ndi.find_objects(labels, max_label=n)
    padded = np.pad(labels, 1)
    saddles = _saddle_labels(padded)
    rings: list[np.ndarray] = []
    origins: list[tuple[int, int, int]] = []
    ring_of: list[int] = []
    out: list[Polygon] = [Polygon()] * len(slices)
    for i, sl in enumerate(slices):
        if sl is None:
            continue
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        if i + 1 not in saddles:
            # padded crop pixel (r, c) is tile pixel (r0 + r - 1, c0 + c - 1)
            ring = _trace_crop(padded[r0 : r1 + 2, c0 : c1 + 2] == i + 1)
            if ring is not None:
                rings.append(ring)
                origins.append((c0, r0, len(ring)))
                ring_of.append(i)
                continue
        best = _trace_crop_skimage(labels[sl] == i + 1, (c0 - 0.5, r0 - 0.5))
        out[i] = box(c0, r0, c1, r1) if best is None or best.is_empty else best
    if rings:
        origin = np.array(origins, dtype=np.float64)
        sizes = origin[:, 2].astype(np.int64)
        # crop vertex (2 x, 2 y) is tile point (x + c0 - 0.5, y + r0 - 0.5): crop pixel
        # (r, c) is tile pixel (r0 + r - 1, c0 + c - 1), whose centre is at +0.5
        coords = np.concatenate(rings) / 2.0 + np.repeat(origin[:, :2] - 0.5, sizes, axis=0)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        polys = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, coords, (offsets, np.arange(len(rings) + 1))
        )
        for i, poly in zip(ring_of, polys, strict=True):
            out[i] = poly
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
