"""Estimating the H&E → IHC transform from low-resolution images.

Registration never compares colours: it aligns a *structure image*, the
hematoxylin channel (nuclei, present in H&E and in counterstained IHC) or,
when one image's hematoxylin is weak (an IHC with a faint counterstain), the
optical-density magnitude (every stain absorbs light); ``metric`` forces one.

1. **Start** (:mod:`.search`), at ``config.coarse_size`` pixels: every
   rotation in steps of ``config.rotation_step_deg`` (and the mirror image when
   ``allow_mirror``) at each scale of a grid (0.8–1.25 without pixel sizes,
   0.9–1.11 with them), translated by phase correlation, plus a RANSAC
   similarity from SIFT matches of the optical-density images (any scale).
   The best candidates are refined with ECC inside the moving tissue mask and
   the one with the highest correlation wins. Nothing depends on the tissue
   areas, and the pixel sizes only narrow the scale grid.
2. **Affine refinement**: OpenCV's ECC maximisation (``findTransformECC``,
   Evangelidis & Psarakis 2008) in a pyramid up to ``config.max_work_size``
   pixels along the longest side (never finer than ``config.work_mpp``),
   restricted to the tissue except at the finest level (where the outline
   against glass helps). For ``rigid`` the affine result is projected onto
   the nearest rotation (+ mirror) × scale (the pixel-size ratio when known);
   for ``affine`` and ``nonrigid`` it is refined by a robust (Huber) affine
   fit to block matches at the non-rigid resolution
   (:func:`.nonrigid.refine_affine`).
3. **Non-rigid refinement** (``nonrigid``, :mod:`.nonrigid`): block matching
   and contrast-normalised optical flow inside the tissue at up to
   ``config.max_nonrigid_size`` pixels, each fitted by a displacement field
   under a bending-energy penalty, on top of the ECC result and then
   re-expressed on the refined affine part.
4. **Reliability** (:mod:`.quality`): forward-backward consistency of local
   matches at the coarse level gives a share of consistent patches and an
   estimate of the residual misalignment; below ``config.min_quality`` the
   transform is flagged ``reliable = False`` and a warning is logged. The
   tissue-mask Dice, correlation and normalised mutual information are
   recorded for information only.
"""

from __future__ import annotations

import logging
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
    od_magnitude,
    tissue_mask,
)
from ._ops import dilate, ecc, ncc, nmi, warp
from .nonrigid import refine_affine, refine_nonrigid
from .pair import Pair, channel, moving_maps, to_level, to_level0, warp_moving_to_fixed
from .quality import measure, reliability_score
from .search import (
    FEATURE_SIZE,
    SCALES,
    SCALES_KNOWN,
    centroid,
    feature_candidate,
    rotation_search,
)
from .transform import Transform

__all__ = ["register", "assess", "Pair", "METRICS"]

#: images the intensity refinement can align (see :func:`register`)
METRICS = ("auto", "hema", "od", "mix")
#: hematoxylin weaker than this (90th percentile inside the tissue, OD units) is not aligned on
HEMA_MIN_OD = 0.018
#: tissue masks are widened by this many working pixels before they restrict ECC (edges count)
MASK_MARGIN_PX = 8
#: extra Gaussian smoothing (coarse-level px) of the images of the rotation x scale search
SEARCH_SMOOTH_PX = 1.0

log = logging.getLogger(__name__)


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
    feat, strength = hematoxylin(rgb, mask)
    return Level(rgb=rgb, od=od, feat=feat, mask=mask, scale=scale, hema_strength=strength)


def _pair_at(fixed: ImageSource, moving: ImageSource, unit: float, fu: float, mu: float,
             cfg: RegistrationConfig) -> Pair:
    fl = _make_level(fixed, unit / fu, cfg, unit)
    ml = _make_level(moving, unit / mu, cfg, unit)
    return Pair(fl, ml, unit)


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


