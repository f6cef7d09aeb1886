"""Read the header of QuPath's ``data.qpdata`` files without a JVM.

``data/<entryID>/data.qpdata`` is a Java object serialization stream
(magic ``AC ED 00 05``). QuPath writes first a block with the modified-UTF-8
string ``"Data file version N"`` and then, as a serialized ``String``, a JSON
header such as ``{"dataVersion":3,"qupathVersion":"0.4.0","server":{...}}``.
Only that header is decoded here: enough to say which QuPath wrote an entry
and which image server it used. Nothing else in the stream is deserialized.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ProjectError
from .paths import pixel_size_from_metadata, server_builder_uri

__all__ = ["QPDataHeader", "read_qpdata_header", "parse_qpdata_header", "read_server_json"]

log = logging.getLogger(__name__)

_MAGIC = b"\xac\xed\x00\x05"
_TC_BLOCKDATA = 0x77
_TC_BLOCKDATALONG = 0x7A
_TC_STRING = 0x74
_TC_LONGSTRING = 0x7C
#: the header sits in the first few kB; never read more than this
_MAX_HEADER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class QPDataHeader:
    """What the header of one ``data.qpdata`` says."""

    file_version: str | None  # e.g. "Data file version 3"
    data_version: int | None
    qupath_version: str | None
    server: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def image_uri(self) -> str | None:
        """The image URI recorded in the server description (nested builders too)."""
        return server_builder_uri(self.server)

    @property
    def mpp(self) -> float | None:
        """Pixel size in micrometres, if the header's server metadata has one."""
        return pixel_size_from_metadata(self.server.get("metadata") or {})


def _decode_modified_utf8(data: bytes) -> str:
    """Java's modified UTF-8: NUL as ``C0 80``, supplementary characters as surrogate pairs."""
    text = data.replace(b"\xc0\x80", b"\x00").decode("utf-8", errors="surrogatepass")
    return text.encode("utf-16", errors="surrogatepass").decode("utf-16")


def _strings(data: bytes) -> list[str]:
    """The leading block-data UTF string and serialized strings of the stream, in order."""
    if not data.startswith(_MAGIC):
        raise ProjectError(
            "not a QuPath data file (no Java serialization magic AC ED 00 05)",
            hint="point at data/<entryID>/data.qpdata inside a QuPath project",
        )
    out: list[str] = []
    pos = len(_MAGIC)
    while pos < len(data) and len(out) < 4:
        tag = data[pos]
        pos += 1
        if tag in (_TC_BLOCKDATA, _TC_BLOCKDATALONG):
            if tag == _TC_BLOCKDATA:
                (n,) = struct.unpack_from(">B", data, pos)
                pos += 1
            else:
                (n,) = struct.unpack_from(">I", data, pos)
                pos += 4
            block = data[pos : pos + n]
            pos += n
            if len(block) >= 2:  # DataOutput.writeUTF: 2-byte length + bytes
                (m,) = struct.unpack_from(">H", block, 0)
                if m == len(block) - 2:
                    out.append(_decode_modified_utf8(block[2:]))
        elif tag in (_TC_STRING, _TC_LONGSTRING):
            if tag == _TC_STRING:
                (n,) = struct.unpack_from(">H", data, pos)
                pos += 2
            else:
                (n,) = struct.unpack_from(">Q", data, pos)
                pos += 8
            if pos + n > len(data):
                raise ProjectError(
                    "data.qpdata header is truncated", hint="the file may be damaged; QuPath keeps no copy, use a backup"
                )
            out.append(_decode_modified_utf8(data[pos : pos + n]))
            pos += n
        else:
            break  # first object that is not a string: the header is over
    return out


def parse_qpdata_header(data: bytes) -> QPDataHeader:
    """Parse the header from the first bytes of a ``data.qpdata`` stream."""
    try:
        strings = _strings(data)
    except struct.error as err:
        raise ProjectError(
            "data.qpdata header is truncated", hint="the file may be damaged; restore it from a backup"
        ) from err
    file_version = next((s for s in strings if s.startswith("Data file version")), None)
    header: dict[str, Any] = {}
    for s in strings:
        if s.lstrip().startswith("{"):
            try:
                header = json.loads(s)
            except json.JSONDecodeError as err:
                raise ProjectError(
                    f"data.qpdata JSON header is malformed: {err}",
                    hint="the file may be damaged; restore it from a backup",
                ) from err
            break
    dv = header.get("dataVersion")
    if dv is None and file_version:
        tail = file_version.rsplit(" ", 1)[-1]
        dv = int(tail) if tail.isdigit() else None
    return QPDataHeader(
        file_version=file_version,
        data_version=int(dv) if dv is not None else None,
        qupath_version=header.get("qupathVersion"),
        server=header.get("server") or {},
        raw=header,
    )


def read_qpdata_header(path: str | Path) -> QPDataHeader:
    """Read the header of ``path`` (a ``data.qpdata`` file) without loading the rest."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(64 * 1024)
            if head.startswith(_MAGIC):
                try:
                    return parse_qpdata_header(head)
                except ProjectError:
                    if len(head) < 64 * 1024:
                        raise
                    fh.seek(0)
                    head = fh.read(_MAX_HEADER_BYTES)
            return parse_qpdata_header(head)
    except OSError as err:
        raise ProjectError(f"cannot read {path}: {err}", hint="check the project folder and its permissions") from err


def read_server_json(path: str | Path) -> dict[str, Any]:
    """Read ``data/<entryID>/server.json`` (QuPath's image server description)."""
    path = Path(path)
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as err:
        raise ProjectError(f"cannot read {path}: {err}", hint="the entry's data folder may be damaged") from err
