"""Writing slide files: synthetic test slides, demo slides and exports.

:func:`write_slide` writes an RGB array as an Aperio-style SVS, an OME-TIFF
with a SubIFD pyramid, a generic pyramidal TIFF (reduced-resolution pages with
resolution tags), a plain single-level TIFF, or a PNG/JPEG. Files are written
under a temporary name and renamed into place, so a reader never sees half a
file. Pyramid levels are made by 2× area averaging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

import numpy as np

from .errors import UserInputError

__all__ = ["write_slide", "pyramid", "SlideKind"]

log = logging.getLogger(__name__)

SlideKind = Literal["svs", "ome", "pyramidal", "plain", "png", "jpeg"]
_COMPRESSIONS = {"jpeg": "jpeg", "zlib": "zlib", "deflate": "zlib", None: None, "none": None}
_JPEG_QUALITY = 90


def pyramid(rgb: np.ndarray, levels: int | None = None, *, min_size: int = 1024) -> list[np.ndarray]:
    """``rgb`` and its 2×-reduced copies: ``levels`` of them, or halving until < ``min_size`` px."""
    import cv2

    out = [rgb]
    while True:
        if levels is not None and len(out) >= levels:
            break
        h, w = out[-1].shape[:2]
        if levels is None and max(w, h) < min_size:
            break
        if min(w, h) < 2:
            break
        out.append(cv2.resize(out[-1], (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA))
    return out


def _check_rgb(rgb: Any) -> np.ndarray:
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise UserInputError(
            f"write_slide needs an (h, w, 3) uint8 RGB array, got {a.dtype} {a.shape}",
            hint="convert with numpy: arr.astype(np.uint8)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise UserInputError("write_slide got an empty image")
    return np.ascontiguousarray(a)


@contextlib.contextmanager
def _atomic_path(path: Path):  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _ome_xml(width: int, height: int, samples: int, mpp: float | None,
             magnification: float | None, name: str) -> str:
    phys = "" if mpp is None else (
        # the unit defaults to µm; TIFF strings must be ASCII, so it is not spelled out
        f' PhysicalSizeX="{mpp!r}" PhysicalSizeY="{mpp!r}"')
    instrument = objective = ""
    if magnification is not None:
        instrument = ('<Instrument ID="Instrument:0"><Objective ID="Objective:0" '
                      f'NominalMagnification="{float(magnification)!r}"/></Instrument>')
        objective = '<ObjectiveSettings ID="Objective:0"/>'
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.openmicroscopy.org/Schemas/OME/2016-06 '
        'http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd">'
        f'{instrument}<Image ID="Image:0" Name={quoteattr(name)}>{objective}'
        f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="{width}" '
        f'SizeY="{height}" SizeC="{samples}" SizeZ="1" SizeT="1"{phys} Interleaved="true">'
        f'<Channel ID="Channel:0:0" SamplesPerPixel="{samples}"/>'
        '<TiffData IFD="0" PlaneCount="1"/></Pixels></Image></OME>'
    )


def write_slide(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    mpp: float | None = None,
    kind: SlideKind = "svs",
    tile: int = 256,
    compression: str | None = "jpeg",
    levels: int | None = None,
    magnification: float | None = None,
    thumbnail: bool = True,
    associated: Mapping[str, np.ndarray] | None = None,
    quality: int = _JPEG_QUALITY,
) -> Path:
    """Write ``rgb`` ((h, w, 3) uint8, or RGBA for ``plain``/``png``) as a slide file.

    ``levels``: number of pyramid levels (None: halve until the longest side
    is below 1024 px; ``plain``/``png``/``jpeg`` are always one level).
    ``compression``: ``"jpeg"`` (quality ``quality``), ``"zlib"`` or None.
    ``thumbnail`` and ``associated`` (``{"label": rgb, "macro": rgb}``) add
    Aperio associated pages (SVS only). ``mpp`` is stored as the format
    stores it (Aperio ``MPP =``, OME ``PhysicalSizeX/Y``, TIFF resolution tags).
    """
    import tifffile

    path = Path(path)
    a = _check_rgb(rgb)
    if compression not in _COMPRESSIONS:
        raise UserInputError(f"unknown compression {compression!r}", hint="use 'jpeg', 'zlib' or None")
    comp = _COMPRESSIONS[compression]
    if kind not in ("svs", "ome", "pyramidal", "plain", "png", "jpeg"):
        raise UserInputError(f"unknown slide kind {kind!r}",
                             hint="use 'svs', 'ome', 'pyramidal', 'plain', 'png' or 'jpeg'")
    if mpp is not None and not mpp > 0:
        raise UserInputError(f"mpp must be positive, got {mpp}")
    if a.shape[2] == 4 and kind not in ("plain", "png"):
        raise UserInputError(f"RGBA input is only written as 'plain' or 'png', not {kind!r}")
    if tile % 16:
        raise UserInputError(f"tile size must be a multiple of 16, got {tile}")
    if kind in ("png", "jpeg"):  # compression is the format's own
        return _write_pillow(path, a, kind, mpp, quality)
    if comp == "jpeg" and a.shape[2] == 4:
        raise UserInputError("JPEG cannot store an alpha channel", hint="use compression='zlib'")

    comp_args: dict[str, Any] = {}
    if comp == "jpeg":
        comp_args = {"compression": "jpeg", "compressionargs": {"level": int(quality)}}
    elif comp == "zlib":
        comp_args = {"compression": "zlib"}
    tiles = (int(tile), int(tile))
    h, w = a.shape[:2]
    res: dict[str, Any] = {}
    if mpp is not None:
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}

    with _atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=a.nbytes > 2**31) as tw:
        if kind == "plain":
            photometric = "rgb"
            extras = {"extrasamples": ["unassalpha"]} if a.shape[2] == 4 else {}
            tw.write(a, photometric=photometric, metadata=None, rowsperstrip=64,
                     **comp_args, **res, **extras)
            return path

        levels_ = pyramid(a, levels)
        if kind == "svs":
            codec = {"jpeg": f"JPEG/RGB Q={quality}", "zlib": "Deflate/RGB", None: "Raw/RGB"}[comp]
            keys = []
            if magnification is not None:
                keys.append(f"AppMag = {magnification:g}")
            if mpp is not None:
                keys.append(f"MPP = {mpp:g}")
            head = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) {codec}"
            tw.write(levels_[0], tile=tiles, photometric="rgb", metadata=None,
                     description="|".join([head, *keys]), **comp_args, **res)
            if thumbnail:
                th = pyramid(a, None, min_size=768)[-1]
                tw.write(th, photometric="rgb", metadata=None, rowsperstrip=16,
                         description=f"Aperio Image Library v12.0.15 \n{w}x{h} -> "
                                     f"{th.shape[1]}x{th.shape[0]} - |" + "|".join(keys),
                         **comp_args)
            for lv in levels_[1:]:
                tw.write(lv, tile=tiles, photometric="rgb", metadata=None,
                         description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} ({tile}x{tile}) "
                                     f"-> {lv.shape[1]}x{lv.shape[0]} {codec}",
                         **comp_args)
            for name, img in (associated or {}).items():
                img = _check_rgb(img)
                if name not in ("label", "macro"):
                    raise UserInputError(f"unknown associated image {name!r}",
                                         hint="use 'label' or 'macro'")
                tw.write(img, photometric="rgb", metadata=None, rowsperstrip=16,
                         subfiletype=1 if name == "label" else 9,
                         description=f"Aperio Image Library v12.0.15 \n{name} "
                                     f"{img.shape[1]}x{img.shape[0]}",
                         compression="lzw" if name == "label" else comp_args.get("compression"))
        elif kind == "ome":
            xml = _ome_xml(w, h, 3, mpp, magnification, path.stem)
            tw.write(levels_[0], tile=tiles, photometric="rgb", metadata=None,
                     description=xml, subifds=len(levels_) - 1, **comp_args, **res)
            for i, lv in enumerate(levels_[1:], start=1):
                scaled = {} if mpp is None else {
                    "resolution": (1e4 / (mpp * 2**i), 1e4 / (mpp * 2**i)),
                    "resolutionunit": "CENTIMETER"}
                tw.write(lv, tile=tiles, photometric="rgb", metadata=None, subfiletype=1,
                         **comp_args, **scaled)
        else:  # generic pyramidal: reduced-resolution pages after the full one
            for i, lv in enumerate(levels_):
                scaled = {} if mpp is None else {
                    "resolution": (1e4 / (mpp * w / lv.shape[1]), 1e4 / (mpp * h / lv.shape[0])),
                    "resolutionunit": "CENTIMETER"}
                tw.write(lv, tile=tiles, photometric="rgb", metadata=None,
                         subfiletype=0 if i == 0 else 1, **comp_args, **scaled)
    log.debug("wrote %s slide %s (%dx%d)", kind, path, w, h)
    return path


def _write_pillow(path: Path, a: np.ndarray, kind: str, mpp: float | None, quality: int) -> Path:
    import io

    from PIL import Image

    from ._io import atomic_write_bytes

    img = Image.fromarray(a)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if mpp is not None:
        dpi = 25400.0 / mpp
        if kind == "jpeg" and round(dpi) > 65535:
            log.warning("JPEG cannot store %.4g µm/px (density field overflow); not stored", mpp)
        else:
            kwargs["dpi"] = (dpi, dpi)
    if kind == "png":
        img.save(buf, format="PNG", **kwargs)
    else:
        if a.shape[2] == 4:
            raise UserInputError("JPEG cannot store an alpha channel", hint="use kind='png'")
        img.save(buf, format="JPEG", quality=int(quality), **kwargs)
    return atomic_write_bytes(path, buf.getvalue())
