"""Cell-level membrane analysis of DAB immunohistochemistry (HER2).

HER2 is a membrane stain, and the clinical rules (ASCO/CAP) count tumour cells
by the intensity and completeness of their membrane staining. This module
finds the cells of one tile and measures each of them, in the spirit of
QuPath's cell detection:

1. **Colour deconvolution** (:func:`her2_qupath.stain.deconvolve`) gives the
   hematoxylin and DAB optical density (OD) of every pixel.
2. **Nuclei** (:func:`detect_nuclei`) on the nucleus channel: Gaussian
   smoothing, subtraction of the local background (grey opening), a fixed OD
   threshold, hole filling and opening, then a marker-controlled watershed
   whose seeds are the maxima of the scale-normalised Laplacian of Gaussian
   that its response separates by a dip of at least ``split_min_dip`` of
   their peak (one seed per large pale nucleus), so touching nuclei are split; each nucleus ends at half its peak contrast;
   an area filter in µm² ends it.
3. **Cells**: each nucleus grows by at most ``expansion_um`` without
   overlapping its neighbours (:func:`skimage.segmentation.expand_labels`,
   as QuPath's "cell expansion").
4. **Compartments**: the *membrane* is the inner band of the cell, of width
   ``membrane_width_um``, along its boundary (outside the nucleus); the
   *cytoplasm* is the rest of the cell outside the nucleus.
5. **Measurements** per cell, named as QuPath names them
   (``"Membrane: DAB OD mean"`` …), computed with ``np.bincount`` and
   ``scipy.ndimage`` labelled statistics, never with loops over pixels.
6. **Membrane completeness**: the ring is divided into
   ``completeness_sectors`` equal angular sectors around the cell centroid,
   and each sector into layers parallel to the boundary; a sector's DAB OD is
   its darkest layer's mean (the membrane line, wherever it runs in the band);
   a sector is stained when that reaches the 1+ threshold; completeness is
   the fraction of the sectors present that are stained.
7. **Class** 0 / 1+ / 2+ / 3+ of each cell from the intensity of the stained
   part of its ring and its completeness (:func:`classify_cells`).

Coordinates follow QuPath: pixel ``(row r, col c)`` covers the square
``[c, c + 1) x [r, r + 1)`` of the tile, so a centroid or an outline vertex
``(x, y)`` is in tile pixels with the origin at the tile's top-left corner.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .config import HER2_CLASSES, CellConfig, StainConfig
from .errors import UserInputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from shapely.geometry import Polygon

    from .stain import StainVectors

__all__ = [
    "MEASUREMENTS",
    "Cell",
    "CellResult",
    "nucleus_channel",
    "detect_nuclei",
    "Compartments",
    "cell_compartments",
    "measure_cells",
    "classify_cells",
    "label_polygons",
    "detect_cells",
]

log = logging.getLogger(__name__)

#: Names of the per-cell measurements, in the order they are written.
MEASUREMENTS: tuple[str, ...] = (
    "Nucleus: Area µm^2",
    "Cell: Area µm^2",
    "Nucleus: Hematoxylin OD mean",
    "Nucleus: DAB OD mean",
    "Nucleus: DAB OD max",
    "Cytoplasm: DAB OD mean",
    "Cytoplasm: DAB OD max",
    "Membrane: DAB OD mean",
    "Membrane: DAB OD max",
    "Membrane: completeness",
    "Membrane: stained DAB OD",
    "Membrane: line density OD·µm",
    "Cell: DAB OD mean",
)


# ----------------------------------------------------------------------------- checks


def _check_mpp(mpp: float) -> float:
    try:
        value = float(mpp)
    except (TypeError, ValueError) as err:
        raise UserInputError(
            f"pixel size must be a number, got {mpp!r}", hint="pass mpp in micrometres per pixel"
        ) from err
    if not math.isfinite(value) or value <= 0:
        raise UserInputError(
            f"pixel size must be a positive number of micrometres per pixel, got {mpp!r}",
            hint="pass the tile's mpp, e.g. 0.25 at 40x or 0.5 at 20x",
        )
    return value


def _check_config(config: CellConfig, stain: StainConfig) -> None:
    t1, t2, t3 = stain.thresholds
    if not 0 < t1 <= t2 <= t3:
        raise UserInputError(
            f"DAB thresholds must satisfy 0 < 1+ <= 2+ <= 3+, got {stain.thresholds}",
            hint="set StainConfig.thresholds to increasing OD values such as (0.2, 0.4, 0.6)",
        )
    fractions = {
        "complete_fraction": config.complete_fraction,
        "min_positive_fraction": config.min_positive_fraction,
        "strong_partial_fraction": config.strong_partial_fraction,
    }
    for name, value in fractions.items():
        if not 0 < value <= 1:
            raise UserInputError(
                f"CellConfig.{name} must lie in (0, 1], got {value}",
                hint="give a fraction of the membrane ring, e.g. 0.7",
            )
    if config.membrane_width_um <= 0 or config.membrane_layer_um <= 0:
        raise UserInputError(
            "CellConfig.membrane_width_um and membrane_layer_um must be positive, got "
            f"{config.membrane_width_um} and {config.membrane_layer_um}",
            hint="e.g. membrane_width_um=3, membrane_layer_um=0.5",
        )
    if config.completeness_sectors < 4:
        raise UserInputError(
            f"CellConfig.completeness_sectors must be at least 4, got {config.completeness_sectors}",
            hint="36 sectors (10 degrees each) is the default",
        )
    if not 0 <= config.split_min_dip < 1:
        raise UserInputError(
            f"CellConfig.split_min_dip must lie in [0, 1), got {config.split_min_dip}",
            hint="give the fraction of a seed's LoG peak its response must dip by, e.g. 0.25 "
            "(0 keeps every seed)",
        )
    if config.nucleus_min_area_um2 >= config.nucleus_max_area_um2:
        raise UserInputError(
            "CellConfig.nucleus_min_area_um2 must be below nucleus_max_area_um2, got "
            f"{config.nucleus_min_area_um2} and {config.nucleus_max_area_um2}",
            hint="typical nuclei are 10-400 µm^2",
        )
    if config.nucleus_channel not in ("hematoxylin", "hematoxylin+dab"):
        raise UserInputError(
            f"unknown CellConfig.nucleus_channel {config.nucleus_channel!r}",
            hint='use "hematoxylin" (membrane stains such as HER2) or "hematoxylin+dab" '
            "(nuclear stains such as Ki67)",
        )


# ----------------------------------------------------------------------------- nuclei


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


def _argsort_float32(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, sorted keys) of a flat float32 array without NaN, ascending, ties by index.

    Sorts 64-bit integers (the float's order-preserving bit pattern above the
    index), which NumPy does several times faster than ``argsort`` of floats.
    """
    bits = (values + np.float32(0.0)).view(np.uint32)  # -0.0 becomes +0.0
    key = np.where(bits >= np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    packed = (key.astype(np.uint64) << np.uint64(32)) | np.arange(values.size, dtype=np.uint64)
    packed.sort()
    return (packed & np.uint64(0xFFFFFFFF)).astype(np.int64), packed >> np.uint64(32)


def _reconstruction_by_dilation(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
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
    order, keys = _argsort_float32(flat)
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
    from skimage.segmentation import relabel_sequential, watershed

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

    area_um2 = np.bincount(labels.ravel()) * (mpp * mpp)
    drop = (area_um2 < config.nucleus_min_area_um2) | (area_um2 > config.nucleus_max_area_um2)
    drop[0] = False
    labels[drop[labels]] = 0
    labels = relabel_sequential(labels)[0].astype(np.int32, copy=False)
    log.debug("detected %d nuclei from %d seeds", int(labels.max()), len(peaks))
    return labels


# ----------------------------------------------------------------------------- cells


class Compartments(NamedTuple):
    """Label images of the cell compartments (label i = cell i) and the boundary depth."""

    cells: np.ndarray  # int32, nucleus + cytoplasm + membrane
    membranes: np.ndarray  # int32, the band along the cell boundary, outside the nucleus
    cytoplasm: np.ndarray  # int32, the rest of the cell outside the nucleus
    depth: np.ndarray  # float32, distance (pixels) of each pixel to its cell's boundary


def _distance_to_zero(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (float32 pixels) of each pixel to the nearest false pixel of ``mask``.

    The values of ``scipy.ndimage.distance_transform_edt(mask)`` rounded to
    float32, computed with OpenCV's exact transform several times faster; its
    float32 result is snapped to the square root of the integer squared
    distance, so the two agree to the last bit (checked on hundreds of random
    masks with distances up to about 900 pixels; the analysis only uses
    distances below the membrane band, tens of pixels). ``mask`` must hold a
    false pixel.
    """
    import cv2

    approx = cv2.distanceTransform(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )
    squared = np.rint(np.square(approx, dtype=np.float64))
    return np.sqrt(squared).astype(np.float32)


def cell_compartments(
    nuclei: np.ndarray,
    mpp: float,
    config: CellConfig = CellConfig(),  # noqa: B008
) -> Compartments:
    """Cells, membranes and cytoplasm grown from a nucleus label image.

    Cells: each nucleus expanded by at most ``expansion_um`` without touching
    another (the label of a cell is the label of its nucleus). Membrane: the
    cell pixels within ``membrane_width_um`` of the cell's boundary (where it
    meets another cell or unassigned tissue), outside the nucleus. A cell
    whose nucleus reaches its boundary has a partial ring there; the tile
    edge is not a boundary. Cytoplasm: the rest of the cell outside the nucleus.
    """
    from skimage.segmentation import expand_labels, find_boundaries

    mpp = _check_mpp(mpp)
    nuclei = np.asarray(nuclei, dtype=np.int32)
    cells = expand_labels(nuclei, distance=config.expansion_um / mpp).astype(np.int32, copy=False)
    inner = find_boundaries(cells, mode="inner")
    if inner.any():
        depth = _distance_to_zero(~inner)
    else:
        depth = np.full(cells.shape, np.inf, dtype=np.float32)
    band = depth < config.membrane_width_um / mpp
    outside_nucleus = nuclei == 0
    membranes = np.where(band & outside_nucleus, cells, 0).astype(np.int32, copy=False)
    cytoplasm = np.where(~band & outside_nucleus, cells, 0).astype(np.int32, copy=False)
    return Compartments(cells, membranes, cytoplasm, depth)


class _Pixels(NamedTuple):
    """The labelled pixels of a label image: flat indices and their labels (row-major)."""

    index: np.ndarray  # flat pixel indices, increasing
    label: np.ndarray  # their labels, >= 1


def _pixels(labels: np.ndarray) -> _Pixels:
    flat = labels.ravel()
    index = np.flatnonzero(flat)
    return _Pixels(index, flat[index])


def _label_mean(
    labels: np.ndarray | _Pixels, values: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, count) of ``values`` per label 1..n; NaN where a label has no pixels.

    ``labels`` is a label image or its :func:`_pixels`; ``values`` an image of
    the same shape. Sums run over the labelled pixels only, in row-major
    order (the same sums as over the whole image).
    """
    px = labels if isinstance(labels, _Pixels) else _pixels(labels)
    count = np.bincount(px.label, minlength=n + 1)[1 : n + 1]
    weights = values.reshape(-1)[px.index]
    total = np.bincount(px.label, weights=weights, minlength=n + 1)[1 : n + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, count


def _label_max(labels: np.ndarray | _Pixels, values: np.ndarray, n: int) -> np.ndarray:
    """Maximum of ``values`` per label 1..n; NaN where a label has no pixels."""
    if n == 0:
        return np.zeros(0)
    px = labels if isinstance(labels, _Pixels) else _pixels(labels)
    out = np.full(n + 1, -np.inf)
    np.maximum.at(out, px.label, values.reshape(-1)[px.index].astype(np.float64))
    present = np.bincount(px.label, minlength=n + 1)[1 : n + 1] > 0
    return np.where(present, out[1 : n + 1], np.nan)


def _centroids(labels: np.ndarray | _Pixels, n: int, width: int | None = None) -> np.ndarray:
    """(n, 2) centroids ``(x, y)`` in QuPath pixel coordinates (pixel centres at +0.5).

    ``width`` (the image's number of columns) is needed when ``labels`` is a
    :func:`_pixels`.
    """
    if not isinstance(labels, _Pixels):
        width = labels.shape[1]
        labels = _pixels(labels)
    if not n:
        return np.zeros((0, 2))
    assert width is not None
    rows, cols = np.divmod(labels.index, width)
    count = np.bincount(labels.label, minlength=n + 1)[1 : n + 1]
    sums = [np.bincount(labels.label, weights=v, minlength=n + 1)[1 : n + 1] for v in (rows, cols)]
    with np.errstate(invalid="ignore", divide="ignore"):
        cy, cx = (np.where(count > 0, t / np.maximum(count, 1), np.nan) for t in sums)
    return np.stack([cx + 0.5, cy + 0.5], axis=1)


def _membrane_sectors(
    membranes: np.ndarray,
    depth: np.ndarray,
    dab: np.ndarray,
    centres_rc: np.ndarray,
    n: int,
    threshold: float,
    sectors: int,
    bin_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Angular completeness and stained-part intensity of each cell's membrane ring.

    Ring pixels are binned into ``sectors`` equal angles around the cell centre
    ``centres_rc`` (row, col) and, within a sector, into layers of ``bin_px``
    pixels by their depth from the cell boundary. A sector's DAB OD is the
    largest layer mean: the membrane line is found wherever it runs across the
    band (on the boundary between packed cells, or inside the band of a cell
    whose true outline is smaller than its expansion), and averaging along the
    layer keeps single specks from counting. A sector is stained when that
    value reaches ``threshold``. Completeness = stained sectors / sectors
    holding ring pixels (0 when the ring is empty); intensity = the median
    value of the stained sectors (0 when none is stained).
    """
    if n == 0:
        return np.zeros(0), np.zeros(0)
    rr, cc = np.nonzero(membranes)
    lab = membranes[rr, cc].astype(np.int64) - 1
    angle = np.arctan2(rr - centres_rc[lab, 0], cc - centres_rc[lab, 1])
    sector = np.minimum(((angle + np.pi) * (sectors / (2 * np.pi))).astype(np.int64), sectors - 1)
    layer = (depth[rr, cc] / max(bin_px, 1e-6)).astype(np.int64)
    layers = int(layer.max()) + 1 if layer.size else 1
    key = (lab * sectors + sector) * layers + layer
    size = n * sectors * layers
    count = np.bincount(key, minlength=size)
    total = np.bincount(key, weights=dab[rr, cc], minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        layer_mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    sector_od = layer_mean.reshape(n, sectors, layers).max(axis=2)
    present = count.reshape(n, sectors, layers).sum(axis=2) > 0
    stained = present & (sector_od >= threshold)
    n_present = present.sum(axis=1)
    n_stained = stained.sum(axis=1)
    completeness = n_stained / np.maximum(n_present, 1)
    # median of the stained sectors: sort each row descending with the others at -inf
    desc = -np.sort(-np.where(stained, sector_od, -np.inf), axis=1)
    rows = np.arange(n)
    lo = np.maximum(n_stained - 1, 0) // 2
    hi = np.minimum(n_stained // 2, sectors - 1)
    median = 0.5 * (desc[rows, lo] + desc[rows, hi])
    intensity = np.where(n_stained > 0, median, 0.0)
    return completeness.astype(np.float64), intensity.astype(np.float64)


def measure_cells(
    od: np.ndarray,
    nuclei: np.ndarray,
    compartments: Compartments,
    mpp: float,
    config: CellConfig = CellConfig(),  # noqa: B008
    stain: StainConfig = StainConfig(),  # noqa: B008
    line: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-cell measurements (:data:`MEASUREMENTS`), arrays of length ``cells.max()``.

    Means and maxima are of the deconvolved OD (``od[..., 0]`` hematoxylin,
    ``od[..., 1]`` DAB) over each compartment; a compartment without pixels
    gives NaN (as QuPath does). ``Membrane: completeness`` is angular (see
    :func:`_membrane_sectors`, threshold = the 1+ DAB OD), and
    ``Membrane: stained DAB OD`` is the median DAB OD of the stained sectors
    of the ring (the intensity of the part of the membrane that is stained).

    With ``line`` (the membrane line density of :func:`her2_qupath.membrane.line_density`,
    ``stain.intensity == "membrane"``) the sectors grade that instead, against
    ``config.membrane_thresholds[0]``: ``Membrane: line density OD·µm`` is then
    the median of the stained sectors and ``Membrane: stained DAB OD`` is left
    out (NaN).
    """
    mpp = _check_mpp(mpp)
    cells, membranes, cytoplasm, depth = compartments
    n = int(cells.max()) if cells.size else 0
    hema = np.ascontiguousarray(od[..., 0])
    dab = np.ascontiguousarray(od[..., 1])
    px_um2 = mpp * mpp
    nuc, cel, mem, cyt = (_pixels(x) for x in (nuclei, cells, membranes, cytoplasm))
    out: dict[str, np.ndarray] = {}
    hema_mean, n_count = _label_mean(nuc, hema, n)
    cell_dab, c_count = _label_mean(cel, dab, n)
    out["Nucleus: Area µm^2"] = n_count * px_um2
    out["Cell: Area µm^2"] = c_count * px_um2
    out["Nucleus: Hematoxylin OD mean"] = hema_mean
    out["Nucleus: DAB OD mean"] = _label_mean(nuc, dab, n)[0]
    out["Nucleus: DAB OD max"] = _label_max(nuc, dab, n)
    out["Cytoplasm: DAB OD mean"] = _label_mean(cyt, dab, n)[0]
    out["Cytoplasm: DAB OD max"] = _label_max(cyt, dab, n)
    out["Membrane: DAB OD mean"] = _label_mean(mem, dab, n)[0]
    out["Membrane: DAB OD max"] = _label_max(mem, dab, n)
    centres = _centroids(cel, n, cells.shape[1])[:, ::-1] - 0.5  # (row, col) of pixel centres
    graded = dab if line is None else np.ascontiguousarray(line, dtype=np.float32)
    completeness, stained = _membrane_sectors(
        membranes,
        depth,
        graded,
        centres,
        n,
        stain.thresholds[0] if line is None else config.membrane_thresholds[0],
        config.completeness_sectors,
        max(1.0, config.membrane_layer_um / mpp),
    )
    nan = np.full(n, np.nan)
    out["Membrane: completeness"] = completeness
    out["Membrane: stained DAB OD"] = stained if line is None else nan
    out["Membrane: line density OD·µm"] = nan if line is None else stained
    out["Cell: DAB OD mean"] = cell_dab
    return {name: out[name] for name in MEASUREMENTS}


def classify_cells(
    measurements: dict[str, np.ndarray],
    config: CellConfig = CellConfig(),  # noqa: B008
    stain: StainConfig = StainConfig(),  # noqa: B008
) -> np.ndarray:
    """HER2 membrane class of each cell, int8 0..3 (0, 1+, 2+, 3+).

    With ``I`` the intensity of the stained part of the ring
    (``Membrane: line density OD·µm`` against ``config.membrane_thresholds``
    when ``stain.intensity == "membrane"``, else ``Membrane: stained DAB OD``
    against ``stain.thresholds``), ``C`` = ``Membrane: completeness`` and
    ``complete = C >= complete_fraction``:

    * **3+**: ``I >= t3`` and complete (strong, complete ring);
    * **2+**: ``I >= t2`` and complete (weak to moderate, complete), or
      ``I >= t3`` and ``C >= strong_partial_fraction`` (strong but incomplete,
      e.g. the U-shaped basolateral pattern);
    * **1+**: ``C >= min_positive_fraction`` (a faint or incomplete ring: at
      least that fraction of the ring reaches ``t1``);
    * **0**: otherwise.
    """
    if stain.intensity == "membrane":
        t1, t2, t3 = config.membrane_thresholds
        key = "Membrane: line density OD·µm"
    else:
        t1, t2, t3 = stain.thresholds
        key = "Membrane: stained DAB OD"
    intensity = np.nan_to_num(np.asarray(measurements[key], dtype=np.float64))
    comp = np.nan_to_num(np.asarray(measurements["Membrane: completeness"], dtype=np.float64))
    complete = comp >= config.complete_fraction
    cls = np.zeros(intensity.shape, dtype=np.int8)
    cls[(comp >= config.min_positive_fraction) & (intensity >= t1)] = 1
    cls[
        ((intensity >= t2) & complete)
        | ((intensity >= t3) & (comp >= config.strong_partial_fraction))
    ] = 2
    cls[(intensity >= t3) & complete] = 3
    return cls


# ----------------------------------------------------------------------------- outlines


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


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class Cell:
    """One detected cell, in tile pixel coordinates (QuPath convention).

    ``measurements`` holds the finite values of :data:`MEASUREMENTS` (a
    compartment without pixels, e.g. no cytoplasm, leaves its entries out).
    """

    id: int
    her2_class: int
    centroid: tuple[float, float]
    nucleus_polygon: Any
    cell_polygon: Any
    measurements: dict[str, float]
    touches_border: bool = False

    @property
    def classification(self) -> str:
        """QuPath classification name, ``"HER2 0"`` … ``"HER2 3+"``."""
        return HER2_CLASSES[self.her2_class]


@dataclass(frozen=True, eq=False)
class CellResult:
    """The cells of one tile. Cell ``i`` (0-based) has label ``i + 1`` in every label image.

    Attributes:
        cells: the :class:`Cell` objects (outlines, class, measurements), in label order.
        nucleus_labels, cell_labels, membrane_labels, cytoplasm_labels: int32 label images.
        centroids: ``(n, 2)`` nucleus centroids ``(x, y)`` in tile pixels.
        classes: ``(n,)`` int8 HER2 class 0..3 (names in :data:`HER2_CLASSES`).
        measurements: name -> ``(n,)`` float array (NaN = compartment without pixels).
        touches_border: ``(n,)`` bool, the cell reaches the tile edge (it may be cut).
        mpp: pixel size of the tile in micrometres.
        nucleus_polygons, cell_polygons: the outlines (shapely polygons, label order; None
            without outlines). ``cells`` is empty when detected with ``objects=False``.
    """

    cells: list[Cell]
    nucleus_labels: np.ndarray
    cell_labels: np.ndarray
    membrane_labels: np.ndarray
    cytoplasm_labels: np.ndarray
    centroids: np.ndarray
    classes: np.ndarray
    measurements: dict[str, np.ndarray]
    touches_border: np.ndarray
    mpp: float
    nucleus_polygons: Sequence[Any] | None = None
    cell_polygons: Sequence[Any] | None = None

    def __len__(self) -> int:
        return len(self.classes)

    def class_counts(self, *, include_border: bool = True) -> np.ndarray:
        """Number of cells at 0, 1+, 2+, 3+ (int64, length 4)."""
        cls = self.classes if include_border else self.classes[~self.touches_border]
        return np.bincount(cls.astype(np.int64), minlength=4)[:4]


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise UserInputError(
            f"expected a uint8 RGB tile of shape (rows, cols, 3), got {a.dtype} {a.shape}",
            hint="read the tile as 8-bit RGB (an alpha channel is dropped)",
        )
    return a[..., :3]


def detect_cells(
    rgb: np.ndarray,
    mpp: float,
    config: CellConfig = CellConfig(),  # noqa: B008
    stain: StainConfig = StainConfig(),  # noqa: B008
    *,
    vectors: StainVectors | None = None,
    background: Any = None,
    polygons: bool = True,
    objects: bool = True,
) -> CellResult:
    """Detect, measure and classify the cells of one RGB IHC tile.

    ``vectors`` are the stain vectors (default: ``StainVectors.default(stain)``,
    QuPath's H-DAB); ``background`` the white point ``(r, g, b)`` — estimate it
    once per slide (:func:`her2_qupath.stain.estimate_background` on a
    thumbnail) and pass it, as a tile full of tissue shows no glass. The
    method and every parameter are described in the module docstring and in
    ``docs/cells.md``.

    ``polygons=False`` skips the outlines (about a fifth of the time) for
    callers that need only the classes and measurements: each cell's
    ``nucleus_polygon`` and ``cell_polygon`` are then None. ``objects=False``
    leaves out the :class:`Cell` objects (``cells`` is empty): the columns and
    outlines are all a whole-slide run needs (:mod:`her2_qupath.cell_table`).
    """
    from .stain import StainVectors, deconvolve

    a = _as_rgb(rgb)
    mpp = _check_mpp(mpp)
    _check_config(config, stain)
    if vectors is None:
        vectors = StainVectors.default(stain)
    if background is None:
        background = stain.background
    line = None
    if stain.intensity == "membrane":
        from .membrane import line_density, membrane_maps
        from .stain import _background

        maps = membrane_maps(a, vectors, tuple(_background(background, a, stain)))
        od = maps.stack()
        line = line_density(maps.membrane_dab, mpp, stain)
    else:
        od = deconvolve(a, vectors, background)
    nuclei = detect_nuclei(nucleus_channel(od, config), mpp, config)
    n = int(nuclei.max())
    compartments = cell_compartments(nuclei, mpp, config)
    cells, membranes, cytoplasm, _ = compartments
    measurements = measure_cells(od, nuclei, compartments, mpp, config, stain, line)
    classes = classify_cells(measurements, config, stain)
    edge = np.zeros(n + 1, dtype=bool)
    edge[np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])] = True
    tol = config.polygon_tolerance_px
    if polygons:
        nucleus_polygons = label_polygons(nuclei, n, tolerance=tol)
        cell_polygons = label_polygons(cells, n, tolerance=tol)
    else:
        nucleus_polygons = cell_polygons = [None] * n
    centroids = _centroids(nuclei, n)
    touches = edge[1:]
    table = (
        np.column_stack([measurements[k] for k in MEASUREMENTS])
        if n and objects
        else np.zeros((0, len(MEASUREMENTS)))
    )
    cell_list = [
        Cell(
            id=i + 1,
            her2_class=int(classes[i]),
            centroid=(float(centroids[i, 0]), float(centroids[i, 1])),
            nucleus_polygon=nucleus_polygons[i],
            cell_polygon=cell_polygons[i],
            measurements={
                k: float(v) for k, v in zip(MEASUREMENTS, table[i], strict=True) if math.isfinite(v)
            },
            touches_border=bool(touches[i]),
        )
        for i in range(n)
    ] if objects else []
    result = CellResult(
        cells=cell_list,
        nucleus_labels=nuclei,
        cell_labels=cells,
        membrane_labels=membranes,
        cytoplasm_labels=cytoplasm,
        centroids=centroids,
        classes=classes,
        measurements=measurements,
        touches_border=touches,
        mpp=mpp,
        nucleus_polygons=nucleus_polygons if polygons else None,
        cell_polygons=cell_polygons if polygons else None,
    )
    log.debug("cells: %d, classes 0/1+/2+/3+ = %s", n, result.class_counts().tolist())
    return result
