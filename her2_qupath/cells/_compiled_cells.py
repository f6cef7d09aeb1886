"""Compiled inner loops of cells, measurements and outlines (package-private; numba).

The companion of :mod:`._compiled` (nucleus detection), under the same rules:
each kernel is an exact replacement for a library routine or a NumPy
expression (named in its docstring), checked against it in
``tests/test_cells_compiled.py``, compiled on first use and cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._compiled import maximum

__all__: list[str] = []


@njit(cache=True, nogil=True)
def expand(labels: np.ndarray, distance: float) -> np.ndarray:  # pragma: no cover - compiled
    """:func:`skimage.segmentation.expand_labels`: each unlabelled pixel within ``distance``
    of a label takes the label of its nearest labelled pixel, ties broken as SciPy's
    feature transform breaks them.

    SciPy's exact transform (Maurer, Qi & Raghavan 2003): first, in each column,
    the nearest labelled pixel of that column (of two at the same distance, the
    upper); then, along each row, the lower envelope of those columns' parabolas,
    and each unlabelled pixel's nearest among them (of two at the same distance,
    the left). Its sums are of small integers, exact in SciPy's doubles as here in
    integers. Columns whose nearest labelled pixel lies more than ``distance`` rows
    away cannot give a pixel within ``distance`` and are left out beforehand, and
    labelled pixels keep their label without a query.
    """
    h, w = labels.shape
    reach = int(np.floor(distance))
    col_r = np.full((h, w), -1, dtype=np.int32)  # nearest labelled row within the column
    above = np.full(w, -1, dtype=np.int64)
    for r in range(h):
        for c in range(w):
            if labels[r, c] != 0:
                above[c] = r
            col_r[r, c] = above[c]
    below = np.full(w, -1, dtype=np.int64)
    for r in range(h - 1, -1, -1):
        for c in range(w):
            if labels[r, c] != 0:
                below[c] = r
            b = below[c]
            if b >= 0:
                a = col_r[r, c]
                if a < 0 or b - r < r - a:
                    col_r[r, c] = b
    out = np.zeros((h, w), dtype=labels.dtype)
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
            if labels[r, i] != 0:
                out[r, i] = labels[r, i]
                continue
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
            if np.sqrt(np.float64(d1)) <= distance:
                k = g[last]
                out[r, i] = labels[fr[k], k]
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


@njit(cache=True, nogil=True)
def compartment_sums(cells: np.ndarray, nuclei: np.ndarray, membranes: np.ndarray,
                     cytoplasm: np.ndarray, hema: np.ndarray, dab: np.ndarray,
                     n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Per label ``1..n`` (row ``label - 1``), in one pass over the pixels in row-major order
    (the order, so the float64 sums, of ``np.bincount`` over the labelled pixels):

    * ``counts`` ``(n, 4)``: pixels of the cell, nucleus, membrane, cytoplasm;
    * ``sums`` ``(n, 9)``: cell DAB, nucleus hematoxylin, nucleus DAB, membrane DAB,
      cytoplasm DAB, the cell pixels' row and column indices, the nucleus pixels' row and
      column indices;
    * ``peaks`` ``(n, 3)``: DAB maximum of the nucleus, membrane, cytoplasm (-inf: none).
    """
    h, w = cells.shape
    counts = np.zeros((n, 4), dtype=np.int64)
    sums = np.zeros((n, 9), dtype=np.float64)
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
                sums[k - 1, 7] += r
                sums[k - 1, 8] += c
                peaks[k - 1, 0] = maximum(peaks[k - 1, 0], d)
            k = membranes[r, c]
            if k != 0:
                counts[k - 1, 2] += 1
                sums[k - 1, 3] += d
                peaks[k - 1, 1] = maximum(peaks[k - 1, 1], d)
            k = cytoplasm[r, c]
            if k != 0:
                counts[k - 1, 3] += 1
                sums[k - 1, 4] += d
                peaks[k - 1, 2] = maximum(peaks[k - 1, 2], d)
    return counts, sums, peaks


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


@njit(cache=True, nogil=True)
def labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Row, column and label of the labelled pixels, row-major: ``np.nonzero(labels)`` and
    ``labels`` there."""
    h, w = labels.shape
    m = 0
    for r in range(h):
        for c in range(w):
            if labels[r, c] != 0:
                m += 1
    rr = np.empty(m, dtype=np.int64)
    cc = np.empty(m, dtype=np.int64)
    lab = np.empty(m, dtype=np.int64)
    i = 0
    for r in range(h):
        for c in range(w):
            k = labels[r, c]
            if k != 0:
                rr[i], cc[i], lab[i] = r, c, k
                i += 1
    return rr, cc, lab


@njit(cache=True, nogil=True)
def split_band(cells: np.ndarray, nuclei: np.ndarray, inner: np.ndarray,
               width: np.float32) -> tuple[np.ndarray, ...]:  # pragma: no cover - compiled
    """Membrane and cytoplasm labels and the depth of the membrane band.

    ``depth`` is the Euclidean distance of a pixel to the nearest ``inner`` pixel,
    ``np.float32(np.sqrt(d²))`` of the integer squared distance, as
    ``scipy.ndimage.distance_transform_edt(~inner)`` cast to float32 gives it —
    where that is below ``width`` (float32, compared as NumPy compares) and the pixel
    is a cell pixel outside the nucleus (the band); +inf elsewhere. Membrane: the band
    pixels (label of their cell); cytoplasm: the other cell pixels outside the nucleus.

    A distance below ``width`` reaches at most ``R = ceil(width)`` rows and columns,
    so each column's nearest boundary within R rows (two scans), then the
    ``2R + 1`` columns around each band candidate, give it exactly.
    """
    h, w = cells.shape
    reach = max(int(np.ceil(np.float64(width))), 0)
    far = reach + 1
    up = np.empty((h, w), dtype=np.int32)  # rows to the nearest inner pixel of the column
    for r in range(h):
        for c in range(w):
            if inner[r, c]:
                up[r, c] = 0
            elif r > 0:
                up[r, c] = min(up[r - 1, c] + 1, far)
            else:
                up[r, c] = far
    for r in range(h - 2, -1, -1):
        for c in range(w):
            below = up[r + 1, c] + 1
            if below < up[r, c]:
                up[r, c] = below
    square = np.empty(far + 1, dtype=np.int64)
    for k in range(far):
        square[k] = k * k
    square[far] = 2**40  # no inner pixel within reach in that column
    limit = reach * reach
    inf = np.float32(np.inf)
    membranes = np.zeros((h, w), dtype=np.int32)
    cytoplasm = np.zeros((h, w), dtype=np.int32)
    depth = np.full((h, w), inf, dtype=np.float32)
    for r in range(h):
        for c in range(w):
            lab = cells[r, c]
            if lab == 0 or nuclei[r, c] != 0:
                continue
            best = square[up[r, c]]
            for dc in range(1, reach + 1):  # outwards, until no column can be nearer
                if dc * dc >= best:
                    break
                if c >= dc:
                    best = min(best, dc * dc + square[up[r, c - dc]])
                if c + dc < w:
                    best = min(best, dc * dc + square[up[r, c + dc]])
            d = inf
            if best <= limit:
                d = np.float32(np.sqrt(np.float64(best)))
            if d < width:
                membranes[r, c] = lab
                depth[r, c] = d
            else:
                cytoplasm[r, c] = lab
    return membranes, cytoplasm, depth
