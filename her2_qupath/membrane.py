"""Membrane staining of HER2 IHC: how much DAB lies on the membranes, whatever the pixel size.

HER2 stains the cell membrane, a line well under a micrometre wide. Seen at
0.25-0.5 µm/px that line is blurred over a few pixels, so its peak DAB optical
density depends on the optics and the pixel size: a strongly stained (3+)
membrane peaks near 0.4 OD, far below QuPath's 3+ cut-off of 0.6 meant for
nuclear and cytoplasmic compartment means. What does not depend on the blur is
the *integrated* absorbance across the line, OD × width, in OD·µm.

**Membrane DAB.** The DAB optical density is unmixed with a *neutral* third
stain, (1, 1, 1)/√3, instead of Ruifrok's cross-product residual: grey
absorbers (red blood cells seen without eosin, pigment, refractile fold edges,
JPEG artefacts) then land in the neutral channel instead of adding to DAB.
Measured on the real HER2 IHC of ``../shared/data/her2-ihc``: the top 1 % of
"DAB" on unstained gastric cores is grey, OD direction (0.58, 0.61, 0.54);
the neutral unmixing cuts the share of tissue carrying faint membrane lines on
those cores from 3-4 % to 0.4-0.6 % while a faint 1+ core keeps 16 %
(``docs/stain.md``).

**Line density** ``L`` (OD·µm): the membrane DAB smoothed by a Gaussian of
``membrane_sigma_um`` (1 µm, wider than any membrane), minus its grey opening
by a disk of diameter ``membrane_max_width_um`` (4 µm: diffuse cytoplasmic and
background staining wider than that is removed), times ``sigma * sqrt(2 pi)``.
For a line narrower than sigma this is its integrated absorbance across the
line, OD × width, and the same at 0.25 and 0.5 µm/px.

**Membrane intensity of a neighbourhood.** A tile is cut into blocks of
``membrane_block_um`` (8 µm, about one cell); a block's intensity is the
``membrane_block_quantile`` (0.9) of ``L`` inside it: the level reached by its
membrane (a membrane crossing an 8 µm block covers 10-30 % of it), not by
single specks. A block is scored when its mean OD sum (against the white
point, :mod:`her2_qupath.optics`) reaches ``membrane_tissue_od_sum``: glass,
fat, lumina and loose pale stroma stay below it, cellular tumour above. Its
HER2 class is the highest of 1+, 2+, 3+ whose ``membrane_thresholds`` the
intensity reaches, else 0. The pixel class map gives every pixel of a tissue
block its block's class, so a pixel percentage reads as
"the share of the tumour area (≈ of its cells) whose membrane reaches that
intensity" — the guideline's "% of tumour cells" measured by area.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import StainConfig
from .errors import UserInputError
from .optics import as_rgb8, od_lut

__all__ = [
    "NEUTRAL",
    "unmixing_matrix",
    "MembraneMaps",
    "membrane_maps",
    "line_density",
    "block_intensity",
    "block_membrane_intensity",
    "classify_intensity",
    "membrane_blocks",
    "block_pixels",
    "upsample_blocks",
    "class_map_from_blocks",
    "membrane_class_map",
    "nucleus_peaks",
    "count_nuclei",
    "count_peaks",
    "cell_density_blocks",
]

#: The neutral (grey) third stain of the membrane unmixing.
NEUTRAL: tuple[float, float, float] = (1.0, 1.0, 1.0)


def unmixing_matrix(vectors: Any) -> np.ndarray:
    """3 x 3 float64 matrix: OD -> [hematoxylin, DAB, membrane DAB].

    The first two columns are the ordinary deconvolution by ``vectors``
    (:class:`~her2_qupath.stain.StainVectors`, Ruifrok's residual); the third
    is the DAB of the unmixing by hematoxylin, DAB and :data:`NEUTRAL`.
    """
    h = np.asarray(vectors.hematoxylin, np.float64)
    d = np.asarray(vectors.dab, np.float64)
    n = np.asarray(NEUTRAL, np.float64) / math.sqrt(3.0)
    m = np.array([h / np.linalg.norm(h), d / np.linalg.norm(d), n])
    if abs(np.linalg.det(m)) < 1e-3:
        raise UserInputError(
            "the hematoxylin and DAB vectors are too close to grey to separate membrane DAB",
            hint="check the stain vectors (QuPath's 'Estimate stain vectors'), or use "
            "--intensity od",
        )
    out = np.empty((3, 3), dtype=np.float64)
    out[:, :2] = vectors.inverse[:, :2]
    out[:, 2] = np.linalg.inv(m)[:, 1]
    return out


@dataclass(frozen=True)
class MembraneMaps:
    """The stain planes of one tile (float32, the tile's shape)."""

    hematoxylin: np.ndarray
    dab: np.ndarray  # ordinary deconvolution (QuPath's "DAB OD")
    membrane_dab: np.ndarray  # neutral-corrected DAB
    od_sum: np.ndarray  # summed OD (R+G+B, each clipped at 0) for the tissue test


_LOCAL = threading.local()


def _scratch(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work buffer of ``shape`` reused by the calls of one thread.

    A fresh multi-megabyte array costs its page faults on every tile; the same
    buffer is already mapped. One buffer per shape, a few shapes (a cell-level tile
    alternates between its core and the core with its margin).
    """
    bufs = getattr(_LOCAL, "od", None)
    if bufs is None:
        bufs = _LOCAL.od = {}
    buf = bufs.get(shape)
    if buf is None:
        while len(bufs) >= 4:
            bufs.pop(next(iter(bufs)))
        buf = bufs[shape] = np.empty(shape, np.float32)
    return buf


def membrane_maps(rgb: np.ndarray, vectors: Any, background: Any) -> MembraneMaps:
    """Hematoxylin, DAB, membrane DAB and OD sum of an RGB tile.

    One lookup table (uint8 -> OD against the white point) and two OpenCV
    transforms with 3 and 1 outputs, the shapes OpenCV vectorises.
    """
    import cv2

    a = as_rgb8(rgb, "tile")
    od = _scratch(a.shape)  # the per-channel OD stays internal: one buffer per thread
    cv2.LUT(a, np.ascontiguousarray(od_lut(background).reshape(1, 256, 3)), dst=od)
    m = unmixing_matrix(vectors).T.astype(np.float32)  # cv2.transform: dst = M @ src
    planes = cv2.transform(od, m)
    cv2.max(od, 0.0, dst=od)  # type: ignore[call-overload]
    odsum = cv2.transform(od, np.ones((1, 3), np.float32)).reshape(a.shape[:2])
    # the three planes contiguous, in one pass (the filters and compiled loops want them so)
    hematoxylin, dab, membrane_dab = cv2.split(planes)
    return MembraneMaps(hematoxylin, dab, membrane_dab, odsum)


def _check_mpp(mpp: float) -> float:
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise UserInputError(f"pixel size must be a positive number, got {mpp!r}",
                             hint="pass the tile's µm per pixel")
    return float(mpp)


def line_density(dab: np.ndarray, mpp: float, config: StainConfig = StainConfig()) -> np.ndarray:  # noqa: B008
    """Membrane line density ``L`` (OD·µm, float32) of a membrane-DAB plane; see the module doc."""
    import cv2

    mpp = _check_mpp(mpp)
    d = np.ascontiguousarray(dab, dtype=np.float32)
    if d.size == 0:
        return d.copy()
    sigma_px = config.membrane_sigma_um / mpp
    smooth = cv2.GaussianBlur(d, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    radius = max(1, int(round(config.membrane_max_width_um / 2.0 / mpp)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    opened = cv2.morphologyEx(smooth, cv2.MORPH_OPEN, disk, borderType=cv2.BORDER_REFLECT)
    out = smooth - opened
    out *= np.float32(config.membrane_sigma_um * math.sqrt(2.0 * math.pi))
    return out


def _block_px(mpp: float, config: StainConfig) -> int:
    return max(2, int(round(config.membrane_block_um / mpp)))


def _work_factor(mpp: float, config: StainConfig) -> int:
    """Integer reduction to about ``membrane_work_um`` that keeps whole blocks (1: none)."""
    b = _block_px(mpp, config)
    f = int(config.membrane_work_um / mpp + 1e-9)
    while f >= 2 and b % f:
        f -= 1
    return max(f, 1)


def block_membrane_intensity(dab: np.ndarray, mpp: float,
                             config: StainConfig = StainConfig()) -> np.ndarray:  # noqa: B008
    """Block intensities of a membrane-DAB plane: :func:`line_density` then :func:`block_intensity`.

    Computed at ``membrane_work_um`` (1 µm/px; the plane is area-averaged down by
    a whole factor, which keeps the integrated absorbance of a line and four
    times fewer pixels to filter). The blocks are those of the full-resolution tile.
    ``membrane_gain`` makes a block crossed by a membrane of OD × width ``I`` read
    ``I`` OD·µm: the smoothed line sampled at 1 µm and the block's 90th percentile
    read 0.725 of it, the same at 0.25 and 0.5 µm/px and for 0.6 or 1 µm wide
    membranes (``tests/test_membrane.py``).
    """
    import cv2

    mpp = _check_mpp(mpp)
    d: np.ndarray = np.ascontiguousarray(dab, dtype=np.float32)
    f = _work_factor(mpp, config)
    if f > 1 and d.shape[0] >= 2 * f and d.shape[1] >= 2 * f:
        rows, cols = d.shape
        d = cv2.resize(d, (cols // f, rows // f), interpolation=cv2.INTER_AREA)
        if rows % f or cols % f:  # the last partial pixels: keep the block grid's extent
            d = cv2.copyMakeBorder(d, 0, -(-rows // f) - rows // f, 0, -(-cols // f) - cols // f,
                                   cv2.BORDER_REPLICATE)
        mpp = mpp * f
    inten = block_intensity(line_density(d, mpp, config), mpp, config)
    inten *= np.float32(config.membrane_gain)
    return inten


def _blocks(a: np.ndarray, b: int, fill: float) -> np.ndarray:
    """``(block rows, block cols, b * b)`` view of a plane padded with ``fill``."""
    rows, cols = a.shape
    br, bc = -(-rows // b), -(-cols // b)
    p = np.pad(a, ((0, br * b - rows), (0, bc * b - cols)), constant_values=fill)
    return p.reshape(br, b, bc, b).transpose(0, 2, 1, 3).reshape(br, bc, b * b)


def block_intensity(line: np.ndarray, mpp: float,
                    config: StainConfig = StainConfig()) -> np.ndarray:  # noqa: B008
    """Membrane intensity of each block: the ``membrane_block_quantile`` of ``L`` in it.

    ``(block rows, block cols)`` float32; blocks at the right and bottom edges
    are partial (the quantile is over the pixels they hold).
    """
    b = _block_px(_check_mpp(mpp), config)
    line = np.asarray(line, np.float32)
    rows, cols = line.shape
    if rows % b == 0 and cols % b == 0:  # whole blocks: one partition
        blocks = line.reshape(rows // b, b, cols // b, b).transpose(0, 2, 1, 3).reshape(
            rows // b, cols // b, b * b)
        k = int(np.ceil(config.membrane_block_quantile * b * b)) - 1
        return np.partition(blocks, k, axis=2)[..., k].astype(np.float32)
    blocks = _blocks(line, b, -np.inf)
    valid = np.isfinite(blocks).sum(axis=2)
    k = np.clip(np.ceil(config.membrane_block_quantile * valid).astype(np.int64) - 1, 0, b * b - 1)
    k += b * b - np.maximum(valid, 1)  # the padding (-inf) sorts first
    srt = np.sort(blocks, axis=2)
    inten = np.take_along_axis(srt, np.minimum(k, b * b - 1)[..., None], axis=2)[..., 0]
    return np.where(np.isfinite(inten), inten, 0.0).astype(np.float32)


def block_mean(plane: np.ndarray, mpp: float, config: StainConfig = StainConfig()) -> np.ndarray:  # noqa: B008
    """Mean of a plane over each membrane block (partial edge blocks over what they hold)."""
    import cv2

    b = _block_px(_check_mpp(mpp), config)
    p = np.asarray(plane, np.float32)
    rows, cols = p.shape
    br, bc = -(-rows // b), -(-cols // b)
    if rows % b == 0 and cols % b == 0:
        return cv2.resize(p, (bc, br), interpolation=cv2.INTER_AREA)
    blocks = _blocks(p, b, np.nan)
    return np.nan_to_num(np.nanmean(blocks, axis=2)).astype(np.float32)


def classify_intensity(values: np.ndarray, thresholds: tuple[float, float, float]) -> np.ndarray:
    """HER2 class 0..3 (int8) of membrane intensities: the highest threshold reached."""
    t1, t2, t3 = thresholds
    if not 0 < t1 < t2 < t3:
        raise UserInputError(f"membrane thresholds must increase, got {thresholds}",
                             hint="e.g. 0.03,0.08,0.2 (OD·µm)")
    v = np.asarray(values)
    return ((v >= t1).astype(np.int8) + (v >= t2) + (v >= t3)).astype(np.int8)


def membrane_blocks(
    maps: MembraneMaps, mpp: float, config: StainConfig = StainConfig(),  # noqa: B008
    tissue_mask: np.ndarray | None = None, od_blocks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per block of a tile: its membrane intensity, and whether it is scored tissue.

    A block is scored when its mean OD sum reaches ``config.membrane_tissue_od_sum``
    (the block mean is far less noisy than a pixel; glass, the inside of fat
    cells, empty lumina and loose pale stroma stay below it, the cellular tissue
    of a tumour above — the tumour restriction on IHC alone that helped on the
    real data, docs/stain.md) and, with ``tissue_mask`` (e.g. an ROI), when at least
    ``membrane_block_min_tissue`` of it lies in the mask. With
    ``config.min_cell_density`` > 0 (off by default: it did not help on the real
    data, docs/stain.md) blocks among fewer nuclei than that per 1000 µm²
    (:func:`cell_density_blocks`: stroma, fat) are left out as well.
    """
    mpp = _check_mpp(mpp)
    if od_blocks is None:
        od_blocks = block_mean(maps.od_sum, mpp, config)
    tissue = od_blocks >= np.float32(config.membrane_tissue_od_sum)
    if tissue_mask is not None:
        tm = np.asarray(tissue_mask, dtype=bool)
        if tm.shape != maps.od_sum.shape:
            raise UserInputError(f"tissue_mask shape {tm.shape} differs from the tile's {maps.od_sum.shape}",
                                 hint="resize the mask to the tile")
        tissue &= block_mean(tm.astype(np.float32), mpp, config) >= config.membrane_block_min_tissue
    if config.min_cell_density > 0:  # the optional tumour restriction on IHC alone
        tissue &= cell_density_blocks(maps.hematoxylin, mpp, tissue.shape, config) \
            >= config.min_cell_density
    inten = block_membrane_intensity(maps.membrane_dab, mpp, config)
    return inten, tissue


def block_pixels(shape: tuple[int, int], mpp: float,
                 config: StainConfig = StainConfig()) -> np.ndarray:  # noqa: B008
    """Pixels each membrane block of a tile of ``shape`` holds (int64; edge blocks are partial)."""
    b = _block_px(_check_mpp(mpp), config)
    rows, cols = shape
    hb = np.minimum(b, rows - b * np.arange(-(-rows // b)))
    wb = np.minimum(b, cols - b * np.arange(-(-cols // b)))
    return (hb[:, None] * wb[None, :]).astype(np.int64)


def upsample_blocks(blocks: np.ndarray, shape: tuple[int, int], mpp: float,
                    config: StainConfig = StainConfig()) -> np.ndarray:  # noqa: B008
    """A per-block array spread over the pixels of a tile of ``shape``."""
    b = _block_px(_check_mpp(mpp), config)
    return np.repeat(np.repeat(blocks, b, axis=0), b, axis=1)[: shape[0], : shape[1]]


def class_map_from_blocks(inten: np.ndarray, tissue: np.ndarray, shape: tuple[int, int],
                          mpp: float, config: StainConfig = StainConfig(),  # noqa: B008
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel classes (0 background, 1..4) and block classes (-1 background) from
    :func:`membrane_blocks`' intensities and scored blocks."""
    cls = classify_intensity(inten, config.membrane_thresholds)
    blocks = np.where(tissue, cls, -1).astype(np.int8)
    return (upsample_blocks(blocks, shape, mpp, config) + 1).astype(np.uint8), blocks


def membrane_class_map(
    maps: MembraneMaps, mpp: float, config: StainConfig = StainConfig(),  # noqa: B008
    tissue_mask: np.ndarray | None = None, od_blocks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel classes (0 background, 1..4 HER2 0..3+) and the block classes of a tile.

    Every pixel of a tissue block (:func:`membrane_blocks`) takes its block's
    class; other pixels are background. The block classes (int8, -1 for
    background blocks) come back for overlays.
    """
    inten, tissue = membrane_blocks(maps, mpp, config, tissue_mask, od_blocks)
    return class_map_from_blocks(inten, tissue, maps.od_sum.shape, mpp, config)


def nucleus_peaks(hematoxylin: np.ndarray, mpp: float,
                  config: StainConfig = StainConfig()) -> tuple[np.ndarray, float]:  # noqa: B008
    """Nucleus-sized hematoxylin blobs: maxima of the scale-normalised LoG.

    Returns a boolean map of the blob centres on the plane reduced to about
    ``nucleus_count_um`` per pixel, and that pixel size. Blobs at least
    ``nucleus_spacing_um`` apart whose response reaches ``nucleus_log_min``.
    """
    import cv2

    mpp = _check_mpp(mpp)
    h: np.ndarray = np.ascontiguousarray(hematoxylin, np.float32)
    if h.size == 0:
        return np.zeros(h.shape, bool), mpp
    f = min(1.0, mpp / config.nucleus_count_um)
    if f < 1.0:
        h = cv2.resize(h, (max(1, round(h.shape[1] * f)), max(1, round(h.shape[0] * f))),
                       interpolation=cv2.INTER_AREA)
    px = mpp * hematoxylin.shape[1] / h.shape[1]
    s = config.nucleus_sigma_um / px
    resp: np.ndarray = cv2.GaussianBlur(h, (0, 0), s)
    resp = cv2.Laplacian(resp, cv2.CV_32F)
    resp *= np.float32(-s * s)  # type: ignore[arg-type]
    k = max(3, int(round(config.nucleus_spacing_um / px)) | 1)
    peaks = (resp >= cv2.dilate(resp, np.ones((k, k), np.uint8))) & (resp >= config.nucleus_log_min)
    return peaks, px


def count_nuclei(hematoxylin: np.ndarray, mpp: float, tissue: np.ndarray | None = None,
                 config: StainConfig = StainConfig()) -> int:  # noqa: B008
    """Number of nuclei (:func:`nucleus_peaks`) in ``tissue`` (the plane's shape) or everywhere.

    Fast enough for every tile of a pixel-level run, for the "too few cells"
    check; the cell level counts its detected cells instead.
    """
    return count_peaks(nucleus_peaks(hematoxylin, mpp, config)[0], tissue)


def count_peaks(peaks: np.ndarray, tissue: np.ndarray | None = None) -> int:
    """Number of :func:`nucleus_peaks` inside ``tissue`` (any shape: resized to the peaks')."""
    import cv2

    if tissue is None or peaks.size == 0:
        return int(peaks.sum())
    t: np.ndarray = np.asarray(tissue, np.uint8)
    if t.shape != peaks.shape:
        t = cv2.resize(t, (peaks.shape[1], peaks.shape[0]), interpolation=cv2.INTER_NEAREST)
    return int(np.count_nonzero(peaks & t.astype(bool)))


def cell_density_blocks(hematoxylin: np.ndarray, mpp: float, block_shape: tuple[int, int],
                        config: StainConfig = StainConfig()) -> np.ndarray:  # noqa: B008
    """Nuclei per 1000 µm² around each membrane block (over ``cellularity_window_um``).

    The measure of the optional tumour restriction on IHC alone
    (``StainConfig.min_cell_density``): epithelium packs 4-10 nuclei per
    1000 µm², stroma 1-2, fat almost none.
    """
    import cv2

    peaks, px = nucleus_peaks(hematoxylin, mpp, config)
    if peaks.size == 0:
        return np.zeros(block_shape, np.float32)
    win = max(1, int(round(config.cellularity_window_um / px)))
    density: np.ndarray = cv2.boxFilter(peaks.astype(np.float32), -1, (win, win), normalize=True,
                            borderType=cv2.BORDER_REFLECT)
    density *= np.float32(1000.0 / (px * px))
    return cv2.resize(density, (block_shape[1], block_shape[0]), interpolation=cv2.INTER_AREA)
