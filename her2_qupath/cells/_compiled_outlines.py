"""Compiled outlines of labelled cells and nuclei (package-private; numba).

Under the rules of :mod:`._compiled`: exact replacements, compiled on first
use and cached on disk, checked in ``tests/test_cells_compiled.py``. For each
label, without making any Python object:

* the marching-squares contour at level 0.5 of its largest piece, the
  vertices :func:`skimage.measure.find_contours` gives, in its order;
* its Douglas-Peucker simplification as GEOS computes it (shapely's
  ``simplify(preserve_topology=False)``: the same distance formula, the same
  comparisons, the ring's start point dropped when it lies within the
  tolerance of its neighbours' chord);
* whether the ring is simple (no two edges meet but neighbours, at their
  shared vertex), decided exactly on the half-pixel grid. A simple ring is a
  valid polygon; GEOS then keeps the simplified ring as it is. Anything else
  is left to GEOS itself (the caller's slow path).

Directions are numbered E, S, W, N (row, column steps below); the walk keeps the
label on its right (image rows pointing down), starting at the bottom edge of
the last pixel of the piece in row-major order and going west, as
scikit-image closes its contours.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._compiled import find_root, join

__all__: list[str] = []

_DR = (0, 1, 0, -1)
_DC = (1, 0, -1, 0)

#: ``kind`` of a label's outline: absent, a final ring (simple), a traced ring GEOS must
#: simplify (its simplification is not a simple ring), a label with a 2 x 2 saddle.
ABSENT, FINAL, GEOS, SADDLE = 0, 1, 2, 3


@njit(cache=True, nogil=True, inline="always")
def _grow(a: np.ndarray, need: int) -> np.ndarray:  # pragma: no cover - compiled
    if need <= a.shape[0]:
        return a
    b = np.empty((max(need, 2 * a.shape[0]),) + a.shape[1:], dtype=a.dtype)
    b[:a.shape[0]] = a
    return b


@njit(cache=True, nogil=True)
def label_runs(labels: np.ndarray, n: int) -> tuple[np.ndarray, ...]:  # pragma: no cover
    """Bounding boxes, saddles and 4-connected pieces of labels ``1..n``, from the runs of
    each row (a label's runs joined by union-find to the runs of the same label they
    touch in the row above).

    Returns ``(boxes, saddle, offsets, pieces)``: ``boxes[k - 1]`` ``(r0, r1, c0, c1)`` as
    ``scipy.ndimage.find_objects`` gives it (``r0 = -1``: absent); ``saddle[k]``, label
    ``k`` has two pixels touching only diagonally (a 2 x 2 saddle: a run ends where a run
    of the same label in the next row starts, or the other way round); label ``k``'s
    pieces in rows ``offsets[k - 1]:offsets[k]`` of ``pieces``, each ``(first, last)``,
    the row-major index (``r * cols + c``) of its first and last pixel, in the order of
    their first pixels.
    """
    h, w = labels.shape
    cap = 4096
    run_r = np.empty(cap, dtype=np.int64)
    run_s = np.empty(cap, dtype=np.int64)
    run_e = np.empty(cap, dtype=np.int64)
    run_k = np.empty(cap, dtype=np.int64)
    parent = np.empty(cap, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.int64)
    boxes[:, 0] = -1
    saddle = np.zeros(n + 1, dtype=np.bool_)
    nr = 0
    prev = 0  # the first run of the row above
    for r in range(h):
        here = nr
        j = prev
        c = 0
        while c < w:
            k = labels[r, c]
            s = c
            while c < w and labels[r, c] == k:
                c += 1
            if k < 1 or k > n:
                continue
            if nr == run_r.shape[0]:
                run_r, run_s = _grow(run_r, nr + 1), _grow(run_s, nr + 1)
                run_e, run_k = _grow(run_e, nr + 1), _grow(run_k, nr + 1)
                parent = _grow(parent, nr + 1)
            run_r[nr], run_s[nr], run_e[nr], run_k[nr], parent[nr] = r, s, c, k, nr
            box = boxes[k - 1]
            if box[0] < 0:
                box[0], box[2], box[3] = r, s, c
            box[1] = r + 1
            box[2] = min(box[2], s)
            box[3] = max(box[3], c)
            while j < here and run_e[j] < s:
                j += 1
            t = j
            while t < here and run_s[t] <= c:  # runs above that touch it, corners included
                if run_k[t] == k:
                    if run_e[t] == s or run_s[t] == c:
                        saddle[k] = True
                    else:
                        join(parent, nr, t)
                t += 1
            nr += 1
        prev = here
    count = np.zeros(n + 1, dtype=np.int64)
    first = np.full(nr, -1, dtype=np.int64)
    last = np.empty(nr, dtype=np.int64)
    for i in range(nr):
        root = find_root(parent, i)
        if root == i:
            count[run_k[i]] += 1
            first[i] = run_r[i] * w + run_s[i]
        last[root] = run_r[i] * w + run_e[i] - 1
    offsets = np.zeros(n + 1, dtype=np.int64)
    for k in range(1, n + 1):
        offsets[k] = offsets[k - 1] + count[k]
    pieces = np.empty((offsets[n], 2), dtype=np.int64)
    fill = offsets[:-1].copy()
    for i in range(nr):  # roots come in the order of their first pixels
        if first[i] >= 0:
            k = run_k[i] - 1
            pieces[fill[k], 0] = first[i]
            pieces[fill[k], 1] = last[i]
            fill[k] += 1
    return boxes, saddle, offsets, pieces


@njit(cache=True, nogil=True, inline="always")
def _inside(labels: np.ndarray, k: int, r: int, c: int) -> bool:  # pragma: no cover - compiled
    h, w = labels.shape
    return 0 <= r < h and 0 <= c < w and labels[r, c] == k


@njit(cache=True, nogil=True)
def _trace(labels: np.ndarray, k: int, start: int, ring: np.ndarray) -> tuple[np.ndarray, int]:
    """The contour of the piece whose last pixel is ``start`` (row-major index), as doubled
    coordinates ``(2x, 2y)`` of tile points (pixel ``(r, c)`` spans ``[c, c + 1]``), closed
    (the first vertex repeated); ``(ring, count)``. The piece may have no 2 x 2 saddle.
    """  # pragma: no cover - compiled
    w = labels.shape[1]
    r0, c0 = start // w, start % w
    r, c, d = r0, c0, 2  # west along the bottom edge
    m = 0
    while True:
        o = (d + 3) % 4  # outward normal: left of the walk
        ring = _grow(ring, m + 2)
        ring[m, 0] = 2 * c + 1 + _DC[o]
        ring[m, 1] = 2 * r + 1 + _DR[o]
        m += 1
        ar, ac = r + _DR[d], c + _DC[d]
        if _inside(labels, k, ar + _DR[o], ac + _DC[o]):  # turn left (inner corner)
            r, c, d = ar + _DR[o], ac + _DC[o], o
        elif _inside(labels, k, ar, ac):  # straight on
            r, c = ar, ac
        else:  # turn right (outer corner)
            d = (d + 1) % 4
        if r == r0 and c == c0 and d == 2:
            break
    ring[m, 0] = ring[0, 0]
    ring[m, 1] = ring[0, 1]
    return ring, m + 1


@njit(cache=True, nogil=True, inline="always")
def _point_distance(px: float, py: float, ax: float, ay: float) -> float:  # pragma: no cover
    dx = px - ax
    dy = py - ay
    return np.sqrt(dx * dx + dy * dy)


@njit(cache=True, nogil=True)
def segment_distance(px: float, py: float, ax: float, ay: float, bx: float,
                     by: float) -> float:  # pragma: no cover - compiled
    """GEOS's ``Distance::pointToSegment``, operation for operation."""
    if ax == bx and ay == by:
        return _point_distance(px, py, ax, ay)
    len2 = (bx - ax) * (bx - ax) + (by - ay) * (by - ay)
    r = ((px - ax) * (bx - ax) + (py - ay) * (by - ay)) / len2
    if r <= 0.0:
        return _point_distance(px, py, ax, ay)
    if r >= 1.0:
        return _point_distance(px, py, bx, by)
    s = ((ay - py) * (bx - ax) - (ax - px) * (by - ay)) / len2
    return abs(s) * np.sqrt(len2)


