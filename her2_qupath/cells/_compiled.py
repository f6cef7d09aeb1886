"""Compiled inner loops of nucleus detection (package-private; numba, compiled on first use).

Each kernel is a plain loop over pixels that NumPy cannot express without
sorting or scanning the whole tile; each is an exact replacement for a library
routine (named in its docstring) and is checked against it in
``tests/test_cells_compiled.py``. Compiled code is cached on disk next to this
file (or in numba's cache directory where that is read-only), so only the first
run on a machine pays the compilation, about a second per kernel.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

__all__: list[str] = []

_NEIGHBOURS_8 = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)],
                         dtype=np.int64)


@njit(cache=True, nogil=True)
def reach_above(
    image: np.ndarray, marker: np.ndarray, rows: np.ndarray, cols: np.ndarray,
    levels: np.ndarray, offsets: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled (run, and checked, through its callers)
    """For each start pixel ``k``: does a pixel ``q`` with ``marker[q] > levels[k]`` lie in the
    piece of ``image > levels[k]`` (8-connected) holding ``(rows[k], cols[k])``?

    That is exactly ``reconstruction(marker, image) > levels[k]`` at the start
    pixel (grey reconstruction by dilation: the best of ``min(marker(q), the
    lowest image value on a path from q)``), found by a flood fill that stops
    at the first such ``q`` — so only each start's own piece is visited, not
    the whole image sorted.
    """
    h, w = image.shape
    n = rows.size
    found = np.zeros(n, dtype=np.bool_)
    stamp = np.zeros((h, w), dtype=np.int32)
    stack = np.empty(h * w, dtype=np.int64)
    lowest, highest_marker = image.min(), marker.max()
    for k in range(n):
        level = levels[k]
        r0, c0 = rows[k], cols[k]
        if not image[r0, c0] > level:
            continue
        if lowest > level:  # the piece is the whole image
            found[k] = highest_marker > level
            continue
        top = 0
        stack[top] = r0 * w + c0
        top += 1
        stamp[r0, c0] = k + 1
        while top > 0:
            top -= 1
            p = stack[top]
            r, c = p // w, p % w
            if marker[r, c] > level:
                found[k] = True
                break
            for j in range(offsets.shape[0]):
                rr, cc = r + offsets[j, 0], c + offsets[j, 1]
                if 0 <= rr < h and 0 <= cc < w and stamp[rr, cc] != k + 1 \
                        and image[rr, cc] > level:
                    stamp[rr, cc] = k + 1
                    stack[top] = rr * w + cc
                    top += 1
    return found


def reconstruction_above(image: np.ndarray, marker: np.ndarray, rows: np.ndarray,
                         cols: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Whether grey reconstruction by dilation of ``marker`` under ``image`` (8-connected)
    exceeds ``levels`` at pixels ``(rows, cols)``; see :func:`reach_above`."""
    return reach_above(np.ascontiguousarray(image), np.ascontiguousarray(marker),
                       np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64),
                       np.asarray(levels, dtype=image.dtype), _NEIGHBOURS_8)


@njit(cache=True, nogil=True, inline="always")
def _push(key: np.ndarray, where: np.ndarray, items: int, k: np.uint64, p: int) -> None:
    """Put ``(k, p)`` at position ``items`` and sift it up (a binary min-heap on ``key``)."""
    child = items
    while child > 0:
        parent = (child + 1) // 2 - 1
        if k < key[parent]:
            key[child], where[child] = key[parent], where[parent]
            child = parent
        else:
            break
    key[child], where[child] = k, p


