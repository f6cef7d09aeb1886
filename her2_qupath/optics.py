"""Glass, white point, optical density and tissue: one definition for the whole product.

Every brightfield measurement starts from the white point ``I0`` (the colour
of empty glass): optical density is ``OD_c = -log10(I_c / I0_c)`` (Beer-Lambert),
so a wrong white point shifts every stain amount. Tissue detection, colour
deconvolution and registration all read their white point, optical density
and tissue from this module, so that ``min_od_sum`` (or any other OD) means
the same thing everywhere. Field names carry their unit: ``*_od_sum`` is an
optical density summed over R, G and B, ``*_um`` micrometres, ``*_fraction``
a share in [0, 1], brightness is the mean of R, G and B (0-255).

**Glass** is found by what it looks like, not by how bright it is: empty glass
(and the inside of fat cells, which is empty too) is *smooth* (low local
standard deviation of brightness over ``glass_window_um``), *unsaturated*
(grey) and the *brightest* such area of the image. No absolute brightness is
assumed, so scans with a grey white balance (glass at 170-215) are handled,
and pale tissue is not taken for glass because it is textured.

**White point**, in order (:func:`estimate_white_point`):

1. the user's value (``--background R,G,B``, the ``Background`` of a QuPath
   stain string, the server's ``background`` option): source ``"user"`` or
   ``"stain string"``;
2. the glass, when at least ``glass_min_fraction`` of the image is glass:
   the per-channel peak of the glass pixels, source ``"glass"``;
3. otherwise (tissue edge to edge: TMA cores, fields, patches) it is
   *doubtful*: the glass that was found if any, else the fallback, the
   per-channel ``fallback_percentile`` of the image (the brightest structures,
   lumina and fat, are closest to glass), source ``"fallback"``; the summary
   says so and a warning asks for ``--background``;
4. when even the fallback is darker than ``glass_min_brightness`` the white
   point is *unreliable* and a run reports "not evaluable".

**Tissue** (:func:`tissue_mask`): the summed optical density, smoothed over
about 2 µm, above a threshold adapted to the white point's noise (the
``tissue_noise_quantile`` of the OD sum on glass times ``tissue_noise_factor``,
kept within ``[min_od_sum, max_od_sum]``), so that pale hematoxylin and faint
DAB stay tissue; then a closing, removal of specks and filling of small holes,
all in micrometres.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from .config import TissueConfig
from .errors import UserInputError

__all__ = [
    "WhitePoint",
    "WhitePointSource",
    "as_rgb8",
    "parse_rgb",
    "glass_mask",
    "estimate_white_point",
    "od_lut",
    "optical_density",
    "od_sum",
    "tissue_threshold",
    "tissue_mask",
]

log = logging.getLogger(__name__)
_DEFAULT = TissueConfig()

WhitePointSource = Literal["glass", "user", "stain string", "fallback"]


@dataclass(frozen=True)
class WhitePoint:
    """The white point (RGB of empty glass) of an image and where it came from.

    ``glass_fraction`` is the share of the analysed image taken as glass;
    ``reliable`` is False when no glass backs the value (``doubtful``) or when
    no usable value exists at all (``usable`` False: the run is not evaluable).
    ``note`` says why in words a pathologist reads.
    """

    rgb: tuple[float, float, float]
    source: WhitePointSource
    glass_fraction: float = 0.0
    reliable: bool = True
    usable: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rgb", parse_rgb(self.rgb, "white point"))

    @property
    def doubtful(self) -> bool:
        return not self.reliable

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rgb"] = [round(float(x), 2) for x in self.rgb]
        d["glass_fraction"] = round(float(self.glass_fraction), 4)
        return d


def parse_rgb(value: Any, what: str = "background") -> tuple[float, float, float]:
    """Three values in (0, 255] from a sequence or a ``"R,G,B"`` / ``"R G B"`` string."""
    raw = value
    if isinstance(value, str):
        parts = [p for p in value.replace(",", " ").split() if p]
        try:
            value = [float(p) for p in parts]
        except ValueError as err:
            raise UserInputError(f"{what} {raw!r} is not three numbers",
                                 hint="give the RGB of empty glass, e.g. 242,240,245") from err
    try:
        a = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise UserInputError(f"{what} {raw!r} is not three numbers",
                             hint="give the RGB of empty glass, e.g. 242,240,245") from err
    if a.size == 1:
        a = np.repeat(a, 3)
    if a.shape != (3,) or not np.all(np.isfinite(a)) or np.any(a <= 0) or np.any(a > 255):
        raise UserInputError(f"{what} must be three values in (0, 255], got {raw!r}",
                             hint="give the RGB of empty glass, e.g. 242,240,245")
    return (float(a[0]), float(a[1]), float(a[2]))


def as_rgb8(rgb: np.ndarray, what: str = "image") -> np.ndarray:
    """A C-contiguous ``(rows, cols, 3)`` uint8 view of an RGB(A) image, or a clear error."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise UserInputError(f"expected an RGB {what} of shape (rows, cols, 3), got shape {a.shape}",
                             hint="pass an RGB uint8 array (an alpha channel is dropped)")
    if a.dtype != np.uint8:
        raise UserInputError(f"expected a uint8 RGB {what}, got dtype {a.dtype}",
                             hint="convert with skimage.util.img_as_ubyte or read the slide as 8-bit RGB")
    return np.ascontiguousarray(a[..., :3])


