"""QuPath classes: the one matching rule (``--roi-class``, ``TUMOR_CLASS``), names and colours.

QuPath classes may be derived ("Tumor: Positive", stored as the names
``["Tumor", "Positive"]``). A class asked for matches an object's class when it
equals the whole class or any one of its parts, ignoring case and the spaces
around the parts: ``tumor`` matches ``Tumor``, ``Tumor: invasive`` and
``Invasive: Tumor``, not ``Tumour`` or ``Stroma``. ``score``, ``batch``,
``validate``, the server and the Groovy scripts all use this rule.

A classification is held as one name or a tuple of names (a derived class); its
colour is the HER2 colour of :data:`her2_qupath.config.HER2_COLORS` or a stable
colour from the name (:func:`class_color`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..config import HER2_COLORS

__all__ = ["RGB", "as_rgb", "class_color", "class_matches", "class_parts", "normalise_class",
           "unpack_rgb"]

RGB = tuple[int, int, int]


def class_parts(name: str | None) -> tuple[str, ...]:
    """The parts of a class name (``"Tumor: Positive"`` -> ``("tumor", "positive")``), case-folded."""
    if not name:
        return ()
    return tuple(p.strip().casefold() for p in str(name).split(":") if p.strip())


def class_matches(name: str | None, wanted: str) -> bool:
    """Whether the class ``name`` is ``wanted`` or has it as a part (case ignored)."""
    if not name:
        return False
    w = wanted.strip().casefold()
    return str(name).strip().casefold() == w or w in class_parts(name)


def class_color(name: str | Sequence[str]) -> RGB:
    """Colour of a classification: the HER2 colours from config, else a stable hash colour.

    A derived class (``("Tumor", "HER2 2+")``) takes the colour of its last HER2 name
    if it has one. Other names get a colour from the MD5 of the name, mid-bright so it
    shows on both the slide and QuPath's dark overlay.
    """
    names = (name,) if isinstance(name, str) else tuple(name)
    for part in reversed(names):
        if part in HER2_COLORS:
            return HER2_COLORS[part]
    digest = hashlib.md5(": ".join(names).encode("utf-8"), usedforsecurity=False).digest()
    return tuple(int(64 + b % 160) for b in digest[:3])  # type: ignore[return-value]


def unpack_rgb(value: int) -> RGB:
    """RGB of a packed (A)RGB int as Java writes it (signed 32-bit)."""
    v = int(value) & 0xFFFFFFFF
    return ((v >> 16) & 255, (v >> 8) & 255, v & 255)


def as_rgb(value: Any, *, where: str) -> RGB:
    """Normalise ``[r, g, b]``, ``[r, g, b, a]`` or a packed int to an RGB tuple."""
    if isinstance(value, bool):
        raise ValueError(f"{where} must be [r, g, b] integers 0-255, got {value!r}")
    if isinstance(value, int):
        return unpack_rgb(value)
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], int):
            return unpack_rgb(value[0])
        if len(value) in (3, 4) and all(
            isinstance(c, (int, float))
            and not isinstance(c, bool)
            and float(c).is_integer()
            and 0 <= c <= 255
            for c in value
        ):
            r, g, b = (int(c) for c in value[:3])
            return (r, g, b)
    raise ValueError(f"{where} must be [r, g, b] integers 0-255, got {value!r}")


def normalise_class(value: Any) -> str | tuple[str, ...] | None:
    """A classification as one name or a tuple of names (``"Tumor: Positive"`` -> ``("Tumor",
    "Positive")``); None stays None. Raises ValueError for an empty name."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = tuple(p.strip() for p in value.split(":"))
        if any(not p for p in parts):
            raise ValueError(f"classification {value!r} has an empty name")
        return parts[0] if len(parts) == 1 else parts
    if isinstance(value, (list, tuple)):
        parts = tuple(str(p) for p in value)
        if not parts or any(not p.strip() for p in parts):
            raise ValueError(f"classification {value!r} has an empty name")
        return parts[0] if len(parts) == 1 else parts
    raise ValueError(f"classification must be a string or a sequence of names, got {value!r}")
