"""Cells of one RGB IHC tile: detection, measurements, classes and outlines together."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import HER2_CLASSES, CellConfig, StainConfig
from ..errors import UserInputError
from ..membrane import line_density, membrane_maps
from ..stain import StainVectors, deconvolve
from ..stain.deconvolution import _background
from ._base import _check_config, _check_mpp
from .measure import MEASUREMENTS, _measure, cell_compartments, classify_cells
from .nuclei import _channel, detect_nuclei
from .outlines import label_outlines

__all__ = ["Cell", "CellResult", "detect_cells"]

log = logging.getLogger(__name__)


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
        nucleus_polygons, cell_polygons: the outlines, label order (a sequence of shapely
            polygons, made on first use, that is an :class:`~.outlines.Outlines`; None
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
    method and every parameter are described in the docstring of
    :mod:`her2_qupath.cells` and in ``docs/cells.md``.

    ``polygons=False`` skips the outlines (about a fifth of the time) for
    callers that need only the classes and measurements: each cell's
    ``nucleus_polygon`` and ``cell_polygon`` are then None. ``objects=False``
    leaves out the :class:`Cell` objects (``cells`` is empty): the columns and
    outlines are all a whole-slide run needs (:mod:`her2_qupath.cell_table`).
    """
    a = _as_rgb(rgb)
    mpp = _check_mpp(mpp)
    _check_config(config, stain)
    if vectors is None:
        vectors = StainVectors.default(stain)
    if background is None:
        background = stain.background
    line = None
    if stain.intensity == "membrane":
        maps = membrane_maps(a, vectors, tuple(_background(background, a, stain)))
        hema, dab = maps.hematoxylin, maps.dab
        line = line_density(maps.membrane_dab, mpp, stain)
    else:
        od = deconvolve(a, vectors, background)
        hema, dab = od[..., 0], od[..., 1]
    nuclei = detect_nuclei(_channel(hema, dab, config), mpp, config)
    n = int(nuclei.max())
    compartments = cell_compartments(nuclei, mpp, config)
    cells, membranes, cytoplasm, _ = compartments
    measurements, centroids = _measure(hema, dab, nuclei, compartments, mpp, config, stain, line)
    classes = classify_cells(measurements, config, stain)
    edge = np.zeros(n + 1, dtype=bool)
    edge[np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])] = True
    tol = config.polygon_tolerance_px
    if polygons:
        nucleus_polygons = label_outlines(nuclei, n, tolerance=tol)
        cell_polygons = label_outlines(cells, n, tolerance=tol)
    else:
        nucleus_polygons = cell_polygons = [None] * n
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