def _to_mpp(rgb: np.ndarray, mpp: float | None, target: float) -> tuple[np.ndarray, float | None]:
    """The image reduced to about ``target`` µm/px when it is finer (area averaging)."""
    import cv2

    if mpp is None or mpp >= target or min(rgb.shape[:2]) < 16:
        return rgb, mpp
    f = mpp / target
    shape = (max(8, int(round(rgb.shape[1] * f))), max(8, int(round(rgb.shape[0] * f))))
    small = cv2.resize(rgb, shape, interpolation=cv2.INTER_AREA)
    return small, mpp * rgb.shape[1] / shape[0]


def _brightness_stats(rgb: np.ndarray, window_px: int,
                      denoise: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brightness (mean RGB), its local standard deviation over a square window, saturation.

    ``denoise`` first averages 3 x 3 pixels (pixel noise is not texture); an image that
    was reduced to the working pixel size is averaged already.
    """
    import cv2

    r, g, b = cv2.split(np.ascontiguousarray(rgb))
    bright: np.ndarray = (r.astype(np.float32) + g + b) * np.float32(1.0 / 3.0)
    if denoise:
        bright = cv2.blur(bright, (3, 3), borderType=cv2.BORDER_REFLECT)
    k = (window_px, window_px)
    mean = cv2.blur(bright, k, borderType=cv2.BORDER_REFLECT)
    sq = cv2.blur(bright * bright, k, borderType=cv2.BORDER_REFLECT)
    sd = cv2.sqrt(cv2.max(sq - mean * mean, 0.0))  # type: ignore[call-overload]
    mx = cv2.max(cv2.max(r, g), b).astype(np.float32)
    mn = cv2.min(cv2.min(r, g), b).astype(np.float32)
    sat = (mx - mn) / np.maximum(mx, np.float32(1.0))
    return bright, sd, sat


def glass_mask(rgb: np.ndarray, mpp: float | None = None,
               config: TissueConfig = _DEFAULT) -> np.ndarray:
    """Boolean mask of the empty glass of an RGB image (same shape as the image).

    Smooth (local standard deviation of brightness below ``glass_max_std``
    over ``glass_window_um``), grey (saturation at most ``glass_max_saturation``),
    not dark (brightness at least ``glass_min_brightness``) and within
    ``glass_tolerance_od`` of optical density of the brightest such level (its
    ``glass_level_quantile``). ``mpp`` sets the window; without it a 5-pixel
    window is used.
    """
    import cv2

    a = as_rgb8(rgb)
    if a.size == 0:
        return np.zeros(a.shape[:2], dtype=bool)
    small, smpp = _to_mpp(a, mpp, config.glass_work_um)
    window = 5 if smpp is None else max(3, int(round(config.glass_window_um / smpp)) | 1)
    bright, sd, sat = _brightness_stats(small, window, denoise=small is a)
    cand = (sd <= config.glass_max_std) & (sat <= config.glass_max_saturation) & (
        bright >= config.glass_min_brightness)
    if not cand.any():
        glass = cand
    else:
        level = float(np.quantile(bright[cand], config.glass_level_quantile))
        # within glass_tolerance_od (optical density) of that level: the same absorbance
        # whatever the white balance (10 grey levels are 0.018 OD at 242 but 0.025 at 178)
        glass = cand & (bright >= level * 10.0 ** -config.glass_tolerance_od)
    if glass.shape != a.shape[:2]:
        glass = cv2.resize(glass.astype(np.uint8), (a.shape[1], a.shape[0]),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
    return glass


def _channel_peaks(pixels: np.ndarray) -> tuple[float, float, float]:
    """Per-channel histogram peak (smoothed over 9 levels, refined by a local centroid)."""
    out = []
    kernel = np.ones(9) / 9.0
    for c in range(3):
        raw = np.bincount(pixels[:, c], minlength=256).astype(np.float64)
        peak = int(np.argmax(np.convolve(raw, kernel, "same")))
        lo, hi = max(peak - 6, 0), min(peak + 7, 256)
        w = raw[lo:hi]
        out.append(float(np.clip((np.arange(lo, hi) * w).sum() / max(w.sum(), 1e-9), 1.0, 255.0)))
    return (out[0], out[1], out[2])


def estimate_white_point(
    rgb: np.ndarray,
    mpp: float | None = None,
    *,
    config: TissueConfig = _DEFAULT,
    user: Any = None,
    stain_string: Any = None,
    mask: np.ndarray | None = None,
    glass: np.ndarray | None = None,
) -> WhitePoint:
    """The white point of an image (a thumbnail of the slide, or the image itself).

    ``user`` (``--background``) and ``stain_string`` (the ``Background`` of a
    QuPath stain string) win in that order. ``mask`` optionally limits the
    pixels that may be glass. See the module docstring for the estimate and
    its fallback. ``glass`` is the image's :func:`glass_mask` when the caller has it.
    """
    if user is not None:
        return WhitePoint(parse_rgb(user), "user", note="given by the user")
    if stain_string is not None:
        return WhitePoint(parse_rgb(stain_string), "stain string",
                          note="the Background of the stain vectors")
    a = as_rgb8(rgb)
    if a.size == 0:
        return WhitePoint((255.0, 255.0, 255.0), "fallback", reliable=False, usable=False,
                          note="the image is empty")
    glass = glass_mask(a, mpp, config) if glass is None else np.array(glass, dtype=bool)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != glass.shape:
            raise UserInputError(f"mask shape {m.shape} differs from the image's {glass.shape}",
                                 hint="give a boolean mask of the image's shape (True = may be glass)")
        glass &= m
    n_glass = int(glass.sum())
    fraction = n_glass / glass.size
    if n_glass >= config.glass_min_pixels:
        import cv2

        # the level of the glass from a 5 x 5 box-filtered copy: pixel noise averages out
        # (glass areas are large) and the selection above does not bias the channels
        a = cv2.blur(a, (5, 5), borderType=cv2.BORDER_REFLECT) if min(a.shape[:2]) >= 16 else a
    if n_glass >= config.glass_min_pixels and fraction >= config.glass_min_fraction:
        px = a[glass]
        step = max(1, px.shape[0] // 2_000_000)
        return WhitePoint(_channel_peaks(px[::step]), "glass", fraction,
                          note=f"{100 * fraction:.1f} % of the image is glass")
    if n_glass >= config.glass_min_pixels:
        # some glass, too little to trust (a few lumina or fat cells)
        return WhitePoint(_channel_peaks(a[glass]), "glass", fraction, reliable=False,
                          note=f"only {100 * fraction:.2f} % of the image looks like glass "
                          "(tissue edge to edge?)")
    small, _ = _to_mpp(a, mpp, config.glass_work_um)
    flat = small.reshape(-1, 3).astype(np.float64)
    fb = np.percentile(flat, 100.0 * config.fallback_percentile, axis=0)
    fb = np.clip(fb, 1.0, 255.0)
    coloured = (fb.max() - fb.min()) / max(fb.max(), 1.0) > config.glass_max_saturation
    if coloured:  # glass is grey: coloured bright pixels are tissue, glass is brighter still
        fb = np.full(3, fb.max())
    usable = float(fb.mean()) >= config.glass_min_brightness
    note = ("no glass visible; the brightest structures stand in for it"
            if usable else "no glass visible and the image is too dark to estimate the white point")
    return WhitePoint((float(fb[0]), float(fb[1]), float(fb[2])), "fallback", 0.0,
                      reliable=False, usable=usable, note=note)


def od_lut(white: Any) -> np.ndarray:
    """(256, 3) float32 table: ``OD_c(I) = -log10(max(I, 1) / I0_c)`` for each channel c."""
    bg = np.asarray(parse_rgb(white.rgb if isinstance(white, WhitePoint) else white), np.float64)
    i = np.maximum(np.arange(256, dtype=np.float64), 1.0)
    return (-np.log10(i[:, None] / bg[None, :])).astype(np.float32)


def optical_density(rgb: np.ndarray, white: Any) -> np.ndarray:
    """Per-channel optical density ``(rows, cols, 3)`` float32 (not clipped: brighter than
    the white point gives a small negative OD)."""
    import cv2

    a = as_rgb8(rgb)
    return cv2.LUT(a, np.ascontiguousarray(od_lut(white).reshape(1, 256, 3)))


def od_sum(rgb: np.ndarray, white: Any) -> np.ndarray:
    """Optical density summed over R, G and B, each channel clipped at 0 (float32, rows x cols).

    QuPath calls this "OD Sum"; glass is 0, and every stain adds to it.
    """
    import cv2

    od = optical_density(rgb, white)
    np.maximum(od, 0.0, out=od)
    if od.size == 0:
        return od[..., 0]
    return cv2.transform(od, np.ones((1, 3), np.float32)).reshape(od.shape[:2])


def _smooth(x: np.ndarray, mpp: float | None, sigma_um: float) -> np.ndarray:
    import cv2

    sigma = 1.0 if mpp is None else sigma_um / mpp
    if sigma < 0.3 or x.size == 0:
        return x
    return cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def tissue_threshold(odsum: np.ndarray, glass: np.ndarray, config: TissueConfig = _DEFAULT) -> float:
    """The OD-sum threshold between glass and tissue, adapted to the noise of the glass."""
    if int(glass.sum()) >= config.glass_min_pixels:
        noise = float(np.quantile(odsum[glass], config.tissue_noise_quantile))
        thr = noise * config.tissue_noise_factor
    else:
        thr = config.min_od_sum
    return float(min(max(thr, config.min_od_sum), config.max_od_sum))


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return ((x * x + y * y) <= radius * radius).astype(np.uint8)


def _remove_small(mask: np.ndarray, min_pixels: float, *, holes: bool) -> np.ndarray:
    """Drop components (or fill holes not touching the border) smaller than ``min_pixels``."""
    import cv2

    if min_pixels <= 1 or mask.size == 0:
        return mask
    target = (~mask if holes else mask).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(target, connectivity=8)
    if n <= 1:
        return mask
    small = stats[:, cv2.CC_STAT_AREA] < min_pixels
    small[0] = False
    if holes:
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        small[border] = False
        return mask | small[labels]
    return mask & ~small[labels]


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    white: Any = None,
    config: TissueConfig = _DEFAULT,
    *,
    glass: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean tissue mask of an RGB image whose pixels are ``mpp`` micrometres.

    ``white`` is a :class:`WhitePoint` or an RGB triple (estimated from the
    image when omitted). The threshold adapts to the white point's noise
    (:func:`tissue_threshold`); see the module docstring. ``glass`` is the
    image's :func:`glass_mask` when the caller has it already.
    """
    import cv2

    a = as_rgb8(rgb, "image for tissue detection")
    if a.shape[0] == 0 or a.shape[1] == 0:
        return np.zeros(a.shape[:2], dtype=bool)
    if not (math.isfinite(mpp) and mpp > 0):
        raise UserInputError(f"pixel size must be positive, got {mpp!r}", hint="pass mpp in µm per pixel")
    wp = white if white is not None else estimate_white_point(a, mpp, config=config)
    odsum = _smooth(od_sum(a, wp), mpp, config.smoothing_um)
    if glass is None or glass.shape != a.shape[:2]:
        glass = glass_mask(a, mpp, config)
    thr = tissue_threshold(odsum, glass, config)
    mask = odsum > thr
    log.debug("tissue threshold OD sum %.3f (white point %s)", thr,
              [round(x, 1) for x in (wp.rgb if isinstance(wp, WhitePoint) else parse_rgb(wp))])
    radius = int(round(config.closing_um / mpp))
    if radius >= 1 and mask.any():
        pad = radius + 1
        padded: np.ndarray = np.pad(mask, pad).astype(np.uint8)
        padded = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, _disk(radius))
        mask = padded[pad:-pad, pad:-pad].astype(bool)
    mask = _remove_small(mask, config.min_object_um2 / mpp**2, holes=False)
    mask = _remove_small(mask, config.min_hole_um2 / mpp**2, holes=True)
    return mask
