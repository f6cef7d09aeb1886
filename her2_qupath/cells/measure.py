"""Cells grown from nuclei, their compartments, per-cell measurements and HER2 classes.

Steps 3-7 of :mod:`her2_qupath.cells`: cell expansion, the membrane band and
the cytoplasm, the measurements named as QuPath names them, the angular
membrane completeness and the class 0 / 1+ / 2+ / 3+ of each cell.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..config import CellConfig, StainConfig
from ._base import _check_mpp

__all__ = ["MEASUREMENTS", "Compartments", "cell_compartments", "measure_cells", "classify_cells"]

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


class Compartments(NamedTuple):
    """Label images of the cell compartments (label i = cell i) and the boundary depth."""

    cells: np.ndarray  # int32, nucleus + cytoplasm + membrane
    membranes: np.ndarray  # int32, the band along the cell boundary, outside the nucleus
    cytoplasm: np.ndarray  # int32, the rest of the cell outside the nucleus
    # float32: in the membrane band, the distance (pixels) to the cell's boundary; +inf elsewhere
    depth: np.ndarray


def _inner_boundaries(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour of another label (or background).

    ``skimage.segmentation.find_boundaries(labels, mode="inner")`` — the grey
    dilation and erosion by the cross differ exactly where a 4-neighbour
    differs (the image edge repeats its pixels) — with four comparisons.
    """
    edge = np.zeros(labels.shape, dtype=bool)
    down = labels[:-1] != labels[1:]
    edge[:-1] |= down
    edge[1:] |= down
    right = labels[:, :-1] != labels[:, 1:]
    edge[:, :-1] |= right
    edge[:, 1:] |= right
    edge &= labels != 0
    return edge


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
    ``depth``: the distance of a membrane pixel to the nearest cell boundary (what
    the ring's layers are cut by); +inf off the membrane band.
    """
    from ._compiled_cells import expand, split_band

    mpp = _check_mpp(mpp)
    nuclei = np.ascontiguousarray(nuclei, dtype=np.int32)
    cells = expand(nuclei, config.expansion_um / mpp)  # = skimage's expand_labels, compiled
    # the band: distance to the cell's boundary < width, in float32 as NumPy compares them
    membranes, cytoplasm, depth = split_band(cells, nuclei, _inner_boundaries(cells),
                                             np.float32(config.membrane_width_um / mpp))
    return Compartments(cells, membranes, cytoplasm, depth)


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
    from ._compiled_cells import labelled_pixels, ring_sectors

    rr, cc, lab = labelled_pixels(np.ascontiguousarray(membranes))  # np.nonzero's order
    lab -= 1
    angle = np.arctan2(rr - centres_rc[lab, 0], cc - centres_rc[lab, 1])
    # binned, summed and reduced per sector in compiled loops (the same float64 sums)
    layer = (depth[rr, cc] / max(bin_px, 1e-6)).astype(np.int64)
    return ring_sectors(rr, cc, lab, angle, layer, np.ascontiguousarray(dab), n, sectors,
                        float(threshold))


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
    return _measure(od[..., 0], od[..., 1], nuclei, compartments, mpp, config, stain, line)[0]


def _measure(hematoxylin: np.ndarray, dab: np.ndarray, nuclei: np.ndarray,
             compartments: Compartments, mpp: float, config: CellConfig, stain: StainConfig,
             line: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`measure_cells` of the hematoxylin and DAB planes, and the nucleus centroids
    ``(x, y)`` in QuPath pixel coordinates (the mean row and column of each nucleus's
    pixels, plus half a pixel)."""
    from ._compiled_cells import compartment_sums

    mpp = _check_mpp(mpp)
    cells, membranes, cytoplasm, depth = compartments
    n = int(cells.max()) if cells.size else 0
    hema = np.ascontiguousarray(hematoxylin)
    dab = np.ascontiguousarray(dab)
    px_um2 = mpp * mpp
    counts, sums, peaks = compartment_sums(*(np.ascontiguousarray(x, dtype=np.int32) for x in (
        cells, nuclei, membranes, cytoplasm)), hema, dab, n)

    def mean(column: int, compartment: int) -> np.ndarray:
        count = counts[:, compartment]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, sums[:, column] / np.maximum(count, 1), np.nan)

    def peak(compartment: int) -> np.ndarray:
        return np.where(counts[:, compartment + 1] > 0, peaks[:, compartment], np.nan)

    out: dict[str, np.ndarray] = {}
    out["Nucleus: Area µm^2"] = counts[:, 1] * px_um2
    out["Cell: Area µm^2"] = counts[:, 0] * px_um2
    out["Nucleus: Hematoxylin OD mean"] = mean(1, 1)
    out["Nucleus: DAB OD mean"] = mean(2, 1)
    out["Nucleus: DAB OD max"] = peak(0)
    out["Cytoplasm: DAB OD mean"] = mean(4, 3)
    out["Cytoplasm: DAB OD max"] = peak(2)
    out["Membrane: DAB OD mean"] = mean(3, 2)
    out["Membrane: DAB OD max"] = peak(1)
    # (row, col) of the cells' pixel centres: the centroids (x, y) less the half pixel
    centres = np.stack([mean(5, 0) + 0.5, mean(6, 0) + 0.5], axis=1) - 0.5
    cell_dab = mean(0, 0)
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
    nucleus_centres = np.stack([mean(8, 1) + 0.5, mean(7, 1) + 0.5], axis=1)
    return {name: out[name] for name in MEASUREMENTS}, nucleus_centres


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