@njit(cache=True, nogil=True)
def simplify_ring(ring: np.ndarray, m: int, tolerance: float) -> np.ndarray:  # pragma: no cover
    """Indices into the closed ring ``ring[:m]`` (doubled coordinates) of the vertices GEOS's
    ``DouglasPeuckerSimplifier`` keeps for a polygon's shell, in its order (closed)."""
    keep = np.ones(m, dtype=np.bool_)
    stack = np.empty((m + 1, 2), dtype=np.int64)
    stack[0, 0], stack[0, 1] = 0, m - 1
    top = 1
    while top:
        top -= 1
        i, j = stack[top, 0], stack[top, 1]
        if i + 1 == j:
            continue
        ax, ay = ring[i, 0] * 0.5, ring[i, 1] * 0.5
        bx, by = ring[j, 0] * 0.5, ring[j, 1] * 0.5
        worst, at = -1.0, i
        for t in range(i + 1, j):
            dist = segment_distance(ring[t, 0] * 0.5, ring[t, 1] * 0.5, ax, ay, bx, by)
            if dist > worst:
                worst, at = dist, t
        if worst <= tolerance:
            keep[i + 1:j] = False
        else:
            stack[top, 0], stack[top, 1] = i, at
            stack[top + 1, 0], stack[top + 1, 1] = at, j
            top += 2
    kept = np.flatnonzero(keep)
    size = kept.shape[0]
    if size > 3:  # a ring's start point goes when its neighbours' chord passes close by
        # (GEOS: more than LinearRing::MINIMUM_VALID_SIZE = 3 points)
        a, b, p = kept[size - 2], kept[1], kept[0]
        if segment_distance(ring[p, 0] * 0.5, ring[p, 1] * 0.5, ring[a, 0] * 0.5,
                            ring[a, 1] * 0.5, ring[b, 0] * 0.5, ring[b, 1] * 0.5) <= tolerance:
            out = np.empty(size - 1, dtype=np.int64)
            out[:size - 2] = kept[1:size - 1]
            out[size - 2] = kept[1]
            if ring[kept[1], 0] == ring[kept[size - 2], 0] and \
                    ring[kept[1], 1] == ring[kept[size - 2], 1]:
                return out[:size - 2]  # already closed: GEOS's closeRing adds nothing
            return out
    return kept


