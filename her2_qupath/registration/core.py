"""Estimating the H&E → IHC transform from low-resolution images.

Steps (on the hematoxylin channel and the optical-density tissue masks, so the
stains need not look alike):

1. **Coarse search** at ``config.coarse_size`` pixels: every rotation in steps
   of ``config.rotation_step_deg`` (and the mirror image when
   ``allow_mirror``), scaled by the ratio of tissue areas when the pixel sizes
   are unknown, translated by phase correlation after matching the tissue
   centroids; the best few candidates are refined with ECC and the best kept.
2. **Affine refinement**: OpenCV's ECC maximisation (``findTransformECC``,
   Evangelidis & Psarakis 2008) in a pyramid up to ``config.max_work_size``
   pixels along the longest side (never finer than ``config.work_mpp``);
   Euclidean motion for ``rigid``, affine otherwise.
3. **Non-rigid refinement** (``nonrigid``): block matching by normalised
   cross-correlation between the fixed image and the affinely aligned moving
   image at up to ``config.max_nonrigid_size`` pixels, combined into a smooth
   displacement field (:mod:`.nonrigid`); kept only when it improves the
   image correlation.
4. **Quality**: tissue-mask Dice and normalised cross-correlation of the
   hematoxylin images after alignment. Below ``config.min_quality`` the
   transform is flagged ``reliable = False`` and a warning is logged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._types import ProgressCallback
from ..config import RegistrationConfig
from ..errors import UserInputError
from ._images import (
    ImageSource,
    Level,
    as_source,
    check_tissue,
    hematoxylin,
    level_matrix,
    od_magnitude,
    tissue_mask,
)
from .transform import Transform

__all__ = ["register", "Pair"]

log = logging.getLogger(__name__)


@dataclass
class Pair:
    """Fixed and moving image at one common working pixel size (``unit`` per pixel)."""

    fixed: Level
    moving: Level
    unit: float  # working pixel size in µm (or level-0 pixels when MPPs are unknown)


def _units(fixed: ImageSource, moving: ImageSource) -> tuple[float, float, bool]:
    """Size of one level-0 pixel of each image in a common unit (µm when known)."""
    if fixed.mpp is not None and moving.mpp is not None:
        return float(fixed.mpp), float(moving.mpp), True
    if fixed.mpp is not None or moving.mpp is not None:
        missing = "moving (IHC)" if moving.mpp is None else "fixed (H&E)"
        raise UserInputError(
            f"the {missing} image has no pixel size but the other has one",
            hint="give both (--fixed-mpp/--moving-mpp) or --mpp for both",
        )
    return 1.0, 1.0, False


def _make_level(src: ImageSource, downsample: float, cfg: RegistrationConfig, unit: float) -> Level:
    rgb, scale = src.read(downsample)
    od = od_magnitude(rgb)
    min_area = int(round(cfg.mask_min_area_fraction * od.size))
    mask = tissue_mask(od, min_od=cfg.min_od, closing_px=cfg.mask_closing_px, min_area_px=min_area)
    if mask.any():
        ref = float(np.percentile(od[mask], 99.0))
    else:
        ref = float(od.max()) or 1.0
    od = np.clip(od / max(ref, 1e-6), 0.0, 1.5).astype(np.float32)
    return Level(rgb=rgb, od=od, feat=hematoxylin(rgb, mask), mask=mask, scale=scale)


def _pair_at(fixed: ImageSource, moving: ImageSource, unit: float, fu: float, mu: float,
             cfg: RegistrationConfig) -> Pair:
    fl = _make_level(fixed, unit / fu, cfg, unit)
    ml = _make_level(moving, unit / mu, cfg, unit)
    return Pair(fl, ml, unit)


def _to_level0(w_level: np.ndarray, pair: Pair) -> np.ndarray:
    """Level warp (fixed level px → moving level px) to level-0 (fixed → moving)."""
    sf = level_matrix(pair.fixed.scale)
    sm = level_matrix(pair.moving.scale)
    return sm @ _m3(w_level) @ np.linalg.inv(sf)


def _to_level(a0: np.ndarray, pair: Pair) -> np.ndarray:
    sf = level_matrix(pair.fixed.scale)
    sm = level_matrix(pair.moving.scale)
    return (np.linalg.inv(sm) @ a0 @ sf)[:2].astype(np.float32)


def _m3(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    return np.vstack([w[:2], [0.0, 0.0, 1.0]])


def _warp(img: np.ndarray, w: np.ndarray, size: tuple[int, int], *, nearest: bool = False,
          border: float = 0.0) -> np.ndarray:
    """Sample ``img`` (moving level) on the fixed level grid through ``w`` (fixed → moving)."""
    import cv2

    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(img, np.asarray(w, dtype=np.float64)[:2], size, flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def _ncc(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> float:
    if weight is not None:
        sel = weight
        if sel.sum() < 16:
            return 0.0
        a, b = a[sel], b[sel]
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _centroid(mask: np.ndarray, od: np.ndarray) -> np.ndarray:
    w = od * mask
    s = float(w.sum())
    if s <= 0:
        h, wd = mask.shape
        return np.array([(wd - 1) / 2.0, (h - 1) / 2.0])
    ys, xs = np.indices(mask.shape)
    return np.array([float((xs * w).sum() / s), float((ys * w).sum() / s)])


def _candidate(theta: float, mirror: bool, s: float, cf: np.ndarray, cm: np.ndarray) -> np.ndarray:
    """fixed → moving level warp: rotate/mirror/scale about the fixed centroid onto the moving one."""
    c, sn = math.cos(theta), math.sin(theta)
    lin = s * np.array([[c, -sn], [sn, c]])
    if mirror:
        lin = lin @ np.diag([-1.0, 1.0])
    t = cm - lin @ cf
    return np.hstack([lin, t[:, None]])


def _coarse_search(pair: Pair, cfg: RegistrationConfig, scale0: float) -> tuple[list[tuple[float, np.ndarray]], float]:
    """Score every rotation (and mirror); returns the ranked candidates and the peak's distinctness."""
    import cv2

    f, m = pair.fixed, pair.moving
    size = (f.od.shape[1], f.od.shape[0])
    cf, cm = _centroid(f.mask, f.od), _centroid(m.mask, m.od)
    fod = cv2.GaussianBlur(f.feat, (0, 0), 1.0)
    mod = cv2.GaussianBlur(m.feat, (0, 0), 1.0)
    hann = cv2.createHanningWindow(size, cv2.CV_32F)
    step = max(0.5, float(cfg.rotation_step_deg))
    angles = np.arange(0.0, 360.0, step)
    mirrors = (False, True) if cfg.allow_mirror else (False,)
    scored: list[tuple[float, np.ndarray]] = []
    for mirror in mirrors:
        for deg in angles:
            w = _candidate(math.radians(deg), mirror, scale0, cf, cm)
            warped = _warp(mod, w, size)
            (dx, dy), _ = cv2.phaseCorrelate(fod, warped, hann)
            # the warped image is shifted by (dx, dy) against the fixed one
            w2 = w.copy()
            w2[:, 2] += w[:, :2] @ np.array([dx, dy])
            if abs(dx) > size[0] / 3 or abs(dy) > size[1] / 3:
                w2 = w
            score = _ncc(fod, _warp(mod, w2, size))
            scored.append((score, w2))
    scored.sort(key=lambda t: -t[0])
    scores = np.array([s for s, _ in scored])
    spread = float(np.std(scores)) or 1e-6
    distinct = float((scores[0] - np.median(scores)) / spread)
    return scored, distinct


