"""Nuclei of one tile: the nucleus channel and a seeded watershed (steps 1-2 of :mod:`her2_qupath.cells`)."""

from __future__ import annotations

import logging
import math

import numpy as np

from ..config import CellConfig, StainConfig
from ..errors import UserInputError
from ._base import _check_config, _check_mpp, _label_max, _pack

__all__ = ["nucleus_channel", "detect_nuclei"]

log = logging.getLogger(__name__)


def nucleus_channel(od: np.ndarray, config: CellConfig = CellConfig()) -> np.ndarray:  # noqa: B008
    """The image nuclei are detected on, from a deconvolved ``(h, w, 3)`` OD stack.

    ``"hematoxylin"`` is the hematoxylin OD. ``"hematoxylin+dab"`` is the
    pixelwise maximum of the hematoxylin and DAB ODs, so that brown
    (DAB-positive) nuclei of a nuclear stain are found as well as blue ones.
    The maximum, not the sum, is used: in a blue nucleus the DAB amount is
    slightly negative (noise of the unmixing), and adding it would lower the
    contrast of exactly the faint nuclei that are hardest to find.
    """
    a = np.asarray(od)
    if a.ndim != 3 or a.shape[2] < 2:
        raise UserInputError(
            f"expected a deconvolved (rows, cols, 3) OD stack, got shape {a.shape}",
            hint="pass the output of her2_qupath.stain.deconvolve",
        )
    if config.nucleus_channel == "hematoxylin":
        return np.ascontiguousarray(a[..., 0], dtype=np.float32)
    if config.nucleus_channel == "hematoxylin+dab":
        return np.maximum(a[..., 0], a[..., 1]).astype(np.float32, copy=False)
    _check_config(config, StainConfig())  # raises with the list of valid channels
    raise AssertionError("unreachable")  # pragma: no cover


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r


def _grey_opening(image: np.ndarray, side: int) -> np.ndarray:
    """Grey opening (minimum then maximum filter) over a ``side`` x ``side`` square.

    Edges repeat the nearest pixel (``scipy.ndimage`` mode ``"nearest"``);
    OpenCV's filters give the same values, several times faster.
    """
    import cv2

    kernel = np.ones((side, side), dtype=np.uint8)
    img = np.ascontiguousarray(image, dtype=np.float32)
    eroded = cv2.erode(img, kernel, borderType=cv2.BORDER_REPLICATE)
    return cv2.dilate(eroded, kernel, borderType=cv2.BORDER_REPLICATE)


