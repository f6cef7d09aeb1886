"""Compiled inner loops of the cell analysis (package-private; numba, compiled on first use).

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


@njit(cache=True, nogil=True)
def feature_transform(features: np.ndarray,
                      reach: int = 2**30) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Row and column of the nearest ``True`` pixel of ``features`` for every pixel (-1 where
    there is none): the indices of ``scipy.ndimage.distance_transform_edt(~features,
    return_indices=True)``, ties broken as SciPy breaks them. Only pixels within ``reach``
    rows of their nearest feature are sure to get it (the others may get -1 or a farther one).

    SciPy's exact transform (Maurer, Qi & Raghavan 2003): first, in each column,
    the nearest feature of that column (of two at the same distance, the upper);
    then, along each row, the lower envelope of those columns' parabolas, and
    each pixel's nearest among them (of two at the same distance, the left).
    Its sums are of small integers, exact in SciPy's doubles as here in integers. So a
    pixel gets the nearest feature, of several the leftmost, then the upper —
    whichever candidates farther than ``reach`` rows are left out beforehand.
    """
    h, w = features.shape
    col_r = np.full((h, w), -1, dtype=np.int32)  # nearest feature row within the column
    above = np.full(w, -1, dtype=np.int64)
    for r in range(h):
        for c in range(w):
            if features[r, c]:
                above[c] = r
            col_r[r, c] = above[c]
    below = np.full(w, -1, dtype=np.int64)
    for r in range(h - 1, -1, -1):
        for c in range(w):
            if features[r, c]:
                below[c] = r
            b = below[c]
            if b >= 0:
                a = col_r[r, c]
                if a < 0 or b - r < r - a:
                    col_r[r, c] = b
    ft_r = np.full((h, w), -1, dtype=np.int32)
    ft_c = np.full((h, w), -1, dtype=np.int32)
    g = np.empty(w, dtype=np.int64)
    for r in range(h):
        fr = col_r[r]
        last = -1
        for i in range(w):
            if fr[i] < 0 or abs(fr[i] - r) > reach:
                continue
            t = fr[i] - r
            w_r = t * t
            while last >= 1:
                i1, i2 = g[last], g[last - 1]
                a = i1 - i2
                b = i - i1
                c = a + b
                tu, tv = fr[i2] - r, fr[i1] - r
                # SciPy's test in doubles; exact in integers (every term is far below 2**53)
                if c * (tv * tv) - b * (tu * tu) - a * w_r - a * b * c <= 0:
                    break
                last -= 1
            last += 1
            g[last] = i
        if last < 0:
            continue
        top = last
        last = 0
        for i in range(w):
            k = g[last]
            da, db = fr[k] - r, k - i
            d1 = da * da + db * db
            while last < top:
                k = g[last + 1]
                da, db = fr[k] - r, k - i
                d2 = da * da + db * db
                if d1 <= d2:
                    break
                d1 = d2
                last += 1
            k = g[last]
            ft_r[r, i] = fr[k]
            ft_c[r, i] = k
    return ft_r, ft_c


@njit(cache=True, nogil=True)
def expand(labels: np.ndarray, distance: float) -> np.ndarray:  # pragma: no cover - compiled
    """:func:`skimage.segmentation.expand_labels`: each unlabelled pixel within ``distance``
    of a label takes the label of its nearest labelled pixel (SciPy's feature transform)."""
    h, w = labels.shape
    ft_r, ft_c = feature_transform(labels != 0, int(np.floor(distance)))
    out = np.zeros((h, w), dtype=labels.dtype)
    for r in range(h):
        for c in range(w):
            rr = ft_r[r, c]
            if rr < 0:
                continue
            cc = ft_c[r, c]
            d2 = (rr - r) * (rr - r) + (cc - c) * (cc - c)
            if np.sqrt(np.float64(d2)) <= distance:
                out[r, c] = labels[rr, cc]
    return out