def _ecc(template: np.ndarray, image: np.ndarray, w: np.ndarray, motion: int, cfg: RegistrationConfig,
         gauss: int) -> tuple[float, np.ndarray]:
    import cv2

    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(cfg.ecc_iterations), float(cfg.ecc_eps))
    warp = np.asarray(w, dtype=np.float32)[:2].copy()
    try:
        cc, warp = cv2.findTransformECC(template, image, warp, motion, crit, None, gauss)
    except cv2.error as err:  # did not converge: keep the start
        log.debug("ECC did not converge: %s", str(err).splitlines()[-1] if str(err) else err)
        return -1.0, np.asarray(w, dtype=np.float32)[:2]
    return float(cc), warp


def _motion(cfg: RegistrationConfig) -> int:
    import cv2

    return cv2.MOTION_EUCLIDEAN if cfg.model == "rigid" else cv2.MOTION_AFFINE


def _pyramid_units(extent: float, cfg: RegistrationConfig, physical: bool, finest: float) -> list[float]:
    """Working pixel sizes from coarse to fine for the affine stage."""
    coarse = max(extent / cfg.coarse_size, finest)
    floor = max(cfg.work_mpp, finest) if physical else finest
    fine = max(floor, extent / cfg.max_work_size)
    units = [coarse]
    u = coarse / 2.0
    while u > fine * 1.2:
        units.append(u)
        u /= 2.0
    if fine < coarse * 0.99:
        units.append(fine)
    return units


