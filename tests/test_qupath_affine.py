"""QuPath's *Interactive image alignment* matrix, checked against points mapped by hand.

QuPath's ``ImageServerOverlay`` paints the overlay image through the *inverse* of its
affine (``paintOverlay`` concatenates ``transformInverse``), and its default affine is
``base µm/px ÷ overlay µm/px`` on the diagonal: the matrix maps base-image (the viewer's
image) coordinates to overlay coordinates. With the H&E slide open and the IHC slide as
the overlay, a point of the H&E must therefore land where the same tissue lies on the IHC.
"""

from __future__ import annotations

import cv2
import numpy as np

from her2_qupath.registration import register
from her2_qupath.synthetic import synthetic_pair


def _qupath_maps(q: list[list[float]], x: float, y: float) -> tuple[float, float]:
    """What QuPath computes: x' = mxx·x + mxy·y + tx, y' = myx·x + myy·y + ty."""
    (mxx, mxy, tx), (myx, myy, ty) = q
    return mxx * x + mxy * y + tx, myx * x + myy * y + ty


def test_identity_at_two_pixel_sizes_is_qupaths_default() -> None:
    """Same tissue, IHC scanned at twice the resolution: QuPath's resetAffine gives diag 2."""
    he, ihc_full, _, _ = synthetic_pair((768, 768), seed=3, rotation_deg=0.0, translation=(0.0, 0.0))
    ihc = cv2.resize(ihc_full, (1536, 1536), interpolation=cv2.INTER_LINEAR)  # 0.25 µm/px
    t = register(he, ihc, fixed_mpp=0.5, moving_mpp=0.25)
    q = t.to_qupath_affine()
    # by hand: base px × (0.5 / 0.25) = overlay px (QuPath's default for these pixel sizes),
    # + 0.5 px because a 2× resize puts pixel centres at 2x + 0.5
    for x, y in ((100.0, 50.0), (400.0, 300.0), (700.0, 650.0)):
        qx, qy = _qupath_maps(q, x, y)
        assert abs(qx - (2 * x + 0.5)) < 1.5 and abs(qy - (2 * y + 0.5)) < 1.5, (q, x, y, qx, qy)


def test_a_shifted_ihc_moves_he_points_by_the_shift() -> None:
    """The IHC shows the H&E's tissue 30 px right and 20 px up: H&E (x, y) → IHC (x+30, y-20)."""
    he, ihc, _, truth = synthetic_pair((768, 768), seed=5, rotation_deg=0.0, translation=(30.0, -20.0))
    q = register(he, ihc, fixed_mpp=0.5, moving_mpp=0.5).to_qupath_affine()
    for x, y in ((200.0, 200.0), (600.0, 150.0), (350.0, 650.0)):
        qx, qy = _qupath_maps(q, x, y)
        assert abs(qx - (x + 30)) < 1.5 and abs(qy - (y - 20)) < 1.5, (q, qx, qy)
    # and the drawn cells: every H&E cell centre lands on its IHC cell centre
    he_xy = np.stack([truth["cells"]["x"], truth["cells"]["y"]], axis=1).astype(float)
    ihc_xy = np.asarray(truth["ihc_cells_xy"], float)
    mapped = np.array([_qupath_maps(q, x, y) for x, y in he_xy])
    assert np.median(np.hypot(*(mapped - ihc_xy).T)) < 1.5
