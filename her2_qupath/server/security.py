"""What the server lets in: image paths below the configured roots, tokens, limits.

Image paths arrive as plain paths or as the ``file:`` URIs QuPath stores in
its projects (``file:/home/me/My%20Slides/caf%C3%A9.svs``). They are decoded,
resolved with every symbolic link and ``..`` followed, and accepted only when
the real path lies below one of the ``--image-root`` directories. Anything
else is refused before the file system is asked whether it exists, so the
server never reveals what lies outside its roots.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .._io import atomic_write_bytes
from ..errors import AccessDenied, SlideNotFound, UserInputError

__all__ = [
    "path_from_reference",
    "resolve_image",
    "is_loopback",
    "token_required",
    "load_or_create_token",
    "token_matches",
    "count_vertices",
]

log = logging.getLogger(__name__)

_WINDOWS_DRIVE = re.compile(r"^/?[A-Za-z]:[/\\]|^[A-Za-z]:$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
TOKEN_FILE = "token"


def path_from_reference(reference: str) -> str:
    """Turn a plain path or a ``file:`` URI into a path string (not yet checked).

    ``file:/a%20b``, ``file:///a%20b`` and ``file://localhost/a%20b`` all give
    ``/a b``; percent-escapes decode as UTF-8; ``+`` stays a plus sign.
    Windows paths (``C:\\...``, ``file:/C:/...``) and remote hosts are refused
    with a message, since this server reads its own file system only.
    """
    if "\x00" in reference:
        raise UserInputError(
            "image path contains a NUL character", hint="send the path as QuPath shows it"
        )
    if reference.lower().startswith("file:"):
        parts = urlsplit(reference)
        if parts.netloc not in ("", "localhost"):
            raise UserInputError(
                f"file URI {reference!r} names the host {parts.netloc!r}",
                hint="the server reads only its own disks: mount the share and send a local path",
            )
        try:
            path = unquote(parts.path, encoding="utf-8", errors="strict")
        except UnicodeDecodeError as err:
            raise UserInputError(
                f"file URI {reference!r} has percent-escapes that are not UTF-8",
                hint="send the URI exactly as QuPath stores it",
            ) from err
        if "\x00" in path:
            raise UserInputError(
                "image path contains a NUL character", hint="send the path as QuPath shows it"
            )
    else:
        scheme = _SCHEME.match(reference)
        if scheme and not _WINDOWS_DRIVE.match(reference):
            raise UserInputError(
                f"image reference {reference!r} uses the unsupported scheme {scheme.group(1)!r}",
                hint="send a file path or a file: URI of a slide below an --image-root",
            )
        path = reference
    if _WINDOWS_DRIVE.match(path) or path.startswith("\\\\"):
        raise UserInputError(
            f"{reference!r} is a Windows path, and this server runs on {os.name!r} paths",
            hint="run the server on the machine that holds the slides, or mount them and send that path",
        )
    if not path:
        raise UserInputError("image path is empty", hint="send the slide's path or file: URI")
    _check_path_text(path, reference)
    return path


#: longest file name and path the server accepts (bytes of UTF-8), as common file systems allow
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


def _check_path_text(path: str, reference: str) -> None:
    """Refuse paths the file system cannot even look up: not UTF-8, names or paths too long."""
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UserInputError(
            f"image path {reference!r} is not valid Unicode (a lone surrogate at position {err.start})",
            hint="send the path as UTF-8 text, as QuPath shows it",
        ) from None
    if len(encoded) > MAX_PATH_BYTES:
        raise UserInputError(
            f"image path is {len(encoded)} bytes long, more than {MAX_PATH_BYTES}",
            hint="send the slide's real path",
        )
    for part in path.replace("\\", "/").split("/"):
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UserInputError(
                f"a file or folder name in the image path is {len(part.encode('utf-8'))} bytes long, "
                f"more than file systems allow ({MAX_NAME_BYTES}): {part[:40]!r}...",
                hint="send the slide's real path",
            )


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_image(
    reference: str, roots: Sequence[str | os.PathLike[str]], *, what: str = "image"
) -> Path:
    """The real path of ``reference`` if it lies below one of ``roots``.

    Relative paths are taken relative to each root in turn. Raises
    :class:`AccessDenied` (HTTP 403) when the real path (symlinks and ``..``
    followed) is outside every root or no root is configured,
    :class:`SlideNotFound` (404) when it is inside but missing, and
    :class:`UserInputError` (400) for malformed references.
    """
    raw = path_from_reference(reference)
    if not roots:
        raise AccessDenied(
            f"the server may read no {what}s: no image root is configured",
            hint="start it with --image-root DIR (repeatable) for the folders that hold your slides",
        )
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    given = Path(raw)
    candidates = [given] if given.is_absolute() else [root / given for root in real_roots]
    missing_inside = False
    for candidate in candidates:
        try:
            real = Path(os.path.realpath(candidate))
            if not any(_inside(real, root) for root in real_roots):
                continue
            if real.is_file():
                return real
        except (OSError, ValueError) as err:
            raise UserInputError(
                f"{what} {reference!r} cannot be looked up: "
                f"{getattr(err, 'strerror', None) or err}",
                hint="check the path (QuPath: Image > Image properties > URI)",
            ) from None
        missing_inside = True
    if missing_inside:
        raise SlideNotFound(
            f"{what} {reference!r} does not exist below the image roots or is not a file",
            hint="check the path (QuPath: Image > Image properties > URI)",
        )
    raise AccessDenied(
        f"{what} {reference!r} lies outside the server's image roots",
        hint="add its folder with --image-root when starting the server",
    )


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_required(host: str, always: bool) -> bool:
    """A token guards every route but health when binding beyond loopback (or always if asked)."""
    return always or not is_loopback(host)


def load_or_create_token(data_dir: str | os.PathLike[str]) -> str:
    """The token kept in ``data_dir/token`` (mode 0600), created on first use.

    Kept across restarts so that QuPath scripts configured once keep working.
    A token file readable by others is tightened to 0600 with a warning.
    """
    path = Path(data_dir) / TOKEN_FILE
    if path.is_file():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("token file %s was readable by others (mode %o); set to 0600", path, mode)
            os.chmod(path, 0o600)
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    atomic_write_bytes(path, (token + "\n").encode("utf-8"), private=True)
    return token


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def count_vertices(geometries: Iterable[Any]) -> int:
    """Number of coordinate pairs in GeoJSON geometries (iterative: no recursion limit)."""
    total = 0
    stack: list[Any] = []
    for geom in geometries:
        if isinstance(geom, dict):
            if geom.get("type") == "GeometryCollection":
                stack.extend(
                    g.get("coordinates", [])
                    for g in geom.get("geometries", [])
                    if isinstance(g, dict)
                )
            else:
                stack.append(geom.get("coordinates", []))
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if item and all(isinstance(v, (int, float)) for v in item):
                total += 1
            else:
                stack.extend(item)
    return total
