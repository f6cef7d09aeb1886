"""Colour deconvolution of brightfield IHC: hematoxylin, DAB and residual optical density.

The method is Ruifrok & Johnston's colour deconvolution (Anal Quant Cytol Histol
2001;23:291-9). Light passing a stained section follows the Beer-Lambert law,
``I_c = I0_c * 10^(-OD_c)``, so in optical-density space the contributions of
the stains add: ``OD = c_H * v_H + c_DAB * v_DAB + c_R * v_R`` with unit OD
vectors ``v``. Stacking the vectors as the rows of ``M`` gives ``OD = c @ M``
and the stain amounts ``c = OD @ inv(M)``.

Implementation: the uint8 -> OD step is a 256-entry lookup table
(``OD_c = -log10(max(I, 1)) + log10(I0_c)``; the per-channel background is an
additive offset), and the 3 x 3 unmixing is one per-pixel affine matrix
product; both run in float32 through OpenCV (``cv2.LUT`` and
``cv2.transform``) in cache-sized row strips on a few threads, so memory
stays bounded to the output on large arrays.

Pixel classes mirror the seed paper's segmentation map: 0 background (no
tissue), 1 HER2 0, 2 HER2 1+, 3 HER2 2+, 4 HER2 3+ from DAB OD thresholds
(QuPath's positive-cell defaults 0.2 / 0.4 / 0.6).

The package: :mod:`.vectors` (:class:`StainVectors`, QuPath's stain strings),
:mod:`.deconvolution` (white point, OD and the unmixing), :mod:`.classes` (the
pixel classes) and :mod:`.estimation` (Macenko's vectors, the H&E / IHC stain shares).
"""

from __future__ import annotations

from .classes import BACKGROUND_CLASS, class_map_from_stains, dab_class_map
from .deconvolution import dab_od, deconvolve, estimate_background, od_lut, rgb_to_od
from .estimation import StainCheck, estimate_vectors, stain_shares
from .vectors import StainVectors

__all__ = [
    "StainVectors",
    "estimate_background",
    "rgb_to_od",
    "od_lut",
    "deconvolve",
    "dab_od",
    "dab_class_map",
    "class_map_from_stains",
    "estimate_vectors",
    "StainCheck",
    "stain_shares",
    "BACKGROUND_CLASS",
]