def _binary_opening(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary opening of ``mask`` by a symmetric ``footprint``, outside the image is background.

    The same as ``scipy.ndimage.binary_opening(mask, structure=footprint)``,
    computed with OpenCV.
    """
    import cv2

    kernel = footprint.astype(np.uint8)
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    border = {"borderType": cv2.BORDER_CONSTANT, "borderValue": 0}
    return cv2.dilate(cv2.erode(m, kernel, **border), kernel, **border).astype(bool)


def _fill_small_holes(mask: np.ndarray, max_hole_px: int) -> np.ndarray:
    """Fill holes (background enclosed by foreground) of at most ``max_hole_px`` pixels."""
    from scipy import ndimage as ndi

    holes, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    # Components touching the tile edge are open background, never holes.
    edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill = sizes <= max_hole_px
    fill[0] = False
    fill[edge] = False
    return mask | fill[holes]


def _float_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of the float32 ``values`` (no NaN; -0.0 and +0.0 equal)."""
    bits = (values + np.float32(0.0)).view(np.uint32)  # -0.0 becomes +0.0
    # negative: all bits flipped; positive: the sign bit set
    flip = (bits.view(np.int32) >> 31).view(np.uint32) | np.uint32(0x80000000)
    return bits ^ flip


def _argsort_float32(
    values: np.ndarray, common: tuple[float, ...] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """(order, sorted keys) of a flat float32 array without NaN, ascending, ties by index.

    Sorts 64-bit integers (the float's order-preserving bit pattern above the
    index), which NumPy does several times faster than ``argsort`` of floats.
    The pixels equal to a value of ``common`` (e.g. a flat background) are
    not sorted: equal keys are ordered by index, so each such group is its
    pixels in index order, spliced in where its key falls among the others —
    the same order, in a fraction of the time when the group is large.
    """
    key = _float_keys(values)
    if not common:
        packed = (key.astype(np.uint64) << np.uint64(32)) | np.arange(values.size, dtype=np.uint64)
        packed.sort()
        return (packed & np.uint64(0xFFFFFFFF)).astype(np.int64), packed >> np.uint64(32)
    common_keys = np.unique(_float_keys(np.asarray(common, dtype=np.float32)))
    in_group = [key == k for k in common_keys]
    rest = np.flatnonzero(~np.logical_or.reduce(in_group))
    packed = (key[rest].astype(np.uint64) << np.uint64(32)) | rest.astype(np.uint64)
    packed.sort()
    rest_keys = packed >> np.uint64(32)
    rest_order = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    orders: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    start = 0
    at_keys = np.searchsorted(rest_keys, common_keys.astype(np.uint64))
    for k, at, member in zip(common_keys, at_keys, in_group, strict=True):
        group = np.flatnonzero(member)
        orders += [rest_order[start:at], group]
        keys += [rest_keys[start:at], np.full(group.size, k, dtype=np.uint64)]
        start = int(at)
    orders.append(rest_order[start:])
    keys.append(rest_keys[start:])
    return np.concatenate(orders), np.concatenate(keys)


def _reconstruction_by_dilation(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grey reconstruction by dilation of float32 ``seed`` (``<= mask``) under ``mask`` (8-connected).

    With ``m`` the minimum of ``mask`` and ``k = min(max(seed), m)``: every
    pixel at ``m`` reconstructs to ``k`` (each path to it has its minimum
    there), and a pixel of a piece ``C`` of ``mask > m`` (8-connected) to the
    larger of ``k`` and its reconstruction within ``C`` alone (any path out of
    ``C`` passes ``m``). So where the pieces cover little of the image (the
    nuclei of a tile, on a flat background), each is reconstructed in its
    bounding box, the boxes laid out in one mosaic separated by the lowest
    value (:func:`_reconstruct`) — far fewer pixels, the same values.
    """
    import cv2

    seed = np.ascontiguousarray(seed, dtype=np.float32)
    mask = np.ascontiguousarray(mask, dtype=np.float32)
    low = np.min(mask)
    pieces = mask > low
    if np.count_nonzero(pieces) > 0.3 * mask.size:
        return _reconstruct(seed, mask)
    k = min(np.max(seed), low)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(
        pieces.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    out = np.full(mask.shape, k, dtype=np.float32)
    if n <= 1:
        return out
    x0, y0, w, h = (stats[1:, j].astype(np.int64) for j in range(4))
    top, left, size = _pack(h + 1, w + 1, max(256, int(np.sqrt(((h + 1) * (w + 1)).sum()))))
    rr, cc = np.nonzero(pieces)
    i = comp[rr, cc].astype(np.int64) - 1
    mr, mc = top[i] + 1 + rr - y0[i], left[i] + 1 + cc - x0[i]
    lowest = np.min(seed)
    images = np.full((2, int(size[0]) + 1, int(size[1]) + 1), lowest, dtype=np.float32)
    images[0, mr, mc] = seed[rr, cc]
    images[1, mr, mc] = mask[rr, cc]
    out[rr, cc] = np.maximum(_reconstruct(images[0], images[1])[mr, mc], k)
    return out


def _reconstruct(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grey reconstruction by dilation of float32 ``seed`` under ``mask`` (8-connected).

    The values of :func:`skimage.morphology.reconstruction` (``method="dilation"``,
    default footprint), from its own inner loop, with one integer sort of the
    pixels instead of two float argsorts. Falls back to scikit-image itself
    where that loop is not available or the image is too large for 32-bit
    indices.
    """
    from skimage.morphology import reconstruction

    try:
        from skimage.morphology._grayreconstruct import reconstruction_loop
    except ImportError:  # pragma: no cover - depends on the scikit-image build
        return reconstruction(seed, mask, method="dilation")
    rows, cols = seed.shape
    images = np.full((2, rows + 2, cols + 2), np.min(seed), dtype=np.float32)
    images[0, 1:-1, 1:-1] = seed
    images[1, 1:-1, 1:-1] = mask
    flat = images.reshape(-1)
    if flat.size >= 2**31:  # pragma: no cover - tiles are far smaller
        return reconstruction(seed, mask, method="dilation")
    # the frame and the flat background (each image's minimum) need no sorting
    order, keys = _argsort_float32(flat, (float(images[0, 0, 0]), float(np.min(mask))))
    new_value = np.empty(flat.size, dtype=bool)
    new_value[0] = True
    np.not_equal(keys[1:], keys[:-1], out=new_value[1:])
    ranks = np.empty(flat.size, dtype=np.uint32)
    ranks[order] = np.cumsum(new_value, dtype=np.uint32) - np.uint32(1)
    value_map = flat[order[new_value]]
    index_sorted = order[::-1].astype(np.int32)
    prev = np.full(flat.size, -1, dtype=np.int32)
    nxt = np.full(flat.size, -1, dtype=np.int32)
    prev[index_sorted[1:]] = index_sorted[:-1]
    nxt[index_sorted[:-1]] = index_sorted[1:]
    width = cols + 2
    strides = np.array(
        [dr * width + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc], dtype=np.int32
    )
    image_stride = (rows + 2) * width
    reconstruction_loop(ranks, prev, nxt, strides, int(index_sorted[0]), image_stride)
    rec = value_map[ranks[:image_stride]].reshape(rows + 2, width)
    return rec[1:-1, 1:-1]


def _h_maxima(image: np.ndarray, h: float) -> np.ndarray:
    """Boolean h-maxima of a float32 image: :func:`skimage.morphology.h_maxima`, faster.

    Same definition and the same floating-point steps (the marker is the
    image less ``h`` less twice the float resolution of each value).
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    if h > np.ptp(image):
        return np.zeros(image.shape, dtype=bool)
    resolution = 2 * np.finfo(image.dtype).resolution * np.abs(image)
    shifted = image - h - resolution
    residue = image - _reconstruction_by_dilation(shifted, image)
    return residue >= h


def _significant_peaks(
    blob: np.ndarray, mask: np.ndarray, peaks: np.ndarray, config: CellConfig
) -> np.ndarray:
    """Which LoG ``peaks`` (rows of ``(row, col)``) are separated from a higher peak by a dip.

    A peak is kept when every path inside ``mask`` to a higher peak of ``blob``
    descends below ``(1 - split_min_dip)`` times its own value: the relative
    *dynamics* of the maximum (Grimaud 1992; Soille 2003, h-maxima) reaches
    ``split_min_dip``. Computed as the h-maxima transform of ``log(blob)`` with
    ``h = -log(1 - split_min_dip)``; LoG values below a fifth of
    ``nucleus_threshold_od`` are raised to that floor (below it the response is
    noise, and its logarithm would turn tiny wiggles into deep dips). Two seeds
    of one pale, elongated or vesicular nucleus are joined by a ridge that
    hardly dips, and are merged; two touching nuclei are separated by a
    valley of the response, and are kept apart.
    """
    floor = max(0.2 * config.nucleus_threshold_od, 1e-6)
    # Outside the mask the image is flat at the floor, its minimum: the transform on the
    # bounding box of the mask and a one-pixel frame of floor gives the same maxima.
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, mask.shape[0])
    c0, c1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, mask.shape[1])
    log_blob = np.log(np.maximum(blob[r0:r1, c0:c1], floor)).astype(np.float32, copy=False)
    log_blob[~mask[r0:r1, c0:c1]] = np.log(floor)
    h = -math.log(1.0 - min(config.split_min_dip, 0.999))
    significant = _h_maxima(log_blob, h)
    return significant[peaks[:, 0] - r0, peaks[:, 1] - c0]


def detect_nuclei(
    hematoxylin_od: np.ndarray,
    mpp: float,
    config: CellConfig = CellConfig(),  # noqa: B008 (frozen, immutable default)
) -> np.ndarray:
    """Label image (int32, 0 = none, nuclei ``1..n``) of the nuclei of one tile.

    ``hematoxylin_od`` is the nucleus channel, ``(rows, cols)`` float OD (see
    :func:`nucleus_channel`); a deconvolved ``(rows, cols, 3)`` stack is also
    accepted, and the channel is then chosen by ``config.nucleus_channel``.
    ``mpp`` is the pixel size in micrometres; every parameter is in µm:

    1. clip the OD to ``[0, nucleus_max_od]`` and smooth it with a Gaussian of
       sigma ``smoothing_um``;
    2. subtract the local background, a grey opening (minimum then maximum
       filter) over a square of half-side ``background_radius_um`` — the
       analogue of QuPath's rolling-ball background radius — so haze and
       cytoplasmic stain do not merge nuclei;
    3. threshold at ``nucleus_threshold_od`` above that background, fill holes
       smaller than ``nucleus_max_area_um2`` (vesicular nuclei with pale
       centres) and open with a disk of radius ``opening_um``;
    4. seeds: local maxima, at least ``split_min_distance_um`` apart, of the
       scale-normalised Laplacian of Gaussian ``-s^2 LoG_s`` of the clipped OD
       with ``s = split_sigma_um`` (blob centres of nuclei of radius about
       ``s * sqrt(2)``), keeping only those whose response dips by at least
       ``split_min_dip`` (a fraction of the peak) on the way to any higher
       peak (:func:`_significant_peaks`), so one large pale nucleus gives one
       seed; a watershed of the LoG response from these seeds, restricted to
       the mask, splits touching nuclei;
    5. keep nuclei whose area lies in ``[nucleus_min_area_um2, nucleus_max_area_um2]``.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    mpp = _check_mpp(mpp)
    a = np.asarray(hematoxylin_od)
    if a.ndim == 3:
        a = nucleus_channel(a, config)
    if a.ndim != 2 or a.size == 0:
        raise UserInputError(
            f"expected a 2-D nucleus channel, got shape {a.shape}",
            hint="pass the hematoxylin OD of the tile (stain.deconvolve(rgb)[..., 0])",
        )
    channel = np.clip(np.nan_to_num(a.astype(np.float32, copy=False)), 0.0, config.nucleus_max_od)
    smooth = ndi.gaussian_filter(channel, sigma=config.smoothing_um / mpp, mode="nearest")
    side = 2 * max(1, int(round(config.background_radius_um / mpp))) + 1
    background = _grey_opening(smooth, side)
    contrast = smooth - background
    mask = contrast > config.nucleus_threshold_od
    max_area_px = config.nucleus_max_area_um2 / (mpp * mpp)
    mask = _fill_small_holes(mask, int(max_area_px))
    if config.opening_um > 0:
        mask = _binary_opening(mask, _disk(config.opening_um / mpp))
    if not mask.any():
        return np.zeros(a.shape, dtype=np.int32)

    s = config.split_sigma_um / mpp
    blob = -(s * s) * ndi.gaussian_laplace(channel, sigma=s, mode="nearest")
    peaks = peak_local_max(
        blob,
        min_distance=max(1, int(round(config.split_min_distance_um / mpp))),
        labels=mask.astype(np.int32),
        exclude_border=False,
    )
    if config.split_min_dip > 0 and len(peaks):
        peaks = peaks[_significant_peaks(blob, mask, peaks, config)]
    markers = np.zeros(a.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-blob, markers, mask=mask).astype(np.int32, copy=False)
    if config.boundary_fraction > 0 and labels.any():
        # Each nucleus ends where its contrast falls below a fraction of its own peak
        # (half maximum by default): the edge of a blurred dark nucleus, not the foot of
        # the blur. Holes this leaves (pale nuclear centres) are filled again.
        n_seeds = int(labels.max())
        peak = np.zeros(n_seeds + 1, dtype=np.float32)
        peak[1:] = np.nan_to_num(_label_max(labels, contrast, n_seeds))  # = ndi.maximum, faster
        keep = contrast >= np.maximum(
            config.boundary_fraction * peak[labels], config.nucleus_threshold_od
        )
        keep = _fill_small_holes(keep & (labels > 0), int(max_area_px))
        labels = np.where(keep, labels, 0).astype(np.int32, copy=False)

    pixels = np.bincount(labels.ravel())
    area_um2 = pixels * (mpp * mpp)
    keep = (pixels > 0) & (area_um2 >= config.nucleus_min_area_um2) & (
        area_um2 <= config.nucleus_max_area_um2
    )
    keep[0] = False
    # the kept labels numbered 1..n in their order (skimage's relabel_sequential)
    labels = (np.cumsum(keep, dtype=np.int32) * keep)[labels]
    log.debug("detected %d nuclei from %d seeds", int(labels.max()), len(peaks))
    return labels
