"""One rule for "is this object of the class asked for" (``--roi-class``, ``TUMOR_CLASS``).

QuPath classes may be derived ("Tumor: Positive", stored as the names
``["Tumor", "Positive"]``). A class asked for matches an object's class when it
equals the whole class or any one of its parts, ignoring case and the spaces
around the parts: ``tumor`` matches ``Tumor``, ``Tumor: invasive`` and
``Invasive: Tumor``, not ``Tumour`` or ``Stroma``. ``score``, ``batch``,
``validate``, the server and the Groovy scripts all use this rule.
"""

from __future__ import annotations

__all__ = ["class_matches", "class_parts"]


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
