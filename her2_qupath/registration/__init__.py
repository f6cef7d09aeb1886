"""H&E ↔ IHC registration and the tile mapping ``I``.

See ``docs/registration.md`` for the method, the JSON format and the QuPath
affine convention.
"""

from __future__ import annotations

from .core import register
from .transform import DisplacementField, Transform

__all__ = ["register", "Transform", "DisplacementField"]
