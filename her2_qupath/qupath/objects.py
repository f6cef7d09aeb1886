"""What the product writes into QuPath, and how it recognises its own objects later.

One rule for every path (``score``, ``batch``, the server, the Groovy scripts):

* every object's name starts with ``her2-qupath:`` (tiles ``her2-qupath: NFW/2+``, cells
  ``her2-qupath: cell``, regions ``her2-qupath: Region 1 HER2 2+ (HER2-low)``);
* every object's metadata holds the product's version under ``her2-qupath`` and the id of
  the run that made it under ``her2-qupath run``;
* an object is the product's when its name starts with the marker or its metadata holds
  it (:func:`is_product_object`); a re-run replaces exactly those, never the user's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import __version__
from ..config import PRODUCT_MARKER

__all__ = ["RUN_KEY", "CELL_NAME", "product_name", "product_metadata", "is_product_object",
           "mark_product_object", "classification_name"]

#: metadata key of the run that wrote an object
RUN_KEY = f"{PRODUCT_MARKER} run"
#: the name of every cell the product writes
CELL_NAME = f"{PRODUCT_MARKER}: cell"


def product_name(name: str | None, fallback: str = "object") -> str:
    """``"her2-qupath: <name>"`` (unchanged when it already starts with the marker)."""
    text = str(name) if name else fallback
    return text if text.startswith(PRODUCT_MARKER) else f"{PRODUCT_MARKER}: {text}"


def product_metadata(run_id: str | None) -> dict[str, str]:
    """The metadata of every object the product writes: its version and the run's id."""
    meta = {PRODUCT_MARKER: __version__}
    if run_id:
        meta[RUN_KEY] = str(run_id)
    return meta


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def classification_name(obj: Any) -> str | None:
    """The class of an object (a ``QuPathObject``, a GeoJSON dict, names or a string) as
    QuPath shows it (``"Tumor: Positive"``); None when unclassified."""
    c = _get(obj, "classification")
    if c is None:
        return None
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        return c.get("name") or ": ".join(c.get("names") or []) or None
    if isinstance(c, (tuple, list)):
        return ": ".join(str(n) for n in c) or None
    return str(c)


def is_product_object(obj: Any, marker: str = PRODUCT_MARKER) -> bool:
    """True for objects this product wrote: name starting with the marker, or the marker in
    the metadata (a ``QuPathObject``, a GeoJSON properties dict or anything with those fields)."""
    name = _get(obj, "name")
    if isinstance(name, str) and name.startswith(marker):
        return True
    meta = _get(obj, "metadata") or {}
    return isinstance(meta, dict) and marker in meta


def mark_product_object(obj: Any, *, run_id: str) -> Any:
    """A copy of ``obj`` named by :func:`product_name` with :func:`product_metadata` of ``run_id``
    (a ``QuPathObject`` is copied; other objects are changed in place and returned)."""
    name = product_name(_get(obj, "name") or classification_name(obj) or _get(obj, "object_type"))
    meta = {**dict(_get(obj, "metadata") or {}), **product_metadata(run_id)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, name=name, metadata=meta)
    obj.name = name
    obj.metadata = meta
    return obj