@njit(cache=True, nogil=True, inline="always")
def _orient(ax: int, ay: int, bx: int, by: int, px: int, py: int) -> int:  # pragma: no cover
    v = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    return (v > 0) - (v < 0)


@njit(cache=True, nogil=True, inline="always")
def _on_segment(ax: int, ay: int, bx: int, by: int, px: int, py: int) -> bool:  # pragma: no cover
    """``p``, collinear with ``ab``, lies on the closed segment."""
    return min(ax, bx) <= px <= max(ax, bx) and min(ay, by) <= py <= max(ay, by)


@njit(cache=True, nogil=True)
def is_simple(ring: np.ndarray, idx: np.ndarray) -> bool:  # pragma: no cover - compiled
    """Whether the closed ring ``ring[idx]`` (integer coordinates) is simple: at least three
    distinct vertices, no edge meeting another but its two neighbours, and those only at
    the shared vertex. Exact (integer orientation tests)."""
    m = idx.shape[0]
    e = m - 1  # edges
    if e < 3 or ring[idx[0], 0] != ring[idx[m - 1], 0] or ring[idx[0], 1] != ring[idx[m - 1], 1]:
        return False
    for i in range(e):
        ax, ay = ring[idx[i], 0], ring[idx[i], 1]
        bx, by = ring[idx[i + 1], 0], ring[idx[i + 1], 1]
        if ax == bx and ay == by:
            return False
        for j in range(i + 1, e):
            cx, cy = ring[idx[j], 0], ring[idx[j], 1]
            dx, dy = ring[idx[j + 1], 0], ring[idx[j + 1], 1]
            if max(ax, bx) < min(cx, dx) or max(cx, dx) < min(ax, bx) or \
                    max(ay, by) < min(cy, dy) or max(cy, dy) < min(ay, by):
                continue
            if j == i + 1 or (i == 0 and j == e - 1):  # neighbours: only the shared vertex
                if j == i + 1:
                    vx, vy, ux, uy, wx, wy = bx, by, ax, ay, dx, dy
                else:
                    vx, vy, ux, uy, wx, wy = ax, ay, bx, by, cx, cy
                if _orient(vx, vy, ux, uy, wx, wy) == 0 and \
                        (ux - vx) * (wx - vx) + (uy - vy) * (wy - vy) > 0:
                    return False
                continue
            o1 = _orient(ax, ay, bx, by, cx, cy)
            o2 = _orient(ax, ay, bx, by, dx, dy)
            o3 = _orient(cx, cy, dx, dy, ax, ay)
            o4 = _orient(cx, cy, dx, dy, bx, by)
            if o1 * o2 < 0 and o3 * o4 < 0:
                return False
            if (o1 == 0 and _on_segment(ax, ay, bx, by, cx, cy)) or \
                    (o2 == 0 and _on_segment(ax, ay, bx, by, dx, dy)) or \
                    (o3 == 0 and _on_segment(cx, cy, dx, dy, ax, ay)) or \
                    (o4 == 0 and _on_segment(cx, cy, dx, dy, bx, by)):
                return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _area2(ring: np.ndarray, m: int) -> int:  # pragma: no cover - compiled
    """Twice the signed area of the closed ring ``ring[:m]`` (in its units squared)."""
    a = 0
    for i in range(m - 1):
        a += ring[i, 0] * ring[i + 1, 1] - ring[i + 1, 0] * ring[i, 1]
    return a


