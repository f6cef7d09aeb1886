"""Nuclei of one tile: the nucleus channel and a seeded watershed (steps 1-2 of :mod:`her2_qupath.cells`)."""

from __future__ import annotations

import logging
import math

import numpy as np

from ..config import CellConfig, StainConfig
from ..errors import UserInputError
from ._base import _check_config, _check_mpp

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
    return _channel(a[..., 0], a[..., 1], config)


def _channel(hematoxylin: np.ndarray, dab: np.ndarray, config: CellConfig) -> np.ndarray:
    """:func:`nucleus_channel` of the hematoxylin and DAB planes."""
    if config.nucleus_channel == "hematoxylin":
        return np.ascontiguousarray(hematoxylin, dtype=np.float32)
    if config.nucleus_channel == "hematoxylin+dab":
        return np.maximum(hematoxylin, dab).astype(np.float32, copy=False)
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
    """Fill holes (background enclosed by foreground, 4-connected) of at most ``max_hole_px``
    pixels; background reaching the tile edge is open, never a hole."""
    from ._compiled import fill_holes

    return fill_holes(np.ascontiguousarray(mask, dtype=bool), int(max_hole_px))


def _local_peaks(image: np.ndarray, mask: np.ndarray, min_distance: int) -> np.ndarray:
    """``(row, col)`` of the local maxima of float32 ``image`` inside ``mask``, highest first.

    The result of ``skimage.feature.peak_local_max(image, min_distance,
    labels=mask, exclude_border=False)``, point for point and in its order:
    pixels of the mask's bounding box equal to the maximum over the
    ``2 * min_distance + 1`` square around them (outside the mask counts as
    the lowest float; edges repeat), above the image's minimum, sorted by
    value (ties in row-major order); then, highest first, each is kept unless
    a kept one lies less than ``min_distance`` away (Chebyshev distance).
    """
    import cv2
    from scipy import ndimage as ndi

    from ._compiled import spaced

    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    r0, c0 = int(rows[0]), int(cols[0])
    box = (slice(r0, int(rows[-1]) + 1), slice(c0, int(cols[-1]) + 1))
    inside = mask[box]
    img = np.array(image[box], dtype=np.float32)
    img[~inside] = np.finfo(np.float32).min
    side = 2 * min_distance + 1
    peak = img == cv2.dilate(img, np.ones((side, side), np.uint8), borderType=cv2.BORDER_REPLICATE)
    if np.all(peak[inside]):  # a flat object: its isolated pixels are its peaks
        peak[:] = False
        peak[np.logical_xor(inside, ndi.binary_opening(inside))] = True
    peak &= img > np.min(image)
    rr, cc = np.nonzero(peak)
    order = np.argsort(-img[rr, cc], kind="stable")
    rr, cc = rr[order], cc[order]
    if min_distance > 1 and rr.size > 1:
        kept = spaced(rr, cc, img.shape, min_distance - 1)
        rr, cc = rr[kept], cc[kept]
    return np.stack([rr + r0, cc + c0], axis=1).astype(np.int64)


def _h_maxima_at(image: np.ndarray, h: float, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """:func:`skimage.morphology.h_maxima` of a float32 image, at pixels ``(rows, cols)`` only.

    The same definition and floating-point steps: a pixel is an h-maximum when
    ``image - reconstruction(marker, image) >= h`` there, with the marker the
    image less ``h`` less twice the float resolution of each value (grey
    reconstruction by dilation, 8-connected). As float32 subtraction is
    monotone, that holds exactly when the reconstruction is at most the
    largest float32 ``r`` with ``image - r >= h``; and the reconstruction
    exceeds ``r`` exactly when the piece of ``image > r`` around the pixel
    holds a marker value above ``r``. A flood fill of that piece per pixel
    (:func:`._compiled.reconstruction_above`) answers it without sorting the
    image, which the reconstruction itself must.
    """
    from ._compiled import reconstruction_above

    image = np.ascontiguousarray(image, dtype=np.float32)
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if h > np.ptp(image) or rows.size == 0:
        return np.zeros(rows.shape, dtype=bool)
    resolution = 2 * np.finfo(image.dtype).resolution * np.abs(image)
    marker = image - h - resolution
    value = image[rows, cols]
    level = (value - h).astype(np.float32)
    # the largest float32 level with value - level >= h (as the residue is compared)
    while not np.all(ok := (value - level) >= h):
        level = np.where(ok, level, np.nextafter(level, np.float32(-np.inf)))
    while np.any(up := (value - (nxt := np.nextafter(level, np.float32(np.inf)))) >= h):
        level = np.where(up, nxt, level)
    return ~reconstruction_above(image, marker, rows, cols, level)


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
    return _h_maxima_at(log_blob, h, peaks[:, 0] - r0, peaks[:, 1] - c0)


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
    from ._compiled import (
        clipped,
        flood,
        gaussian,
        gaussian_laplace,
        keep_by_area,
        nucleus_extent,
    )

    mpp = _check_mpp(mpp)
    a = np.asarray(hematoxylin_od)
    if a.ndim == 3:
        a = nucleus_channel(a, config)
    if a.ndim != 2 or a.size == 0:
        raise UserInputError(
            f"expected a 2-D nucleus channel, got shape {a.shape}",
            hint="pass the hematoxylin OD of the tile (stain.deconvolve(rgb)[..., 0])",
        )
    # = np.clip(np.nan_to_num(channel), 0, nucleus_max_od) in float32
    channel = clipped(np.ascontiguousarray(a, dtype=np.float32), np.float32(config.nucleus_max_od))
    smooth = gaussian(channel, config.smoothing_um / mpp)  # = ndi.gaussian_filter(mode="nearest")
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
    blob = -(s * s) * gaussian_laplace(channel, s)  # = ndi.gaussian_laplace(mode="nearest")
    peaks = _local_peaks(blob, mask, max(1, int(round(config.split_min_distance_um / mpp))))
    if config.split_min_dip > 0 and len(peaks):
        peaks = peaks[_significant_peaks(blob, mask, peaks, config)]
    markers = np.zeros(a.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = markers
    flood(-blob, labels, mask)  # skimage.segmentation.watershed(-blob, markers, mask=mask)
    if config.boundary_fraction > 0 and labels.any():
        # Each nucleus ends where its contrast falls below a fraction of its own peak
        # (half maximum by default): the edge of a blurred dark nucleus, not the foot of
        # the blur. Holes this leaves (pale nuclear centres) are filled again.
        keep = nucleus_extent(labels, contrast, int(labels.max()),
                              np.float32(config.boundary_fraction),
                              np.float32(config.nucleus_threshold_od))
        keep = _fill_small_holes(keep, int(max_area_px))
    else:
        keep = labels > 0
    # the nuclei of a plausible area, numbered 1..n in their order (skimage's relabel_sequential)
    labels = keep_by_area(labels, keep, mpp * mpp, config.nucleus_min_area_um2,
                          config.nucleus_max_area_um2)
    log.debug("detected %d nuclei from %d seeds", int(labels.max()), len(peaks))
    return labels
