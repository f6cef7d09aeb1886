"""Reading whole-slide images through one interface.

:func:`open_slide` opens Aperio SVS, OME-TIFF, generic pyramidal TIFF (reduced
pages or SubIFDs), plain TIFF (tiled or stripped), other TIFF-based formats
that ``tifffile`` understands (NDPI, SCN, ...), PNG and JPEG, and returns a
:class:`Slide`.

Reading is tile-based: :meth:`Slide.read_region` reads and decodes only the
TIFF tiles (or strips) that intersect the request, keeps recently decoded
tiles in a small LRU cache (:class:`~her2_qupath.config.SlideConfig`), and
never decodes a whole level the request does not need. File access is
serialised by a lock; decoding runs outside it, so one ``Slide`` can be read
from several threads.

Every pixel comes back as RGB ``uint8``:

* RGB(A): alpha is composited on white;
* grayscale 8/16/32-bit and float: replicated to three channels; integers are
  scaled linearly from ``[0, MaxSampleValue]`` (the tag if present, else the
  range of ``BitsPerSample``: 16-bit ``v`` becomes ``round(v * 255 / 65535)``);
  floats are taken as ``[0, 1]`` and clipped; ``MinIsWhite`` is inverted;
* palette images go through their colour map;
* JPEG tiles in YCbCr are converted to RGB by the decoder, Aperio JPEG 2000
  YCbCr tiles (compression 33003) by :func:`ycbcr_to_rgb` (full-range BT.601);
* CMYK, CIE L*a*b* and other photometric interpretations raise
  :class:`~her2_qupath.errors.SlideFormatError`.

Pixel size (MPP, µm/px) comes from, in order: the ``mpp=`` argument (the CLI's
``--mpp``), the Aperio ``ImageDescription`` (``MPP = 0.499``), OME-XML
``PhysicalSizeX/Y`` (with units), TIFF ``XResolution``/``ResolutionUnit`` and
PNG/JPEG density. Resolution tags without a unit or outside a plausible range
(72 dpi is 353 µm/px) are ignored.

The package's modules: :mod:`~her2_qupath.slide.reader` (:class:`Slide`,
:func:`open_slide`), :mod:`~her2_qupath.slide.levels` (levels and the tile
cache), :mod:`~her2_qupath.slide.pixels` (conversion to RGB ``uint8``),
:mod:`~her2_qupath.slide.metadata` (MPP, magnification, compression names),
:mod:`~her2_qupath.slide.structure` (truncation checks) and
:mod:`~her2_qupath.slide.failures` (a damaged file, a missing codec and
running out of memory told apart).
"""

from .pixels import to_rgb8, ycbcr_to_rgb
from .reader import AssociatedImages, Slide, open_slide

__all__ = [
    "Slide",
    "AssociatedImages",
    "open_slide",
    "to_rgb8",
    "ycbcr_to_rgb",
]