@njit(cache=True, nogil=True)
def flood(image: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> None:  # pragma: no cover
    """Seeded watershed of float32 ``image`` from the nonzero ``labels`` (filled in place),
    inside ``mask``, 4-connected: :func:`skimage.segmentation.watershed`, step for step.

    The same binary heap ordered by (value, age), the same neighbour order (up,
    left, right, down) and the same rules (those of scikit-image 0.26): the
    seeds enter the heap in row-major order at their own value; a pixel takes
    the label of the pixel it is first reached from, and enters the heap at
    its value but no lower than that pixel's. Value and age are packed in one
    64-bit key (:func:`order_keys_2d` above the age), so each comparison is one.
    """
    h, w = image.shape
    order = order_keys_2d(image).ravel()
    out = labels.ravel()
    inside = mask.ravel()
    size = 1 + np.count_nonzero(inside) + np.count_nonzero(out)
    key = np.empty(size, dtype=np.uint64)
    where = np.empty(size, dtype=np.int64)
    items = 0
    for p in range(h * w):
        if out[p] != 0:
            _push(key, where, items, np.uint64(order[p]) << np.uint64(32), p)
            items += 1
    count = 1
    while items > 0:
        top, p = key[0], where[0]
        top_value = top >> np.uint64(32)
        items -= 1
        if items > 0:  # the last item goes to the root and sifts down (as skimage's heap)
            last, last_p = key[items], where[items]
            i = 0
            while True:
                left = 2 * i + 1
                if left >= items:
                    break
                smallest, small_key = i, last
                if key[left] < small_key:
                    smallest, small_key = left, key[left]
                if left + 1 < items and key[left + 1] < small_key:
                    smallest = left + 1
                if smallest == i:
                    break
                key[i], where[i] = key[smallest], where[smallest]
                i = smallest
            key[i], where[i] = last, last_p
        r, c = p // w, p % w
        for j in range(4):
            if j == 0:
                if r == 0:
                    continue
                q = p - w
            elif j == 1:
                if c == 0:
                    continue
                q = p - 1
            elif j == 2:
                if c == w - 1:
                    continue
                q = p + 1
            else:
                if r == h - 1:
                    continue
                q = p + w
            if not inside[q] or out[q] != 0:
                continue
            count += 1
            out[q] = out[p]
            v = np.uint64(order[q])
            if v < top_value:
                v = top_value
            _push(key, where, items, (v << np.uint64(32)) | np.uint64(count), q)
            items += 1


@njit(cache=True, nogil=True)
def order_keys_2d(image: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """uint32 keys in the order of the float32 ``image`` (no NaN; -0.0 and +0.0 equal)."""
    out = np.empty(image.shape, dtype=np.uint32)
    bits = image.view(np.uint32)
    for r in range(image.shape[0]):
        for c in range(image.shape[1]):
            b = bits[r, c]
            if b == np.uint32(0x80000000):  # -0.0 is +0.0
                b = np.uint32(0)
            out[r, c] = ~b if b & np.uint32(0x80000000) else b | np.uint32(0x80000000)
    return out


@njit(cache=True, nogil=True)
def _symmetric_rows(src: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """``out[i] = w0 src[i] + sum over k = r..1 of w_k (src[i-k] + src[i+k])`` in float64,
    edges repeated, rounded to float32: ``scipy.ndimage.correlate1d`` along axis 0 with a
    symmetric kernel of ``2 r + 1`` weights (its arithmetic, term for term)."""
    h, w = src.shape
    r = weights.size // 2
    acc = np.empty(w, dtype=np.float64)
    w0 = weights[r]
    for i in range(h):
        s = src[i]
        for c in range(w):
            acc[c] = s[c] * w0
        for k in range(r, 0, -1):
            wk = weights[r - k]
            a = src[max(i - k, 0)]
            b = src[min(i + k, h - 1)]
            for c in range(w):
                acc[c] += (a[c] + b[c]) * wk
        o = out[i]
        for c in range(w):
            o[c] = np.float32(acc[c])


@njit(cache=True, nogil=True)
def _symmetric_cols(src: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """:func:`_symmetric_rows` along axis 1 (of a float32 ``src``)."""
    h, w = src.shape
    r = weights.size // 2
    ext = np.empty(w + 2 * r, dtype=np.float64)
    acc = np.empty(w, dtype=np.float64)
    w0 = weights[r]
    for i in range(h):
        s = src[i]
        for c in range(r):
            ext[c] = s[0]
            ext[r + w + c] = s[w - 1]
        for c in range(w):
            ext[r + c] = s[c]
        for c in range(w):
            acc[c] = ext[r + c] * w0
        for k in range(r, 0, -1):
            wk = weights[r - k]
            lo = ext[r - k:r - k + w]
            hi = ext[r + k:r + k + w]
            for c in range(w):
                acc[c] += (lo[c] + hi[c]) * wk
        o = out[i]
        for c in range(w):
            o[c] = np.float32(acc[c])


def gaussian(image: np.ndarray, sigma: float, orders: tuple[int, int] = (0, 0),
             wide: np.ndarray | None = None) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(image, sigma, order=orders, mode="nearest")`` of a
    float32 image, bit for bit: the same kernels (SciPy's own, read off its response to a
    unit impulse), the same sums in float64 and the float32 rounding after each axis.
    ``wide`` is the image as float64, when the caller has it."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    if sigma <= 1e-15:  # SciPy leaves such an axis alone
        return image.copy()
    rows = np.empty_like(image)
    _symmetric_rows(image.astype(np.float64) if wide is None else wide,
                    _kernel(float(sigma), orders[0]), rows)
    out = np.empty_like(image)
    _symmetric_cols(rows, _kernel(float(sigma), orders[1]), out)
    return out


def gaussian_laplace(image: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_laplace(image, sigma, mode="nearest")`` of a float32 image,
    bit for bit (the second derivatives along each axis, each rounded to float32, summed)."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    wide = image.astype(np.float64)
    return gaussian(image, sigma, (2, 0), wide) + gaussian(image, sigma, (0, 2), wide)


@functools.lru_cache(maxsize=32)
def _kernel(sigma: float, order: int) -> np.ndarray:
    """The weights ``scipy.ndimage.gaussian_filter1d`` correlates with (default truncation)."""
    from scipy import ndimage as ndi

    radius = int(4.0 * sigma + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    weights = ndi.gaussian_filter1d(impulse, sigma, order=order, mode="constant")
    # SciPy takes the symmetric path (the sums above) only for a symmetric kernel
    if np.any(np.abs(weights - weights[::-1]) > np.finfo(np.float64).eps):
        raise ValueError(f"Gaussian kernel of order {order} is not symmetric")  # pragma: no cover
    weights.setflags(write=False)
    return weights


@njit(cache=True, nogil=True, inline="always")
def maximum(a: float, b: float) -> float:  # pragma: no cover - compiled
    """``np.maximum(a, b)`` of two numbers without NaN: ``a`` unless ``b`` is larger (so of
    -0.0 and 0.0 the first, as NumPy keeps it)."""
    return a if a >= b else b


@njit(cache=True, nogil=True, inline="always")
def find_root(parent: np.ndarray, i: int) -> int:  # pragma: no cover - compiled
    """Union-find: the root of ``i`` (halving the path on the way)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, nogil=True, inline="always")
def join(parent: np.ndarray, i: int, j: int) -> None:  # pragma: no cover - compiled
    """Union-find: one set of ``i`` and ``j``, rooted at the smaller root (so a piece's root
    is its first element)."""
    a, b = find_root(parent, i), find_root(parent, j)
    if a != b:
        parent[max(a, b)] = min(a, b)


@njit(cache=True, nogil=True)
def fill_holes(mask: np.ndarray, max_hole_px: int) -> np.ndarray:  # pragma: no cover - compiled
    """``mask`` with its holes of at most ``max_hole_px`` pixels filled: the 4-connected
    pieces of background (``scipy.ndimage.label``'s default) that do not reach the edge.

    The background is taken as runs along the rows; runs of consecutive rows that
    share a column are one piece (union-find over runs, not pixels).
    """
    h, w = mask.shape
    cap = h * ((w + 1) // 2 + 1)
    row_of = np.empty(cap, dtype=np.int64)
    start = np.empty(cap, dtype=np.int64)
    stop = np.empty(cap, dtype=np.int64)
    first = np.empty(h + 1, dtype=np.int64)  # runs of row r: first[r]:first[r + 1]
    n = 0
    for r in range(h):
        first[r] = n
        c = 0
        while c < w:
            if mask[r, c]:
                c += 1
                continue
            c0 = c
            while c < w and not mask[r, c]:
                c += 1
            row_of[n], start[n], stop[n] = r, c0, c
            n += 1
    first[h] = n
    parent = np.arange(n)
    for r in range(1, h):  # join runs overlapping the runs of the row above
        i, j = first[r - 1], first[r]
        while i < first[r] and j < first[r + 1]:
            if start[i] < stop[j] and start[j] < stop[i]:
                join(parent, i, j)
            if stop[i] <= stop[j]:
                i += 1
            else:
                j += 1
    size = np.zeros(n, dtype=np.int64)
    open_ = np.zeros(n, dtype=np.bool_)
    for k in range(n):
        root = find_root(parent, k)
        size[root] += stop[k] - start[k]
        if row_of[k] == 0 or row_of[k] == h - 1 or start[k] == 0 or stop[k] == w:
            open_[root] = True
    out = mask.copy()
    for k in range(n):
        root = find_root(parent, k)
        if not open_[root] and size[root] <= max_hole_px:
            out[row_of[k], start[k]:stop[k]] = True
    return out


@njit(cache=True, nogil=True)
def nucleus_extent(labels: np.ndarray, contrast: np.ndarray, n: int, fraction: np.float32,
                   threshold: np.float32) -> np.ndarray:  # pragma: no cover - compiled
    """Labelled pixels whose contrast reaches ``max(fraction * peak, threshold)`` (float32),
    ``peak`` the largest contrast of the pixel's label."""
    h, w = labels.shape
    peak = np.full(n + 1, -np.inf, dtype=np.float64)
    for r in range(h):
        for c in range(w):
            k = labels[r, c]
            if k > 0:
                peak[k] = maximum(peak[k], np.float64(contrast[r, c]))
    top = np.zeros(n + 1, dtype=np.float32)
    for k in range(1, n + 1):
        if peak[k] > -np.inf:
            top[k] = np.float32(peak[k])
    keep = np.zeros((h, w), dtype=np.bool_)
    for r in range(h):
        for c in range(w):
            k = labels[r, c]
            if k > 0:
                keep[r, c] = contrast[r, c] >= maximum(fraction * top[k], threshold)
    return keep


@njit(cache=True, nogil=True)
def keep_by_area(labels: np.ndarray, keep: np.ndarray, pixel_area: float, smallest: float,
                 largest: float) -> np.ndarray:  # pragma: no cover - compiled
    """The labels on ``keep`` whose area (pixels x ``pixel_area``) lies in
    ``[smallest, largest]``, renumbered 1..m in their order; the rest 0."""
    h, w = labels.shape
    n = 0
    for r in range(h):
        for c in range(w):
            if keep[r, c] and labels[r, c] > n:
                n = labels[r, c]
    count = np.zeros(n + 1, dtype=np.int64)
    for r in range(h):
        for c in range(w):
            if keep[r, c]:
                count[labels[r, c]] += 1
    new = np.zeros(n + 1, dtype=np.int32)
    m = 0
    for k in range(1, n + 1):
        area = np.float64(count[k]) * pixel_area
        if count[k] > 0 and area >= smallest and area <= largest:
            m += 1
            new[k] = m
    out = np.zeros((h, w), dtype=np.int32)
    for r in range(h):
        for c in range(w):
            if keep[r, c]:
                out[r, c] = new[labels[r, c]]
    return out


@njit(cache=True, nogil=True)
def clipped(image: np.ndarray, top: np.float32) -> np.ndarray:  # pragma: no cover - compiled
    """``np.clip(np.nan_to_num(image), 0, top)`` of a float32 image (NaN is 0, infinities
    the largest finite values, then clipped)."""
    out = np.empty(image.shape, dtype=np.float32)
    big = np.float32(np.finfo(np.float32).max)
    zero = np.float32(0.0)
    for r in range(image.shape[0]):
        for c in range(image.shape[1]):
            v = image[r, c]
            if np.isnan(v):
                v = zero
            elif v > big:
                v = big
            elif v < -big:
                v = -big
            v = maximum(v, zero)  # then np.minimum(v, top)
            out[r, c] = v if v <= top else top
    return out


@njit(cache=True, nogil=True)
def spaced(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
           near: int) -> np.ndarray:  # pragma: no cover - compiled
    """Which of the points ``(rows, cols)`` (best first) are kept when each is dropped if a
    kept one lies at most ``near`` rows and columns away (Chebyshev distance): the greedy
    spacing of ``skimage.feature.peak_local_max``."""
    blocked = np.zeros(shape, dtype=np.bool_)
    kept = np.zeros(rows.size, dtype=np.bool_)
    h, w = shape
    for i in range(rows.size):
        r, c = rows[i], cols[i]
        if blocked[r, c]:
            continue
        kept[i] = True
        for rr in range(max(r - near, 0), min(r + near + 1, h)):
            for cc in range(max(c - near, 0), min(c + near + 1, w)):
                blocked[rr, cc] = True
    return kept