@njit(cache=True, nogil=True)
def distance_to(features: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Euclidean distance (float32 pixels) of each pixel to the nearest ``True`` pixel of
    ``features`` (one must exist): ``scipy.ndimage.distance_transform_edt(~features)``
    rounded to float32."""
    h, w = features.shape
    ft_r, ft_c = feature_transform(features)
    out = np.empty((h, w), dtype=np.float32)
    for r in range(h):
        for c in range(w):
            dr, dc = ft_r[r, c] - r, ft_c[r, c] - c
            out[r, c] = np.float32(np.sqrt(np.float64(dr * dr + dc * dc)))
    return out


@njit(cache=True, nogil=True, inline="always")
def _put_int(buf: np.ndarray, at: int, v: int) -> int:  # pragma: no cover - compiled
    """Decimal digits of ``v`` at ``buf[at:]``; returns the end."""
    if v < 0:
        buf[at] = 45  # "-"
        at += 1
        v = -v
    start = at
    while True:
        buf[at] = 48 + v % 10
        at += 1
        v //= 10
        if v == 0:
            break
    i, j = start, at - 1
    while i < j:
        buf[i], buf[j] = buf[j], buf[i]
        i += 1
        j -= 1
    return at


@njit(cache=True, nogil=True)
def polygon_json(xy: np.ndarray, rings: np.ndarray,
                 polys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """GeoJSON ``coordinates`` of polygons with whole-number vertices, as ``json.dumps``
    writes them for floats (``[[[12.0, 34.0], ...]]``): one ASCII buffer and each polygon's
    start in it (the last entry is the end). ``xy`` is int64 ``(k, 2)``, ``rings`` and
    ``polys`` the ragged offsets."""
    n = polys.size - 1
    buf = np.empty(xy.shape[0] * 52 + (rings.size + n) * 4 + 8, dtype=np.uint8)
    starts = np.empty(n + 1, dtype=np.int64)
    at = 0
    for i in range(n):
        starts[i] = at
        buf[at] = 91  # "["
        at += 1
        for r in range(polys[i], polys[i + 1]):
            if r > polys[i]:
                buf[at], buf[at + 1] = 44, 32  # ", "
                at += 2
            buf[at] = 91
            at += 1
            for v in range(rings[r], rings[r + 1]):
                if v > rings[r]:
                    buf[at], buf[at + 1] = 44, 32
                    at += 2
                buf[at] = 91
                at = _put_int(buf, at + 1, xy[v, 0])
                buf[at], buf[at + 1], buf[at + 2], buf[at + 3] = 46, 48, 44, 32  # ".0, "
                at = _put_int(buf, at + 4, xy[v, 1])
                buf[at], buf[at + 1], buf[at + 2] = 46, 48, 93  # ".0]"
                at += 3
            buf[at] = 93  # "]"
            at += 1
        buf[at] = 93
        at += 1
    starts[n] = at
    return buf[:at], starts


@njit(cache=True, nogil=True, inline="always")
def _root(parent: np.ndarray, i: int) -> int:  # pragma: no cover - compiled
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


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
                a, b = _root(parent, i), _root(parent, j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if stop[i] <= stop[j]:
                i += 1
            else:
                j += 1
    size = np.zeros(n, dtype=np.int64)
    open_ = np.zeros(n, dtype=np.bool_)
    for k in range(n):
        root = _root(parent, k)
        size[root] += stop[k] - start[k]
        if row_of[k] == 0 or row_of[k] == h - 1 or start[k] == 0 or stop[k] == w:
            open_[root] = True
    out = mask.copy()
    for k in range(n):
        root = _root(parent, k)
        if not open_[root] and size[root] <= max_hole_px:
            out[row_of[k], start[k]:stop[k]] = True
    return out


@njit(cache=True, nogil=True)
def compartment_sums(cells: np.ndarray, nuclei: np.ndarray, membranes: np.ndarray,
                     cytoplasm: np.ndarray, hema: np.ndarray, dab: np.ndarray,
                     n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Per label ``1..n`` (row ``label - 1``), in one pass over the pixels in row-major order
    (the order, so the float64 sums, of ``np.bincount`` over the labelled pixels):

    * ``counts`` ``(n, 4)``: pixels of the cell, nucleus, membrane, cytoplasm;
    * ``sums`` ``(n, 7)``: cell DAB, nucleus hematoxylin, nucleus DAB, membrane DAB,
      cytoplasm DAB, and the cell pixels' row and column indices;
    * ``peaks`` ``(n, 3)``: DAB maximum of the nucleus, membrane, cytoplasm (-inf: none).
    """
    h, w = cells.shape
    counts = np.zeros((n, 4), dtype=np.int64)
    sums = np.zeros((n, 7), dtype=np.float64)
    peaks = np.full((n, 3), -np.inf, dtype=np.float64)
    for r in range(h):
        for c in range(w):
            d = np.float64(dab[r, c])
            k = cells[r, c]
            if k != 0:
                counts[k - 1, 0] += 1
                sums[k - 1, 0] += d
                sums[k - 1, 5] += r
                sums[k - 1, 6] += c
            k = nuclei[r, c]
            if k != 0:
                counts[k - 1, 1] += 1
                sums[k - 1, 1] += np.float64(hema[r, c])
                sums[k - 1, 2] += d
                if not peaks[k - 1, 0] >= d:  # np.maximum's choice, -0.0 against 0.0 included
                    peaks[k - 1, 0] = d
            k = membranes[r, c]
            if k != 0:
                counts[k - 1, 2] += 1
                sums[k - 1, 3] += d
                if not peaks[k - 1, 1] >= d:
                    peaks[k - 1, 1] = d
            k = cytoplasm[r, c]
            if k != 0:
                counts[k - 1, 3] += 1
                sums[k - 1, 4] += d
                if not peaks[k - 1, 2] >= d:
                    peaks[k - 1, 2] = d
    return counts, sums, peaks


@njit(cache=True, nogil=True)
def label_layout(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Bounding boxes ``(r0, r1, c0, c1)`` of labels ``1..n`` (row ``label - 1``; ``r0 = -1``:
    absent) as ``scipy.ndimage.find_objects`` gives them, and which labels have two pixels
    touching only diagonally (a 2 x 2 saddle, the image framed by background)."""
    h, w = labels.shape
    boxes = np.empty((n, 4), dtype=np.int64)
    boxes[:, 0] = h
    boxes[:, 1] = -1
    boxes[:, 2] = w
    boxes[:, 3] = -1
    saddle = np.zeros(n + 1, dtype=np.bool_)
    for r in range(h):
        for c in range(w):
            k = labels[r, c]
            if 1 <= k <= n:
                b = boxes[k - 1]
                b[0] = min(b[0], r)
                b[1] = max(b[1], r + 1)
                b[2] = min(b[2], c)
                b[3] = max(b[3], c + 1)
    for r in range(-1, h):
        for c in range(-1, w):
            a = labels[r, c] if r >= 0 and c >= 0 else 0
            b = labels[r, c + 1] if r >= 0 and c + 1 < w else 0
            e = labels[r + 1, c] if r + 1 < h and c >= 0 else 0
            d = labels[r + 1, c + 1] if r + 1 < h and c + 1 < w else 0
            if a == d and a != 0 and b != a and e != a and a <= n:
                saddle[a] = True
            if b == e and b != 0 and a != b and d != b and b <= n:
                saddle[b] = True
    for k in range(n):
        if boxes[k, 1] < 0:
            boxes[k, 0] = -1
    return boxes, saddle


@njit(cache=True, nogil=True)
def crop_mosaic(labels: np.ndarray, slot: np.ndarray, top: np.ndarray, left: np.ndarray,
                r0: np.ndarray, c0: np.ndarray, rows: int, cols: int) -> np.ndarray:  # pragma: no cover
    """Each label's pixels copied into its place of a mosaic: label ``k`` (``slot[k] = j >= 0``)
    goes to the box at ``(top[j] + 1, left[j] + 1)``, its own box starting at ``(r0[j], c0[j])``."""
    h, w = labels.shape
    out = np.zeros((rows, cols), dtype=np.bool_)
    for r in range(h):
        for c in range(w):
            k = labels[r, c]
            if 0 < k < slot.size:
                j = slot[k]
                if j >= 0:
                    out[top[j] + 1 + r - r0[j], left[j] + 1 + c - c0[j]] = True
    return out


@njit(cache=True, nogil=True)
def ring_sectors(rr: np.ndarray, cc: np.ndarray, lab: np.ndarray, angle: np.ndarray,
                 layer: np.ndarray, graded: np.ndarray, n: int, sectors: int,
                 threshold: float) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """Completeness and stained-part intensity of each ring from its pixels ``(rr, cc)`` of
    cell ``lab`` at ``angle`` around the cell's centre, in depth ``layer``:
    ``measure._membrane_sectors`` after its angles and layers, with the same float64 sums
    (pixel order)."""
    m = rr.size
    sector = np.empty(m, dtype=np.int64)
    scale = sectors / (2 * np.pi)
    layers = 1
    for i in range(m):
        sector[i] = min(np.int64((angle[i] + np.pi) * scale), sectors - 1)
        if i == 0 or layer[i] + 1 > layers:
            layers = layer[i] + 1
    count = np.zeros((n, sectors, layers), dtype=np.int64)
    total = np.zeros((n, sectors, layers), dtype=np.float64)
    for i in range(m):
        count[lab[i], sector[i], layer[i]] += 1
        total[lab[i], sector[i], layer[i]] += np.float64(graded[rr[i], cc[i]])
    completeness = np.zeros(n, dtype=np.float64)
    intensity = np.zeros(n, dtype=np.float64)
    stained = np.empty(sectors, dtype=np.float64)
    for k in range(n):
        n_present = 0
        n_stained = 0
        for s in range(sectors):
            best = -np.inf
            present = False
            for j in range(layers):
                if count[k, s, j] > 0:
                    present = True
                    v = total[k, s, j] / count[k, s, j]
                    if v > best:
                        best = v
            if present:
                n_present += 1
                if best >= threshold:
                    stained[n_stained] = best
                    n_stained += 1
        completeness[k] = n_stained / max(n_present, 1)
        if n_stained:
            values = np.sort(stained[:n_stained])  # ascending; the median of the middle two
            lo, hi = (n_stained - 1) // 2, min(n_stained // 2, sectors - 1)
            intensity[k] = 0.5 * (values[n_stained - 1 - lo] + values[n_stained - 1 - hi])
    return completeness, intensity