@njit(cache=True, nogil=True)
def outline_rings(labels: np.ndarray, n: int,
                  tolerance: float) -> tuple[np.ndarray, ...]:  # pragma: no cover - compiled
    """The outline of each label ``1..n``.

    Returns ``(coords, counts, kind, boxes)``: ``coords`` ``(total, 2)`` float64 ``(x, y)`` of
    the rings in label order, ``counts[k - 1]`` the vertices of label ``k``'s ring (0 for
    none), ``kind[k - 1]`` one of :data:`ABSENT`, :data:`FINAL` (simplified by
    ``tolerance`` unless it is 0, and simple), :data:`GEOS` (the traced ring, whose
    simplification GEOS must make) or :data:`SADDLE` (not traced), and the labels'
    bounding boxes (:func:`label_runs`).
    """
    boxes, saddle, offsets, pieces = label_runs(labels, n)
    counts = np.zeros(n, dtype=np.int64)
    kind = np.zeros(n, dtype=np.int8)
    coords = np.empty((4096, 2), dtype=np.float64)
    ring = np.empty((256, 2), dtype=np.int64)
    best_ring = np.empty((256, 2), dtype=np.int64)
    total = 0
    for k in range(1, n + 1):
        p0, p1 = offsets[k - 1], offsets[k]
        if p0 == p1:
            continue
        if saddle[k]:
            kind[k - 1] = SADDLE
            continue
        ring, m = _trace(labels, k, pieces[p0, 1], ring)
        if p1 - p0 > 1:  # the largest piece; of equal ones the first in row-major order
            best_area = abs(_area2(ring, m))
            best_ring = _grow(best_ring, m)
            best_ring[:m] = ring[:m]
            best_m = m
            for q in range(p0 + 1, p1):
                ring, m = _trace(labels, k, pieces[q, 1], ring)
                area = abs(_area2(ring, m))
                if area > best_area:
                    best_area, best_m = area, m
                    best_ring = _grow(best_ring, m)
                    best_ring[:m] = ring[:m]
            ring, best_ring = best_ring, ring
            m = best_m
        if tolerance > 0:
            idx = simplify_ring(ring, m, tolerance)
        else:
            idx = np.arange(m)
        if is_simple(ring, idx):  # (at least 4 points, closed)
            kind[k - 1] = FINAL
        else:
            kind[k - 1] = GEOS
            idx = np.arange(m)
        size = idx.shape[0]
        coords = _grow(coords, total + size)
        for t in range(size):
            coords[total + t, 0] = ring[idx[t], 0] * 0.5
            coords[total + t, 1] = ring[idx[t], 1] * 0.5
        counts[k - 1] = size
        total += size
    return coords[:total], counts, kind, boxes