def register(
    fixed: Any,
    moving: Any,
    config: RegistrationConfig = RegistrationConfig(),  # noqa: B008 (frozen, immutable)
    *,
    fixed_mpp: float | None = None,
    moving_mpp: float | None = None,
    progress: ProgressCallback | None = None,
) -> Transform:
    """Align ``moving`` (IHC) to ``fixed`` (H&E); returns the fixed → moving transform.

    ``fixed`` and ``moving`` are RGB arrays (taken as level 0) or slides (objects
    with ``dimensions`` and ``thumbnail``, such as :class:`her2_qupath.slide.Slide`).
    Pixel sizes come from the slides or ``fixed_mpp``/``moving_mpp``; without
    them both images are assumed to share one pixel size and everything is in
    pixels. Raises :class:`RegistrationError` when an image shows no tissue;
    a poor alignment is returned with ``quality["reliable"] = False``.
    """
    import cv2

    t0 = time.perf_counter()
    cfg = config
    if cfg.model not in ("rigid", "affine", "nonrigid"):
        raise UserInputError(f"unknown registration model {cfg.model!r}",
                             hint="use rigid, affine or nonrigid")
    fsrc = as_source(fixed, fixed_mpp, "fixed (H&E)")
    msrc = as_source(moving, moving_mpp, "moving (IHC)")
    fu, mu, physical = _units(fsrc, msrc)
    total = 4 if cfg.model == "nonrigid" else 3
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    extent = max(fsrc.dimensions[0] * fu, fsrc.dimensions[1] * fu,
                 msrc.dimensions[0] * mu, msrc.dimensions[1] * mu)
    finest = max(fu, mu)
    units = _pyramid_units(extent, cfg, physical, finest)

    # 1. coarse search
    pair = _pair_at(fsrc, msrc, units[0], fu, mu, cfg)
    for name, lvl in (("fixed (H&E)", pair.fixed), ("moving (IHC)", pair.moving)):
        check_tissue(lvl.mask, name, cfg.min_tissue_fraction)
    if physical and cfg.model == "rigid":
        scale0 = 1.0
    else:
        scale0 = math.sqrt(pair.moving.mask.sum() / max(pair.fixed.mask.sum(), 1))
        if physical:  # sections shrink a little, never by much: ECC refines the rest
            scale0 = float(np.clip(scale0, 0.8, 1.25))
    scored, distinct = _coarse_search(pair, cfg, scale0)
    step()
    fod = cv2.GaussianBlur(pair.fixed.feat, (0, 0), 1.0)
    mod = cv2.GaussianBlur(pair.moving.feat, (0, 0), 1.0)
    best_cc, best_w = -2.0, scored[0][1]
    for _, w in scored[: max(1, cfg.coarse_candidates)]:
        cc, w2 = _ecc(fod, mod, w, _motion(cfg), cfg, 5)
        if cc > best_cc:
            best_cc, best_w = cc, w2
    a0 = _to_level0(best_w, pair)
    step()

    # 2. affine (or rigid) pyramid
    for unit in units[1:]:
        pair = _pair_at(fsrc, msrc, unit, fu, mu, cfg)
        w = _to_level(a0, pair)
        cc, w2 = _ecc(pair.fixed.feat, pair.moving.feat, w, _motion(cfg), cfg, cfg.ecc_gauss)
        if cc > 0:
            a0 = _to_level0(w2, pair)
    step()

    if cfg.model == "rigid":
        a0 = _nearest_rigid(a0, fu / mu if physical else None, fsrc.dimensions)
    affine = Transform(a0, fsrc.dimensions, msrc.dimensions, fixed_mpp=fsrc.mpp if physical else None,
                       moving_mpp=msrc.mpp if physical else None, model=cfg.model)
    quality = measure_quality(pair, affine, cfg)
    result = affine

    # 3. non-rigid
    if cfg.model == "nonrigid":
        from .nonrigid import refine_nonrigid

        floor = max(cfg.nonrigid_mpp, finest) if physical else finest
        nunit = max(floor, extent / cfg.max_nonrigid_size)
        npair = pair if abs(nunit - pair.unit) < 1e-9 else _pair_at(fsrc, msrc, nunit, fu, mu, cfg)
        fld = refine_nonrigid(npair, affine, cfg)
        if fld is not None:
            candidate = affine.with_metadata(field=fld)
            q2 = measure_quality(npair, candidate, cfg)
            q1 = quality if npair is pair else measure_quality(npair, affine, cfg)
            if q2["ncc"] > q1["ncc"]:
                result, quality = candidate, q2
            else:
                log.info("non-rigid refinement did not improve the alignment (NCC %.3f -> %.3f); "
                         "keeping the affine transform", q1["ncc"], q2["ncc"])
        step()

    quality["distinctness"] = round(distinct, 3)
    quality["ecc"] = round(best_cc, 4)
    quality["score"] = round(_score(quality, cfg), 4)
    quality["min_quality"] = cfg.min_quality
    quality["reliable"] = bool(quality["score"] >= cfg.min_quality)
    quality["seconds"] = round(time.perf_counter() - t0, 3)
    quality["work_unit"] = round(pair.unit, 4)
    quality["unit"] = "um" if physical else "px"
    if not quality["reliable"]:
        log.warning(
            "registration quality %.2f is below %.2f (tissue overlap %.2f, correlation %.2f): "
            "the H&E and IHC images may show different tissue; mapped results are flagged unreliable",
            quality["score"], cfg.min_quality, quality["dice"], quality["ncc"],
        )
    return result.with_metadata(quality=quality)


