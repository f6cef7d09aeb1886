"""Low-resolution views of a slide or array, and their stain-independent representation.

Registration never looks at colours directly: H&E (pink/purple) and DAB IHC
(brown/blue) share no intensities. It looks at the optical-density magnitude
(how much light the tissue absorbs, whatever the stain), which is high on
tissue and zero on glass in every brightfield stain, and at the tissue mask
derived from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MPPMissing, RegistrationError, UserInputError
from ..optics import estimate_white_point, od_sum

__all__ = ["ImageSource", "Level", "as_source", "od_magnitude", "hematoxylin", "tissue_mask", "level_matrix",
           "check_tissue"]

log = logging.getLogger(__name__)


@dataclass
class Level:
    """One working resolution of an image: RGB, OD magnitude, tissue mask and scale."""

    rgb: np.ndarray  # (h, w, 3) uint8
    od: np.ndarray  # (h, w) float32, normalised so the 99th percentile of tissue is 1
    feat: np.ndarray  # (h, w) float32 hematoxylin-like channel, 0 on glass, ~1 on nuclei-rich tissue
    mask: np.ndarray  # (h, w) bool tissue
    scale: tuple[float, float]  # level-0 pixels per level pixel along x and y
    hema_strength: float = 1.0  # hematoxylin OD of the tissue (90th percentile above glass)


def level_matrix(scale: tuple[float, float]) -> np.ndarray:
    """3x3 matrix mapping level pixel coordinates to level-0 pixel coordinates.

    Uses pixel-centre coordinates: the centre of level pixel ``u`` is the
    centre of the ``s`` level-0 pixels it covers, ``x = s * (u + 0.5) - 0.5``.
    """
    sx, sy = scale
    return np.array(
        [[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]]
    )


class ImageSource:
    """A level-0 image (numpy array) or a slide, read at reduced resolutions."""

    def __init__(self, obj: Any, mpp: float | None, name: str) -> None:
        self.obj = obj
        self.name = name
        if isinstance(obj, np.ndarray):
            arr = obj
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 8:
                raise UserInputError(
                    f"{name} image has shape {obj.shape}; expected an RGB image (h, w, 3)",
                    hint="pass an RGB array or a slide",
                )
            if arr.dtype != np.uint8:
                if np.issubdtype(arr.dtype, np.floating) and arr.max() <= 1.0:
                    arr = arr * 255.0
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            self.array: np.ndarray | None = np.ascontiguousarray(arr[..., :3])
            self.dimensions: tuple[int, int] = (self.array.shape[1], self.array.shape[0])
            self.mpp = mpp
        elif hasattr(obj, "dimensions") and (hasattr(obj, "thumbnail") or hasattr(obj, "read_region")):
            self.array = None
            w, h = obj.dimensions
            self.dimensions = (int(w), int(h))
            if mpp is None:
                mpp = getattr(obj, "mpp_or_none", None)
                if mpp is None and not hasattr(obj, "mpp_or_none"):
                    try:
                        mpp = obj.mpp
                    except MPPMissing:
                        mpp = None
            self.mpp = float(mpp) if mpp is not None else None
        else:
            raise UserInputError(
                f"{name} must be an RGB numpy array or a slide, not {type(obj).__name__}",
                hint="open it with her2_qupath.slide.open_slide",
            )

    def read(self, max_downsample: float) -> tuple[np.ndarray, tuple[float, float]]:
        """An RGB image downsampled by about ``max_downsample`` and its exact scale (x, y)."""
        import cv2

        w, h = self.dimensions
        ds = max(1.0, float(max_downsample))
        tw, th = max(1, round(w / ds)), max(1, round(h / ds))
        if self.array is not None:
            rgb = self.array if (tw, th) == (w, h) else cv2.resize(
                self.array, (tw, th), interpolation=cv2.INTER_AREA
            )
        else:
            rgb = self._read_slide(tw, th)
            if rgb.shape[:2] != (th, tw):
                rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(rgb[..., :3]), (w / tw, h / th)

    def _read_slide(self, tw: int, th: int) -> np.ndarray:
        slide = self.obj
        if hasattr(slide, "thumbnail"):
            thumb = slide.thumbnail(max_size=max(tw, th))
        else:  # read_region at the best level
            ds = self.dimensions[0] / tw
            level = slide.best_level_for_downsample(ds) if hasattr(slide, "best_level_for_downsample") else 0
            lds = slide.level_downsamples[level] if hasattr(slide, "level_downsamples") else 1.0
            lw, lh = (round(d / lds) for d in self.dimensions)
            thumb = slide.read_region((0, 0), level, (lw, lh))
        arr = np.asarray(thumb)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return arr[..., :3].astype(np.uint8, copy=False)


def as_source(obj: Any, mpp: float | None, name: str) -> ImageSource:
    if isinstance(obj, ImageSource):
        return obj
    return ImageSource(obj, mpp, name)


def od_magnitude(rgb: np.ndarray) -> np.ndarray:
    """Optical density summed over RGB (each channel clipped at 0) relative to the image's
    white point (:func:`her2_qupath.optics.estimate_white_point`)."""
    a = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    return od_sum(a, estimate_white_point(a))


def hematoxylin(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Hematoxylin channel (Ruifrok & Johnston colour deconvolution), 0 on glass, ~1 on tissue.

    Both H&E and hematoxylin-counterstained DAB IHC carry hematoxylin on the
    nuclei, so this channel shows the same structures (nuclear density,
    tubules, vessels) in both, unlike the stains' colours.
    """
    from skimage.color import rgb2hed

    h = rgb2hed(rgb[..., :3]).astype(np.float32)[..., 0]
    glass = h[~mask] if (~mask).sum() >= 16 else h.ravel()
    lo = float(np.median(glass))
    tissue = h[mask] if mask.sum() >= 16 else h.ravel()
    hi = float(np.percentile(tissue, 99.0))
    out = (h - lo) / max(hi - lo, 1e-6)
    strength = float(np.percentile(tissue, 90.0)) - lo
    return np.clip(out, 0.0, 1.5).astype(np.float32), strength


def tissue_mask(od: np.ndarray, *, min_od: float, closing_px: int, min_area_px: int) -> np.ndarray:
    """Tissue = OD above the triangle threshold of its histogram (never below ``min_od``).

    The triangle method suits a dominant glass peak next to a long tissue tail;
    Otsu's threshold is used instead when it is lower (tissue-filled images).
    The mask is then closed and specks are removed.
    """
    import cv2
    from skimage.filters import threshold_otsu, threshold_triangle

    smooth = cv2.GaussianBlur(od, (0, 0), 1.0)
    if float(smooth.max()) <= min_od:
        return np.zeros(od.shape, dtype=bool)
    try:
        thr = min(float(threshold_triangle(smooth)), float(threshold_otsu(smooth)))
    except ValueError:  # constant image
        thr = min_od
    thr = max(thr, min_od)
    mask = smooth > thr
    if closing_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * closing_px + 1, 2 * closing_px + 1))
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, k).astype(bool)
    if min_area_px > 0 and mask.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area_px
        keep[0] = False
        mask = keep[labels]
    return mask


def check_tissue(mask: np.ndarray, name: str, min_fraction: float) -> None:
    frac = float(mask.mean())
    if frac < min_fraction:
        raise RegistrationError(
            f"no tissue found in the {name} image ({100 * frac:.2f} % of its area looks like tissue)",
            hint="check that the right slide was given and that it is a brightfield image with a white background",
        )
