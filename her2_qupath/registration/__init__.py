"""H&E ↔ IHC registration and the tile mapping ``I``.

``register(fixed, moving)`` estimates a :class:`Transform` from the H&E
(fixed) slide to the IHC (moving) slide; ``map_tile``/``read_mapped_tile``
give each H&E tile its IHC partner; ``warp_geometry`` carries annotations
between the two. See ``docs/registration.md`` for the method, the JSON format
and the QuPath affine convention.
"""

from __future__ import annotations

from .core import assess, register
from .files import check_transform_fits, register_slides, warp_geojson, warp_points_csv
from .mapping import map_tile, read_mapped_tile, tile_sample_grid, warp_geometry
from .render import render_registration
from .transform import DisplacementField, Transform

__all__ = [
    "register",
    "assess",
    "Transform",
    "DisplacementField",
    "map_tile",
    "read_mapped_tile",
    "tile_sample_grid",
    "warp_geometry",
    "render_registration",
    "register_slides",
    "check_transform_fits",
    "warp_geojson",
    "warp_points_csv",
]
