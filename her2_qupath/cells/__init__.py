"""Cell-level membrane analysis of DAB immunohistochemistry (HER2).

HER2 is a membrane stain, and the clinical rules (ASCO/CAP) count tumour cells
by the intensity and completeness of their membrane staining. This package
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

The package: :mod:`.nuclei` (steps 1-2), :mod:`.measure` (steps 3-7: compartments,
measurements, classes), :mod:`.outlines` (the cell and nucleus polygons) and
:mod:`.detect` (:func:`detect_cells`, the whole tile, and its :class:`CellResult`);
:mod:`._base` holds the argument checks they share.
"""

from __future__ import annotations

from .detect import Cell, CellResult, detect_cells
from .measure import MEASUREMENTS, Compartments, cell_compartments, classify_cells, measure_cells
from .nuclei import detect_nuclei, nucleus_channel
from .outlines import label_polygons

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
