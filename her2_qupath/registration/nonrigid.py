"""Non-rigid refinement: a regularised displacement field inside the tissue.

On top of the affine transform, the passes of :data:`STAGES` (block matching,
then optical flow) each measure local displacements between the fixed image
and the moving image warped by the transform so far, fit them by a smooth
field and add it:

* **Block matching**: the fixed image is cut into patches on a regular grid
  inside the tissue of both images; each patch is located in the moving image
  by normalised cross-correlation (``cv2.matchTemplate``: insensitive to the
  stains' different contrast) within a search radius, with sub-pixel
  refinement of the peak. Weak peaks and peaks on the search border are
  dropped.
* **Optical flow**: Farnebäck's dense flow between the two images after local
  contrast normalisation (each pixel relative to its neighbourhood's mean and
  spread, so the stains' contrast cancels), sampled on a grid inside the
  tissue, for two window sizes fitted together.
* **Regularised fit** (:func:`fit_field`): a field on a control grid (bilinear
  basis) minimising the weighted squared misfit plus ``λ ×`` its bending
  energy (squared second differences, the discrete thin-plate penalty of
  elastix's B-spline transform), solved as one sparse linear system; matches
  far from the fit are dropped and the fit repeated. Outside the tissue the
  penalty continues the field smoothly.

:func:`refine_affine` uses the block matches for the affine part itself: a
Huber-robust affine fit (:func:`fit_affine`) to the displacements of the
patches, composed with the ECC result.

Stages with ``shrink > 1`` work on reduced images (multi-resolution). The
result is stored on a regular grid that
:class:`~her2_qupath.registration.transform.DisplacementField` interpolates
with cubic B-splines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..config import RegistrationConfig
from ._images import level_matrix
from ._ops import subpixel
from .pair import Pair, channel, warp_moving_to_fixed
from .transform import DisplacementField, Transform

__all__ = ["refine_nonrigid", "refine_affine", "fit_affine", "match_blocks", "fit_field", "STAGES"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One pass: images reduced by ``shrink``; patch, step and radius as fractions of the config's."""

    shrink: int
    patch: float
    radius: float
    bending: float  # λ of the bending energy, relative to the data term
    method: str = "blocks"  # "blocks" (patch NCC) or "flow" (dense optical flow)


STAGES: tuple[Stage, ...] = (
    Stage(shrink=1, patch=1.0, radius=1.0, bending=1.0, method="blocks"),
    Stage(shrink=1, patch=1.0, radius=1.0, bending=1.0, method="flow"),
)
MIN_MATCHES = 16
SMOOTH_PX = 0.5  # Gaussian sigma applied to both images before matching
FLOW_WINDOWS = (0.45, 0.67)  # Farnebäck window sizes, as fractions of the patch size
FLOW_CONTRAST_PX = 2.5  # neighbourhood (sigma, px) of the contrast normalisation before optical flow
CONTROL_PX = 16  # control-grid spacing of the fit (non-rigid level px)
HUBER_PX = 1.0  # matches further than this (non-rigid level px) from the affine fit weigh less
AFFINE_FIT_ROUNDS = 10  # reweighted least-squares rounds of the robust affine fit


