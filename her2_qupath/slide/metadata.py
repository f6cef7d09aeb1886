"""Slide metadata: Aperio descriptions, OME-XML, TIFF resolution tags, compression names.

Pixel size (MPP, µm/px) comes from, in order: the ``mpp=`` argument (the CLI's
``--mpp``), the Aperio ``ImageDescription`` (``MPP = 0.499``), OME-XML
``PhysicalSizeX/Y`` (with units), TIFF ``XResolution``/``ResolutionUnit`` and
PNG/JPEG density. Resolution tags without a unit or outside a plausible range
(72 dpi is 353 µm/px) are ignored; :func:`_plausible` applies the range.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..config import SlideConfig

__all__: list[str] = []  # helpers of her2_qupath.slide; nothing public

log = logging.getLogger(__package__)  # "her2_qupath.slide", as before the split

# micrometres per unit for OME-XML length units
_OME_UNITS_UM: dict[str, float] = {
    "pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0,
    "mm": 1e3, "cm": 1e4, "dm": 1e5, "m": 1e6, "in": 25400.0,
}
# micrometres per TIFF ResolutionUnit (2 inch, 3 cm; 4/5 are tifffile's mm/µm extensions)
_RESUNIT_UM: dict[int, float] = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}


def _parse_aperio(description: str) -> dict[str, str]:
    """``key = value`` pairs of an Aperio ImageDescription."""
    out: dict[str, str] = {}
    for part in description.split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _float_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _plausible(mpp: float | None, config: SlideConfig) -> float | None:
    if mpp is None or not (config.min_plausible_mpp <= mpp <= config.max_plausible_mpp):
        return None
    return mpp


def _mpp_from_resolution(page: Any, config: SlideConfig) -> float | None:
    """MPP from XResolution/YResolution + ResolutionUnit, if meaningful."""
    try:
        unit = int(page.resolutionunit)
        xres, yres = (float(v) for v in page.resolution)
    except (TypeError, ValueError, AttributeError):
        return None
    um = _RESUNIT_UM.get(unit)
    if um is None or xres <= 0 or yres <= 0:
        return None
    mx, my = um / xres, um / yres
    if abs(mx - my) > 0.01 * max(mx, my):
        log.warning("pixels are not square (%.4g x %.4g µm); using their mean", mx, my)
    return _plausible((mx + my) / 2, config)


def _parse_ome(xml: str) -> tuple[float | None, float | None]:
    """(MPP, objective magnification) of the first OME Image."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as err:
        log.warning("unreadable OME-XML (%s); ignoring its metadata", err)
        return None, None
    image = root.find("{*}Image")
    pixels = image.find("{*}Pixels") if image is not None else None
    mpp = None
    if pixels is not None:
        sizes = []
        for axis in ("X", "Y"):
            value = _float_or_none(pixels.get(f"PhysicalSize{axis}"))
            unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
            if value is not None and unit in _OME_UNITS_UM:
                sizes.append(value * _OME_UNITS_UM[unit])
        if sizes:
            mpp = sum(sizes) / len(sizes)
    magnification = None
    settings = image.find("{*}ObjectiveSettings") if image is not None else None
    objectives = root.findall("{*}Instrument/{*}Objective")
    chosen = None
    if settings is not None:
        chosen = next((o for o in objectives if o.get("ID") == settings.get("ID")), None)
    if chosen is None and len(objectives) == 1:
        chosen = objectives[0]
    if chosen is not None:
        magnification = _float_or_none(chosen.get("NominalMagnification"))
    return mpp, magnification


def _compression_name(page: Any) -> str:
    names = {1: "none", 5: "lzw", 7: "jpeg", 8: "deflate", 32946: "deflate",
             33003: "jpeg2000 (Aperio YCbCr)", 33005: "jpeg2000 (Aperio RGB)",
             34712: "jpeg2000", 50000: "zstd", 50001: "webp", 50002: "jpegxl", 32773: "packbits"}
    code = int(page.compression)
    if code in names:
        return names[code]
    try:
        return str(page.compression.name).lower()
    except AttributeError:
        return str(code)