def _nearest_rigid(a0: np.ndarray, scale: float | None, fixed_size: tuple[int, int]) -> np.ndarray:
    """Project an affine matrix onto rotation (+ mirror) times a fixed scale.

    Level rounding makes the level-0 matrix of a Euclidean level warp very
    slightly anisotropic; this removes that. The image centre keeps its image.
    """
    lin = a0[:2, :2]
    u, sv, vt = np.linalg.svd(lin)
    rot = u @ vt  # nearest orthogonal matrix (keeps a mirror's negative determinant)
    s = float(np.sqrt(abs(np.linalg.det(lin)))) if scale is None else float(scale)
    c = np.array([(fixed_size[0] - 1) / 2.0, (fixed_size[1] - 1) / 2.0])
    out = np.eye(3)
    out[:2, :2] = s * rot
    out[:2, 2] = lin @ c + a0[:2, 2] - s * rot @ c
    return out


def _score(q: dict[str, Any], cfg: RegistrationConfig) -> float:
    """One number in [0, 1]: the tissue overlap, discounted when the textures do not correlate.

    The hematoxylin images of consecutive sections correlate well once aligned
    (NCC about 0.6–0.8 on real pairs); a wrong alignment or unrelated tissue
    leaves them at 0.2–0.45 even when the outlines overlap.
    """
    lo, hi = cfg.quality_ncc_floor, cfg.quality_ncc_full
    ncc_term = float(np.clip((q["ncc"] - lo) / max(hi - lo, 1e-6), 0.0, 1.0))
    return float(q["dice"]) * ncc_term


def _moving_maps(pair: Pair, transform: Transform, *, step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """For every fixed-level pixel, the moving-level coordinates it maps to (float32 maps).

    The transform is evaluated every ``step`` pixels and interpolated bilinearly
    in between: exact for the affine part, and far below a pixel for the
    displacement field, which is smooth on a scale of tens of pixels.
    """
    import cv2

    h, w = pair.fixed.od.shape
    step = max(1, int(step)) if transform.field is not None else 1
    sf = level_matrix(pair.fixed.scale)
    sm_inv = np.linalg.inv(level_matrix(pair.moving.scale))
    hs, ws = (h - 1) // step + 2, (w - 1) // step + 2
    ys, xs = np.mgrid[0:hs, 0:ws].astype(np.float64) * step
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1) @ sf[:2, :2].T + sf[:2, 2]
    mp = transform.apply(pts) @ sm_inv[:2, :2].T + sm_inv[:2, 2]
    mx = mp[:, 0].reshape(hs, ws).astype(np.float32)
    my = mp[:, 1].reshape(hs, ws).astype(np.float32)
    if step == 1:
        return mx[:h, :w], my[:h, :w]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(step)
    return (cv2.remap(mx, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
            cv2.remap(my, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


def warp_moving_to_fixed(pair: Pair, transform: Transform, image: np.ndarray, *,
                         nearest: bool = False, border: float = 0.0,
                         maps: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Resample a moving-level image onto the fixed level grid through ``transform``."""
    import cv2

    h, w = pair.fixed.od.shape
    if transform.field is None and maps is None:
        return _warp(image, _to_level(transform.matrix, pair), (w, h), nearest=nearest, border=border)
    mx, my = maps if maps is not None else _moving_maps(pair, transform)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(image, mx, my, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def measure_quality(pair: Pair, transform: Transform, cfg: RegistrationConfig) -> dict[str, Any]:
    """Tissue-mask Dice and hematoxylin-image correlation after alignment.

    The correlation is taken over the union of both tissue masks (so tissue
    facing glass counts against it), after a light Gaussian smoothing.
    """
    import cv2

    f = pair.fixed
    maps = None if transform.field is None else _moving_maps(pair, transform)
    wm = warp_moving_to_fixed(pair, transform, pair.moving.mask.astype(np.uint8), nearest=True,
                              maps=maps) > 0
    inter = float((wm & f.mask).sum())
    dice = 2.0 * inter / max(float(wm.sum() + f.mask.sum()), 1.0)
    sigma = max(0.5, float(cfg.quality_smoothing_px))
    fod = cv2.GaussianBlur(f.feat, (0, 0), sigma)
    wod = cv2.GaussianBlur(warp_moving_to_fixed(pair, transform, pair.moving.feat, maps=maps), (0, 0), sigma)
    ncc = _ncc(fod, wod, f.mask | wm)
    return {"dice": round(dice, 4), "ncc": round(ncc, 4)}
