"""The H&E → IHC transform: an affine matrix plus an optional smooth displacement field.

Direction: a :class:`Transform` maps **fixed** (H&E) level-0 pixel coordinates
to **moving** (IHC) level-0 pixel coordinates::

    moving = A · (fixed + d(fixed))

where ``A`` is a 3×3 affine matrix and ``d`` an optional displacement field
(in fixed level-0 pixels) sampled on a coarse regular grid and interpolated
with cubic B-splines. Points use QuPath's convention: ``(x, y)``, x to the
right, y down, pixel centres at integer coordinates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json, json_default
from ..errors import UserInputError

__all__ = ["DisplacementField", "Transform", "TRANSFORM_FORMAT", "TRANSFORM_VERSION"]

log = logging.getLogger(__name__)

TRANSFORM_FORMAT = "her2-qupath-transform"
TRANSFORM_VERSION = 1


@dataclass(frozen=True, eq=False)
class DisplacementField:
    """A smooth displacement ``d(x, y)`` in fixed level-0 pixels, on a regular grid.

    Grid node ``(row, col)`` sits at fixed level-0 ``(origin[0] + col * spacing[0],
    origin[1] + row * spacing[1])``; between nodes the field is interpolated with
    cubic B-splines, and beyond the grid the edge values continue.
    """

    origin: tuple[float, float]
    spacing: tuple[float, float]
    dx: np.ndarray  # (rows, cols) float32
    dy: np.ndarray  # (rows, cols) float32

    def __post_init__(self) -> None:
        if self.dx.shape != self.dy.shape or self.dx.ndim != 2:
            raise UserInputError(
                f"displacement field components have shapes {self.dx.shape} and {self.dy.shape}",
                hint="dx and dy must be 2-D arrays of the same shape",
            )

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Displacements ``(N, 2)`` at fixed level-0 points ``(N, 2)``."""
        from scipy.ndimage import map_coordinates

        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        cols = (pts[:, 0] - self.origin[0]) / self.spacing[0]
        rows = (pts[:, 1] - self.origin[1]) / self.spacing[1]
        coords = np.vstack([rows, cols])
        order = 3 if min(self.dx.shape) >= 4 else 1
        dx = map_coordinates(self.dx.astype(np.float64), coords, order=order, mode="nearest")
        dy = map_coordinates(self.dy.astype(np.float64), coords, order=order, mode="nearest")
        return np.stack([dx, dy], axis=1)

    def rebased(self, matrix: np.ndarray) -> DisplacementField:
        """The field ``d'`` with ``x + d'(x) = M · (x + d(x))`` for the 3×3 affine ``M``.

        Moves a transform ``A · (x + d(x))`` onto another affine part ``B``
        without changing where any point goes: ``B · (x + d'(x))`` with
        ``M = B⁻¹ A``. Exact at the grid nodes; between them too, as cubic
        B-spline interpolation reproduces the affine term.
        """
        m = np.asarray(matrix, dtype=np.float64)
        rows, cols = self.dx.shape
        gx = self.origin[0] + np.arange(cols) * self.spacing[0]
        gy = self.origin[1] + np.arange(rows) * self.spacing[1]
        x, y = np.meshgrid(gx, gy)
        px, py = x + self.dx, y + self.dy
        return replace(self, dx=(m[0, 0] * px + m[0, 1] * py + m[0, 2] - x).astype(np.float32),
                       dy=(m[1, 0] * px + m[1, 1] * py + m[1, 2] - y).astype(np.float32))

    @property
    def max_displacement(self) -> float:
        return float(np.sqrt(self.dx.astype(np.float64) ** 2 + self.dy ** 2).max(initial=0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": [float(v) for v in self.origin],
            "spacing": [float(v) for v in self.spacing],
            "shape": list(self.dx.shape),
            "dx": np.round(self.dx.astype(np.float64), 3).tolist(),
            "dy": np.round(self.dy.astype(np.float64), 3).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DisplacementField:
        dx = np.asarray(data["dx"], dtype=np.float32)
        dy = np.asarray(data["dy"], dtype=np.float32)
        shape = tuple(data.get("shape", dx.shape))
        if dx.shape != shape or dy.shape != shape:
            raise UserInputError(
                f"displacement field has shape {dx.shape}/{dy.shape}, header says {shape}",
                hint="the transform file is damaged; register again",
            )
        sx, sy = (float(v) for v in data["spacing"])
        if not (sx > 0 and sy > 0):
            raise UserInputError("displacement field spacing must be positive",
                                 hint="the transform file is damaged; register again")
        ox, oy = (float(v) for v in data["origin"])
        return cls(origin=(ox, oy), spacing=(sx, sy), dx=dx, dy=dy)


def _matrix3(m: Any) -> np.ndarray:
    a = np.asarray(m, dtype=np.float64)
    if a.shape == (2, 3):
        a = np.vstack([a, [0.0, 0.0, 1.0]])
    if a.shape != (3, 3) or not np.all(np.isfinite(a)):
        raise UserInputError(f"affine matrix must be 2x3 or 3x3 and finite, got shape {a.shape}",
                             hint="give [[a, b, tx], [c, d, ty]]")
    if abs(np.linalg.det(a[:2, :2])) < 1e-12:
        raise UserInputError("affine matrix is singular (it collapses the image)",
                             hint="check the matrix; registration never produces one")
    return a


@dataclass(frozen=True, eq=False)
class Transform:
    """Fixed (H&E) level-0 pixels → moving (IHC) level-0 pixels.

    ``matrix`` is the 3×3 affine part ``A``; ``field`` an optional smooth
    displacement applied before it (``moving = A · (x + d(x))``). Sizes are
    ``(width, height)`` of level 0; MPPs are ``None`` for images without a pixel
    size (then every coordinate is in pixels). ``quality`` holds the figures
    measured after alignment (see :func:`~her2_qupath.registration.register`).
    """

    matrix: np.ndarray
    fixed_size: tuple[int, int]
    moving_size: tuple[int, int]
    fixed_mpp: float | None = None
    moving_mpp: float | None = None
    fixed_sha256: str | None = None
    moving_sha256: str | None = None
    fixed_name: str | None = None
    moving_name: str | None = None
    model: str = "affine"
    field: DisplacementField | None = None
    quality: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", _matrix3(self.matrix))
        object.__setattr__(self, "fixed_size", tuple(int(v) for v in self.fixed_size))
        object.__setattr__(self, "moving_size", tuple(int(v) for v in self.moving_size))

    # -- construction -------------------------------------------------------
    @classmethod
    def identity(cls, fixed_size: tuple[int, int], moving_size: tuple[int, int] | None = None,
                 **kwargs: Any) -> Transform:
        return cls(np.eye(3), fixed_size, moving_size or fixed_size, **kwargs)

    def with_metadata(self, **kwargs: Any) -> Transform:
        """A copy with some fields replaced (e.g. file hashes or quality)."""
        return replace(self, **kwargs)

    # -- properties -----------------------------------------------------------
    @property
    def reliable(self) -> bool:
        """False when the registration's quality was below the configured minimum."""
        return bool(self.quality.get("reliable", True))

    @property
    def is_affine(self) -> bool:
        return self.field is None

    @property
    def scale(self) -> float:
        """Mean linear scale of the affine part (moving pixels per fixed pixel)."""
        return math.sqrt(abs(float(np.linalg.det(self.matrix[:2, :2]))))

    @property
    def inverse_matrix(self) -> np.ndarray:
        return np.linalg.inv(self.matrix)

    # -- applying ---------------------------------------------------------------
    def apply(self, points: Any) -> np.ndarray:
        """Map fixed level-0 points ``(N, 2)`` (x, y) to moving level-0 points."""
        pts = _points(points)
        if self.field is not None and len(pts):
            pts = pts + self.field(pts)
        return pts @ self.matrix[:2, :2].T + self.matrix[:2, 2]

    def apply_inverse(self, points: Any, *, tol: float = 1e-3, max_iter: int = 50) -> np.ndarray:
        """Map moving level-0 points back to fixed level-0 points.

        Exact for the affine part; the displacement field is inverted by
        fixed-point iteration ``x ← z − d(x)`` (it converges because the field
        is smooth: its gradient is far below 1).
        """
        pts = _points(points)
        inv = self.inverse_matrix
        z = pts @ inv[:2, :2].T + inv[:2, 2]
        if self.field is None or not len(z):
            return z
        x = z - self.field(z)
        for _ in range(max_iter):
            x_new = z - self.field(x)
            if float(np.abs(x_new - x).max()) < tol:
                return x_new
            x = x_new
        log.warning("inverse of the displacement field did not converge to %.3g px", tol)
        return x

    def to_qupath_affine(self) -> list[list[float]]:
        """The 2×3 matrix of QuPath's *Interactive image alignment* (affine part only).

        QuPath shows ``[[mxx, mxy, tx], [myx, myy, ty]]`` for the overlay image and
        maps **base-image** (the one open in the viewer) coordinates to **overlay**
        coordinates. With the H&E (fixed) slide open and the IHC (moving) slide as
        overlay, this is exactly ``A``: ``x_ihc = mxx·x_he + mxy·y_he + tx``,
        ``y_ihc = myx·x_he + myy·y_he + ty``, in level-0 pixels of both images.
        A Groovy script builds it with ``new AffineTransform(mxx, myx, mxy, myy, tx, ty)``.
        The non-rigid field, if any, is not part of it.
        """
        return [[float(v) for v in row] for row in self.matrix[:2]]

    # -- JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRANSFORM_FORMAT,
            "version": TRANSFORM_VERSION,
            "direction": "fixed (H&E) level-0 pixels -> moving (IHC) level-0 pixels: "
                         "moving = matrix . (fixed + field(fixed))",
            "model": self.model,
            "matrix": [[float(v) for v in row] for row in self.matrix],
            "qupath_affine": self.to_qupath_affine(),
            "fixed": {"name": self.fixed_name, "size": list(self.fixed_size),
                      "mpp": self.fixed_mpp, "sha256": self.fixed_sha256},
            "moving": {"name": self.moving_name, "size": list(self.moving_size),
                       "mpp": self.moving_mpp, "sha256": self.moving_sha256},
            "field": None if self.field is None else self.field.to_dict(),
            "quality": self.quality,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transform:
        if not isinstance(data, dict) or data.get("format") != TRANSFORM_FORMAT:
            raise UserInputError("not a her2-qupath transform file (missing \"format\": "
                                 f"\"{TRANSFORM_FORMAT}\")",
                                 hint="create one with `her2-qupath register`")
        if int(data.get("version", 0)) > TRANSFORM_VERSION:
            raise UserInputError(f"transform file version {data.get('version')} is newer than "
                                 f"this program understands ({TRANSFORM_VERSION})",
                                 hint="upgrade her2-qupath")
        try:
            fx, mv = data["fixed"], data["moving"]
            fld = data.get("field")
            return cls(
                matrix=np.asarray(data["matrix"], dtype=np.float64),
                fixed_size=tuple(fx["size"]),
                moving_size=tuple(mv["size"]),
                fixed_mpp=_opt_float(fx.get("mpp")),
                moving_mpp=_opt_float(mv.get("mpp")),
                fixed_sha256=fx.get("sha256"),
                moving_sha256=mv.get("sha256"),
                fixed_name=fx.get("name"),
                moving_name=mv.get("name"),
                model=str(data.get("model", "affine")),
                field=None if fld is None else DisplacementField.from_dict(fld),
                quality=dict(data.get("quality") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, UserInputError):
                raise
            raise UserInputError(f"transform file is incomplete or damaged: {err!r}",
                                 hint="register again with `her2-qupath register`") from err

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The JSON text; written atomically to ``path`` when given."""
        data = self.to_dict()
        if path is not None:
            # a displacement field is thousands of numbers: keep that file compact
            atomic_write_json(path, data, indent=2 if self.field is None else None)
        return json.dumps(data, indent=2, allow_nan=False, default=_json_safe)

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> Transform:
        """Read a transform from a JSON file path or a JSON string."""
        text: str
        if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith("{")):
            path = Path(source)
            if not path.is_file():
                raise UserInputError(f"transform file {path} not found",
                                     hint="create it with `her2-qupath register`")
            text = path.read_text(encoding="utf-8")
        else:
            text = str(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserInputError(f"transform file is not valid JSON: {err}",
                                 hint="register again with `her2-qupath register`") from err
        return cls.from_dict(data)

    def __repr__(self) -> str:
        kind = "affine" if self.field is None else "affine+field"
        return (f"Transform({self.model}, {kind}, fixed {self.fixed_size}, moving {self.moving_size}, "
                f"quality={self.quality.get('score')})")


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _json_safe(obj: Any) -> Any:
    return json_default(obj)


def _points(points: Any) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return pts.reshape(0, 2)
    if pts.ndim == 1 and pts.shape[0] == 2:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise UserInputError(f"points must be an (N, 2) array of x, y; got shape {pts.shape}",
                             hint="pass [[x, y], ...]")
    return pts
