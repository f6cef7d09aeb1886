"""Why a slide could not be read: damaged data, a missing decoder, or no memory left.

tifffile, imagecodecs and Pillow raise many exception types for a damaged
file; the tuples below name the ones meant, so that everything else (a
``KeyboardInterrupt``, a bug) passes through untouched. Two failures look
like damage but are not, and get their own message:

* a missing or unsupported decoder — tifffile raises ``ValueError``
  ("... requires the 'imagecodecs' package", "... is not a known
  COMPRESSION", "... not supported"), imagecodecs a ``DelayedImportError``
  (an ``ImportError``), Pillow an ``OSError`` ("decoder ... not available"):
  :func:`codec_failure` turns it into a
  :class:`~her2_qupath.errors.SlideFormatError` that says so;
* ``MemoryError``: :func:`out_of_memory` keeps it a ``MemoryError``, with the
  file and what was being read named.
"""

from __future__ import annotations

import struct
import zlib

from ..errors import SlideFormatError

__all__ = [
    "DECODE_ERRORS",
    "IMAGE_ERRORS",
    "TIFF_ERRORS",
    "codec_failure",
    "out_of_memory",
]

#: What a tile or associated-image decoder raises for bad data (imagecodecs' errors are
#: ``RuntimeError``; a missing codec is a ``ValueError`` from tifffile or an ``ImportError``).
DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, RuntimeError, TypeError, IndexError, KeyError, ImportError, EOFError,
    OverflowError, struct.error, zlib.error,
)

#: What tifffile raises while parsing a damaged TIFF structure (``TiffFileError`` is a
#: ``ValueError``; reading past a cut-off end is an ``OSError`` or ``struct.error``).
TIFF_ERRORS: tuple[type[Exception], ...] = (
    ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError, OSError,
    EOFError, OverflowError, ZeroDivisionError, struct.error,
)

#: What Pillow raises for a damaged PNG or JPEG (``UnidentifiedImageError`` is an ``OSError``;
#: a broken PNG chunk is a ``SyntaxError``).
IMAGE_ERRORS: tuple[type[Exception], ...] = (
    OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError, RuntimeError,
    struct.error, zlib.error,
)

_UNSUPPORTED = ("requires the 'imagecodecs' package", "is not a known COMPRESSION",
                "not supported", "not implemented")


def _is_codec_failure(err: BaseException) -> bool:
    if isinstance(err, (ImportError, NotImplementedError)):
        return True
    text = str(err)
    if isinstance(err, OSError):  # Pillow: "decoder jpeg2k not available"
        return "decoder" in text and "not available" in text
    if isinstance(err, (ValueError, KeyError)):
        return any(s in text for s in _UNSUPPORTED)
    return False


def codec_failure(err: BaseException, what: str) -> SlideFormatError | None:
    """The error for ``err`` when no installed decoder reads ``what``'s encoding, else None."""
    if not _is_codec_failure(err):
        return None
    return SlideFormatError(
        f"cannot decode {what}: no installed decoder reads its encoding ({err})",
        hint="install the image codecs (pip install imagecodecs) or convert the slide to a "
             "JPEG-compressed pyramidal TIFF (e.g. vips tiffsave --tile --pyramid "
             "--compression jpeg); the file itself is not known to be damaged")


def out_of_memory(what: str) -> MemoryError:
    """A ``MemoryError`` naming what was being read (raise it ``from`` the original)."""
    return MemoryError(
        f"out of memory while {what}: close other programs, use fewer worker processes or a "
        "smaller SlideConfig.tile_cache_mb; the file itself is not known to be damaged")