def match_blocks(fixed: np.ndarray, moving: np.ndarray, valid: np.ndarray, *, patch: int, step: int,
                 radius: int, min_ncc: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local displacements ``moving(p + d) ≈ fixed(p)`` at grid points inside ``valid``.

    Returns points ``(N, 2)`` (x, y), displacements ``(N, 2)`` and peak correlations ``(N,)``.
    """
    import cv2

    h, w = fixed.shape
    half = max(4, patch // 2)
    pts, disp, conf = [], [], []
    for y in range(half + radius, h - half - radius, step):
        for x in range(half + radius, w - half - radius, step):
            if not valid[y, x]:
                continue
            tpl = fixed[y - half:y + half, x - half:x + half]
            if float(tpl.std()) < 0.02:
                continue
            win = moving[y - half - radius:y + half + radius, x - half - radius:x + half + radius]
            r = cv2.matchTemplate(win, tpl, cv2.TM_CCOEFF_NORMED)
            _, peak, _, (px, py) = cv2.minMaxLoc(r)
            if peak < min_ncc or not (0 < px < r.shape[1] - 1 and 0 < py < r.shape[0] - 1):
                continue  # weak match, or the peak is on the search border
            ddx = subpixel(r[py, px - 1], r[py, px], r[py, px + 1])
            ddy = subpixel(r[py - 1, px], r[py, px], r[py + 1, px])
            pts.append((x, y))
            disp.append((px + ddx - radius, py + ddy - radius))
            conf.append(peak)
    return (np.asarray(pts, dtype=np.float64).reshape(-1, 2), np.asarray(disp, dtype=np.float64).reshape(-1, 2),
            np.asarray(conf, dtype=np.float64))


def fit_affine(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, *, huber: float,
               rounds: int = AFFINE_FIT_ROUNDS) -> np.ndarray:
    """The 3×3 affine matrix taking ``src`` to ``dst`` (``(N, 2)`` points) under a Huber loss.

    Iteratively reweighted least squares: a match whose residual exceeds
    ``huber`` weighs ``huber / residual`` times its ``weight``, so the few
    matches that follow a local deformation (or a wrong correlation peak) do
    not pull the fit.
    """
    x = np.hstack([src, np.ones((len(src), 1))])
    w = weight.astype(np.float64)
    coef = np.zeros((3, 2))
    for _ in range(max(1, rounds)):
        sw = np.sqrt(w)[:, None]
        coef = np.linalg.lstsq(x * sw, dst * sw, rcond=None)[0]
        resid = np.hypot(*(x @ coef - dst).T)
        w = weight * np.where(resid <= huber, 1.0, huber / np.maximum(resid, 1e-12))
    return np.vstack([coef.T, [0.0, 0.0, 1.0]])


def _second_differences(rows: int, cols: int):
    """Sparse operators of the second differences along x, y and the mixed one (bending energy)."""
    import scipy.sparse as sp

    def d2(n: int):
        if n < 3:
            return sp.csr_matrix((0, n))
        return sp.diags([np.ones(n - 2), -2 * np.ones(n - 2), np.ones(n - 2)], [0, 1, 2], shape=(n - 2, n))

    def d1(n: int):
        return sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n))

    ix, iy = sp.identity(cols), sp.identity(rows)
    dxx = sp.kron(iy, d2(cols))
    dyy = sp.kron(d2(rows), ix)
    dxy = sp.kron(d1(rows), d1(cols))
    return sp.vstack([dxx, dyy, np.sqrt(2.0) * dxy]).tocsr()


def fit_field(shape: tuple[int, int], pts: np.ndarray, disp: np.ndarray, weight: np.ndarray, *,
              spacing: int, bending: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth displacement (dense ``(h, w, 2)``) fitting ``disp`` at ``pts`` under a bending penalty.

    Minimises ``Σ wᵢ |u(pᵢ) − dᵢ|² + bending · n̄ · Σ |∇²u|²`` with ``u`` bilinear on a
    control grid of ``spacing`` px (``n̄``: the mean number of matches per control
    cell, so that ``bending`` does not depend on the match density). Also returns
    the fitted displacement at each point.
    """
    import cv2
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    h, w = shape
    g = float(spacing)
    rows, cols = int(np.ceil((h - 1) / g)) + 2, int(np.ceil((w - 1) / g)) + 2
    gx, gy = pts[:, 0] / g, pts[:, 1] / g
    x0, y0 = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = gx - x0, gy - y0
    n = len(pts)
    idx = np.concatenate([y0 * cols + x0, y0 * cols + x0 + 1, (y0 + 1) * cols + x0, (y0 + 1) * cols + x0 + 1])
    val = np.concatenate([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    a = sp.csr_matrix((val, (np.tile(np.arange(n), 4), idx)), shape=(n, rows * cols))
    wa = sp.diags(weight) @ a
    reg = _second_differences(rows, cols)
    density = max(n / float(rows * cols), 1e-3)
    lhs = (a.T @ wa + bending * density * (reg.T @ reg) + 1e-6 * sp.identity(rows * cols)).tocsc()
    coef = np.stack([spsolve(lhs, wa.T @ disp[:, k]) for k in range(2)], axis=1)
    fitted = a @ coef
    grid = coef.reshape(rows, cols, 2).astype(np.float32)
    # bilinear grid → dense field: resize with pixel-centre alignment of the nodes at 0, g, 2g, ...
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(g)
    dense = np.stack([cv2.remap(grid[..., k], xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                      for k in range(2)], axis=-1)
    return dense, fitted


def _local_contrast(img: np.ndarray, sigma: float) -> np.ndarray:
    """Each pixel relative to its neighbourhood's mean and spread: the stains' contrast cancels."""
    import cv2

    mean = cv2.GaussianBlur(img, (0, 0), sigma)
    var = cv2.GaussianBlur((img - mean) ** 2, (0, 0), sigma)
    return (img - mean) / np.sqrt(var + 1e-4)


def flow_matches(fixed: np.ndarray, moving: np.ndarray, valid: np.ndarray, *, step: int,
                 window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense Farnebäck optical flow between the contrast-normalised images, sampled every ``step`` px."""
    import cv2

    def u8(x: np.ndarray) -> np.ndarray:
        return np.clip(_local_contrast(x, FLOW_CONTRAST_PX) * 40.0 + 128.0, 0, 255).astype(np.uint8)

    win = max(5, window | 1)
    fl = cv2.calcOpticalFlowFarneback(u8(fixed), u8(moving), None, 0.5, 3, win, 5, 7, 1.5,
                                      cv2.OPTFLOW_FARNEBACK_GAUSSIAN)
    h, w = fixed.shape
    ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step]
    sel = valid[ys, xs]
    pts = np.stack([xs[sel], ys[sel]], axis=1).astype(np.float64)
    return pts, fl[ys[sel], xs[sel]].astype(np.float64), np.ones(len(pts))


def _remap(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(img, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def _shrink(img: np.ndarray, k: int) -> np.ndarray:
    import cv2

    if k == 1:
        return img
    return cv2.resize(img, (img.shape[1] // k, img.shape[0] // k), interpolation=cv2.INTER_AREA)


def _patches(cfg: RegistrationConfig, st: Stage, valid_px: int) -> tuple[int, int, int]:
    """Patch side, search radius and spacing of pass ``st``: the spacing is
    ``nonrigid_step_px``, wider when the tissue would hold more than
    ``nonrigid_max_patches`` patches."""
    patch = max(8, int(round(cfg.nonrigid_patch_px * st.patch)))
    radius = max(2, int(round(cfg.nonrigid_radius_px * st.radius)))
    step = max(1, int(cfg.nonrigid_step_px), int(np.ceil(np.sqrt(valid_px / max(cfg.nonrigid_max_patches, 1)))))
    return patch, radius, step


def _warped(pair: Pair, affine: Transform, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed structure image, the moving one warped onto it by ``affine`` (both
    smoothed by :data:`SMOOTH_PX`) and where both show tissue."""
    import cv2

    f = pair.fixed
    fimg = cv2.GaussianBlur(channel(f, kind), (0, 0), SMOOTH_PX)
    mimg = cv2.GaussianBlur(warp_moving_to_fixed(pair, affine, channel(pair.moving, kind)), (0, 0), SMOOTH_PX)
    mmask = warp_moving_to_fixed(pair, affine, pair.moving.mask.astype(np.uint8), nearest=True) > 0
    return fimg, mimg, f.mask & mmask


def refine_affine(pair: Pair, affine: Transform, cfg: RegistrationConfig, kind: str = "hema") -> Transform:
    """``affine`` corrected by a robust affine fit to block matches on the images of ``pair``.

    The patches of the first non-rigid pass (same size, spacing — at most
    ``nonrigid_max_patches`` of them — and search radius) are matched against the moving image warped by ``affine``, and an
    affine correction is fitted to their displacements under a Huber loss
    (:data:`HUBER_PX`, weighted by the peak correlation): the least-squares
    affine of the local matches rather than of whole-image intensities, which
    a section's uneven deformation pulls. With fewer than :data:`MIN_MATCHES`
    matches ``affine`` is returned as it is.
    """
    fimg, mimg, valid = _warped(pair, affine, kind)
    patch, radius, step = _patches(cfg, STAGES[0], int(valid.sum()))
    pts, disp, conf = match_blocks(fimg, mimg, valid, patch=patch, step=step, radius=radius,
                                   min_ncc=float(cfg.nonrigid_min_ncc))
    if len(pts) < MIN_MATCHES:
        log.info("affine refinement: only %d reliable local matches, kept the ECC result", len(pts))
        return affine
    sf = level_matrix(pair.fixed.scale)  # level px → level-0 px
    src = pts @ sf[:2, :2].T + sf[:2, 2]
    dst = (pts + disp) @ sf[:2, :2].T + sf[:2, 2]
    correction = fit_affine(src, dst, conf, huber=HUBER_PX * float(sf[0, 0]))
    return affine.with_metadata(matrix=affine.matrix @ correction)


def refine_nonrigid(pair: Pair, affine: Transform, cfg: RegistrationConfig, kind: str = "hema",
                    ) -> DisplacementField | None:
    """A smooth displacement field refining ``affine`` on the images of ``pair`` (or None)."""
    import cv2

    f = pair.fixed
    fimg, mimg, valid = _warped(pair, affine, kind)
    h, w = fimg.shape
    flow = np.zeros((h, w, 2), np.float32)
    used = 0
    for st in STAGES:
        k = st.shrink
        fi, mi = _shrink(fimg, k), _shrink(_remap(mimg, flow), k)
        vk = cv2.resize(valid.astype(np.uint8), (fi.shape[1], fi.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        patch, radius, step = _patches(cfg, st, int(vk.sum()))
        if st.method == "flow":  # two window sizes in one fit: their errors average out
            found = [flow_matches(fi, mi, vk, step=step, window=int(round(patch * k))) for k in FLOW_WINDOWS]
            pts, disp, conf = (np.concatenate([f3[i] for f3 in found]) for i in range(3))
        else:
            pts, disp, conf = match_blocks(fi, mi, vk, patch=patch, step=step, radius=radius,
                                           min_ncc=float(cfg.nonrigid_min_ncc))
        if len(pts) < MIN_MATCHES:
            log.info("non-rigid pass at 1/%d: only %d reliable local matches", k, len(pts))
            continue
        wgt = conf.copy()
        for _ in range(2):
            dense, fitted = fit_field(fi.shape, pts, disp, wgt, spacing=max(4, CONTROL_PX // k),
                                      bending=st.bending)
            resid = np.hypot(*(disp - fitted).T)
            if cfg.nonrigid_outlier_px <= 0:
                break
            keep = resid <= max(cfg.nonrigid_outlier_px / k, 1.0)
            if keep.all() or keep.sum() < MIN_MATCHES:
                break
            wgt = np.where(keep, conf, 0.0)
        inc = dense if k == 1 else cv2.resize(dense, (w, h), interpolation=cv2.INTER_LINEAR) * k
        # compose: new(p) = old(p) + inc(p) (increments are small and smooth)
        flow = flow + inc.astype(np.float32)
        used += 1
    if not used:
        return None
    g = max(1, int(cfg.nonrigid_grid_px))
    rows = np.arange(0, h + g, g)
    cols = np.arange(0, w + g, g)
    sample = flow[np.ix_(rows.clip(max=h - 1), cols.clip(max=w - 1))]
    sx, sy = f.scale
    sf = level_matrix(f.scale)
    log.debug("non-rigid: %d passes, max displacement %.2f px", used, float(np.abs(sample).max()))
    return DisplacementField(
        origin=(float(sf[0, 2]), float(sf[1, 2])),
        spacing=(float(g * sx), float(g * sy)),
        dx=(sample[..., 0] * sx).astype(np.float32),
        dy=(sample[..., 1] * sy).astype(np.float32),
    )
