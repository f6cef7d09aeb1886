"""Synthetic brightfield slides whose answer is known by construction.

Images follow the Beer-Lambert model used by colour deconvolution:
``I_c = I0_c * 10^-(h * H_c + d * D_c + e * E_c + noise_c)`` with unit stain OD
vectors ``H`` (hematoxylin), ``D`` (DAB), ``E`` (eosin) and a white point
``I0`` that is deliberately not 255. Tissue is a smooth blob split into
vertical regions; each region is packed with round cells (a hematoxylin
nucleus, a faint counterstained cytoplasm and a DAB membrane ring). Every
cell's HER2 class, membrane intensity and completeness are drawn so that each
region holds exactly the requested percentages of cells at 0, 1+, 2+, 3+.

* :func:`synthetic_ihc` -> ``(rgb, h_od, dab_od, truth)``
* :func:`synthetic_pair` -> an H&E image and an IHC image of the same tissue,
  the IHC one moved by a known affine transform (returned).

Rendering is vectorised on a jittered grid (one cell per grid square), so a
4096 x 4096 slide takes about a second.

The package: :mod:`.render` (Beer-Lambert rendering: :func:`render_stains`,
the one renderer of synthetic tiles and test images, and :func:`compose_rgb`),
:mod:`.layouts` (cells drawn into the tissue) and :mod:`.slides`
(:func:`synthetic_ihc`, :func:`synthetic_pair` and their ground truth).
"""

from __future__ import annotations

from .layouts import MEMBRANE_CLASSES, MembraneClass
from .render import EOSIN, compose_rgb, render_stains
from .slides import DEFAULT_REGIONS, synthetic_ihc, synthetic_pair

__all__ = [
    "MembraneClass",
    "MEMBRANE_CLASSES",
    "DEFAULT_REGIONS",
    "EOSIN",
    "synthetic_ihc",
    "synthetic_pair",
    "compose_rgb",
    "render_stains",
]