def _choose_metric(pair: Pair, metric: str) -> str:
    """The image to align: ``"hema"`` unless one image's hematoxylin is too weak (then ``"od"``).

    ``"auto"`` compares each image's hematoxylin strength (90th percentile in
    the tissue above the glass) with :data:`HEMA_MIN_OD`; ``"hema"``, ``"od"``
    or ``"mix"`` (their mean) force one.
    """
    if metric != "auto":
        return metric
    weak = any(lvl.hema_strength < HEMA_MIN_OD for lvl in (pair.fixed, pair.moving))
    return "od" if weak else "hema"


def _start(pair: Pair, kind: str, cfg: RegistrationConfig, physical: bool, fine: Pair | None,
           motion: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The best coarse warp (fixed → moving, coarse level) over rotations, scales, mirrors and features."""
    import cv2

    f, m = pair.fixed, pair.moving
    fimg = cv2.GaussianBlur(channel(f, kind), (0, 0), 1.0)
    mimg = cv2.GaussianBlur(channel(m, kind), (0, 0), 1.0)
    cf, cm = centroid(f.mask, f.od), centroid(m.mask, m.od)
    mirrors = (False, True) if cfg.allow_mirror else (False,)
    scales = SCALES_KNOWN if physical else SCALES
    if cfg.model == "rigid" and physical:
        scales = (1.0,)
    # the search sees section-scale structure only: a finer, regular texture (cells in rows)
    # would lock the phase correlation onto its period
    sigma = SEARCH_SMOOTH_PX
    cands, distinct = rotation_search(cv2.GaussianBlur(fimg, (0, 0), sigma), cv2.GaussianBlur(mimg, (0, 0), sigma),
                                      cf, cm, step_deg=cfg.rotation_step_deg, scales=scales,
                                      mirrors=mirrors, keep=max(1, cfg.coarse_candidates - 1))
    info: dict[str, Any] = {"distinctness": round(distinct, 3)}
    if fine is not None:
        fc, stats = feature_candidate(fine.fixed.od, fine.fixed.mask, fine.moving.od, fine.moving.mask, mirrors)
        info["features"] = stats
        if fc is not None:  # into coarse-level pixels
            a0 = to_level0(fc.w, fine)
            fc.w = to_level(a0, pair)
            cands.append(fc)
    mmask = dilate(m.mask, MASK_MARGIN_PX)
    size = (fimg.shape[1], fimg.shape[0])
    best = (-2.0, cands[0].w, cands[0], -1.0)
    for c in cands:
        cc, w2 = ecc(fimg, mimg, c.w, motion, cfg.ecc_iterations, cfg.ecc_eps, 5, mmask)
        # one yardstick for every candidate: the correlation over both tissues (a warp that
        # hides the tissue's outline or collapses onto a patch of it scores low)
        wm = warp(m.mask.astype(np.uint8), w2, size, nearest=True) > 0
        score = ncc(fimg, warp(mimg, w2, size), f.mask | wm)
        if score > best[0]:
            best = (score, w2, c, cc)
    info.update(ecc=round(best[3], 4), start=best[2].source, start_scale=round(best[2].scale, 3),
                mirror=bool(best[2].mirror))
    return best[1], info


def register(
    fixed: Any,
    moving: Any,
    config: RegistrationConfig = RegistrationConfig(),  # noqa: B008 (frozen, immutable)
    *,
    fixed_mpp: float | None = None,
    moving_mpp: float | None = None,
    progress: ProgressCallback | None = None,
    metric: str = "auto",
) -> Transform:
    """Align ``moving`` (IHC) to ``fixed`` (H&E); returns the fixed → moving transform.

    ``fixed`` and ``moving`` are RGB arrays (taken as level 0) or slides (objects
    with ``dimensions`` and ``thumbnail``, such as :class:`her2_qupath.slide.Slide`).
    Pixel sizes come from the slides or ``fixed_mpp``/``moving_mpp``; without
    them both images are assumed to share one pixel size (up to the scale the
    search finds) and everything is in pixels. ``metric`` chooses the image
    aligned: ``"auto"`` (hematoxylin, or optical density when one image's
    hematoxylin is weak; the other one too when the first result is not
    reliable, keeping the more reliable), ``"hema"``, ``"od"`` or ``"mix"``. Raises
    :class:`RegistrationError` when an image shows no tissue; a poor alignment
    is returned with ``quality["reliable"] = False``.
    """
    t0 = time.perf_counter()
    cfg = config
    if cfg.model not in ("rigid", "affine", "nonrigid"):
        raise UserInputError(f"unknown registration model {cfg.model!r}",
                             hint="use rigid, affine or nonrigid")
    if metric not in METRICS:
        raise UserInputError(f"unknown registration metric {metric!r}", hint="use " + ", ".join(METRICS))
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
    units = _pyramid_units(extent, cfg, physical, max(fu, mu))
    run = _Run(fsrc, msrc, fu, mu, physical, extent, units, cfg)
    coarse = run.pair(units[0])
    for name, lvl in (("fixed (H&E)", coarse.fixed), ("moving (IHC)", coarse.moving)):
        check_tissue(lvl.mask, name, cfg.min_tissue_fraction)
    kind = _choose_metric(coarse, metric)
    result, quality, work_unit = _align(run, coarse, kind, step)
    if metric == "auto" and quality["score"] < cfg.min_quality:
        # the other structure image may suit these stains better: keep the more reliable result
        other = "hema" if kind == "od" else "od"
        result2, quality2, unit2 = _align(run, coarse, other, lambda: None)
        log.info("alignment on %s scored %.2f, on %s %.2f", kind, quality["score"], other, quality2["score"])
        if quality2["score"] > quality["score"]:
            result, quality, work_unit = result2, quality2, unit2
    quality["min_quality"] = cfg.min_quality
    quality["reliable"] = bool(quality["score"] >= cfg.min_quality)
    quality["seconds"] = round(time.perf_counter() - t0, 3)
    quality["work_unit"] = round(work_unit, 4)
    quality["unit"] = "um" if physical else "px"
    if not quality["reliable"]:
        log.warning(
            "registration reliability %.2f is below %.2f: the H&E and IHC images may show different "
            "tissue or be mirrored; mapped results are flagged unreliable", quality["score"], cfg.min_quality)
    return result.with_metadata(quality=quality)


@dataclass
class _Run:
    """The two images, their units and working resolutions for one registration."""

    fsrc: ImageSource
    msrc: ImageSource
    fu: float
    mu: float
    physical: bool
    extent: float
    units: list[float]
    cfg: RegistrationConfig

    def pair(self, unit: float) -> Pair:
        return _pair_at(self.fsrc, self.msrc, unit, self.fu, self.mu, self.cfg)


def _align(run: _Run, coarse: Pair, kind: str, step: Any) -> tuple[Transform, dict[str, Any], float]:
    """Start, affine pyramid and (``nonrigid``) field on the ``kind`` structure image, and the quality."""
    import cv2

    cfg, units = run.cfg, run.units
    finest = max(run.fu, run.mu)
    # OpenCV's Euclidean ECC reads the angle with an arcsine (|angle| < 90° only): a rigid
    # transform is found as an affine one and projected onto rotation x scale at the end
    motion = cv2.MOTION_AFFINE

    # 1. start: rotation x scale (x mirror) search and feature matching, refined at the coarse level
    funit = max(finest, run.extent / FEATURE_SIZE)
    fpair = run.pair(funit) if funit < units[0] * 0.9 else coarse
    w, info = _start(coarse, kind, cfg, run.physical, fpair, motion)
    a0 = to_level0(w, coarse)
    step()

    # 2. affine pyramid, ECC inside the moving tissue mask
    pair = coarse
    for i, unit in enumerate(units[1:], start=2):
        pair = fpair if abs(unit - fpair.unit) < 1e-9 else run.pair(unit)
        w = to_level(a0, pair)
        # the finest level sees the whole image: the tissue outline against glass then helps
        mask = None if i == len(units) else dilate(pair.moving.mask, MASK_MARGIN_PX)
        cc, w2 = ecc(channel(pair.fixed, kind), channel(pair.moving, kind), w, motion, cfg.ecc_iterations,
                     cfg.ecc_eps, cfg.ecc_gauss, mask)
        if cc > 0:
            a0 = to_level0(w2, pair)
    step()

    fsrc, msrc = run.fsrc, run.msrc
    if cfg.model == "rigid":
        a0 = _nearest_rigid(a0, run.fu / run.mu if run.physical else None, fsrc.dimensions)
    affine = Transform(a0, fsrc.dimensions, msrc.dimensions, fixed_mpp=fsrc.mpp if run.physical else None,
                       moving_mpp=msrc.mpp if run.physical else None, model=cfg.model)
    result = affine
    floor = max(cfg.nonrigid_mpp, finest) if run.physical else finest
    nunit = max(floor, run.extent / cfg.max_nonrigid_size)

    if cfg.model != "rigid":
        # 3. the affine part: a robust fit to local block matches at the non-rigid resolution
        npair = pair if abs(nunit - pair.unit) < 1e-9 else run.pair(nunit)
        result = refine_affine(npair, affine, cfg, kind)
    if cfg.model == "nonrigid":
        # 4. non-rigid, fitted on top of the ECC result (on the mean of hematoxylin and OD when
        # hematoxylin is aligned: measured best), then carried onto the refined affine part
        fld = refine_nonrigid(npair, affine, cfg, "mix" if kind == "hema" else kind)
        if fld is not None:
            result = result.with_metadata(field=fld.rebased(np.linalg.inv(result.matrix) @ affine.matrix))
        step()

    quality = measure_quality(coarse, result, cfg, kind)
    step()
    quality.update(info)
    quality["metric"] = kind
    return result, quality, pair.unit


def assess(fixed: Any, moving: Any, transform: Transform,
           config: RegistrationConfig = RegistrationConfig(),  # noqa: B008 (frozen, immutable)
           *, fixed_mpp: float | None = None, moving_mpp: float | None = None,
           metric: str = "auto") -> dict[str, Any]:
    """The reliability figures of any ``transform`` between these two images.

    The same measurement :func:`register` records in ``quality`` (the consistent
    share, the residual, the score and ``reliable``), for a transform made
    elsewhere (a QuPath alignment, a landmark fit) or a spoiled one.
    """
    if metric not in METRICS:
        raise UserInputError(f"unknown registration metric {metric!r}", hint="use " + ", ".join(METRICS))
    fsrc = as_source(fixed, fixed_mpp, "fixed (H&E)")
    msrc = as_source(moving, moving_mpp, "moving (IHC)")
    fu, mu, physical = _units(fsrc, msrc)
    extent = max(fsrc.dimensions[0] * fu, fsrc.dimensions[1] * fu,
                 msrc.dimensions[0] * mu, msrc.dimensions[1] * mu)
    units = _pyramid_units(extent, config, physical, max(fu, mu))
    pair = _pair_at(fsrc, msrc, units[0], fu, mu, config)
    q = measure_quality(pair, transform, config, _choose_metric(pair, metric))
    q["reliable"] = bool(q["score"] >= config.min_quality)
    return q


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


def measure_quality(pair: Pair, transform: Transform, cfg: RegistrationConfig, kind: str = "hema") -> dict[str, Any]:
    """Reliability score (forward-backward consistency of local matches, :mod:`.quality`) and,
    for information, the tissue-mask Dice and the structure images' correlation."""
    import cv2

    f = pair.fixed
    maps = None if transform.field is None else moving_maps(pair, transform)
    wm = warp_moving_to_fixed(pair, transform, pair.moving.mask.astype(np.uint8), nearest=True,
                              maps=maps) > 0
    inter = float((wm & f.mask).sum())
    dice = 2.0 * inter / max(float(wm.sum() + f.mask.sum()), 1.0)
    sigma = max(0.5, float(cfg.quality_smoothing_px))
    fimg, mimg = channel(f, kind), channel(pair.moving, kind)
    fod = cv2.GaussianBlur(fimg, (0, 0), sigma)
    wod = cv2.GaussianBlur(warp_moving_to_fixed(pair, transform, mimg, maps=maps), (0, 0), sigma)
    both = f.mask | wm
    out: dict[str, Any] = {"dice": round(dice, 4), "ncc": round(ncc(fod, wod, both), 4),
                           "nmi": round(nmi(fod, wod, both), 4)}
    out.update(measure(pair, transform, fimg, mimg, maps))
    out["score"] = round(reliability_score(out["consistent_share"], out["residual_pct"]), 4)
    return out
