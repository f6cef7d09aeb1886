"""Cells as columns: the cells of one tile as arrays, not as Python objects.

At the cell level a whole slide holds millions of cells. Handling each one as
an object (a :class:`~her2_qupath.cells.Cell`, two shapely outlines, a
:class:`~her2_qupath.qupath.geojson.QuPathObject`, a feature dict) cost more
than finding the cells. A :class:`CellTable` keeps a tile's cells as arrays —
centroids, classes, the measurement matrix and both outlines as flat vertex
arrays with offsets (shapely's "ragged" layout) — and every step the pipeline
takes on them is one array operation: keeping the cells of the tile proper
(not its margin), moving them to level-0 slide pixels, counting classes inside
a region. Objects are made only as text, by :meth:`CellTable.feature_text`,
at the moment the cells are written (see :mod:`her2_qupath.qupath.stream`).

The text is what :func:`her2_qupath.qupath.geojson.to_feature` writes for
:func:`~her2_qupath.qupath.objects.cell_object` of the same cell, key for key
and number for number, and it is valid by construction: the rare outline that
is not a valid polygon (or any cell this fast path cannot vouch for) goes
through the object path instead.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cells import MEASUREMENTS
from .cells.outlines import Outlines
from .config import HER2_CLASSES
from .qupath.classes import class_color
from .qupath.geojson import to_feature
from .qupath.objects import CELL_NAME, cell_object

__all__ = ["CellTable", "Outlines"]


@dataclass(frozen=True)
class CellTable:
    """The cells of one tile as columns, in detection (label) order.

    Attributes:
        centroids: ``(n, 2)`` nucleus centroids ``(x, y)``.
        classes: ``(n,)`` int8 HER2 class 0..3.
        measurements: ``(n, len(names))`` float64, NaN where a compartment has no pixels.
        names: the measurement names (``cells.MEASUREMENTS``).
        cells, nuclei: the cell and nucleus outlines.
    """

    centroids: np.ndarray
    classes: np.ndarray
    measurements: np.ndarray
    names: tuple[str, ...]
    cells: Outlines
    nuclei: Outlines

    @classmethod
    def from_result(cls, result: Any) -> CellTable:
        """The table of a :class:`~her2_qupath.cells.CellResult` (detected with outlines)."""
        n = len(result.classes)
        table = (np.column_stack([np.asarray(result.measurements[k], dtype=np.float64)
                                  for k in MEASUREMENTS]) if n else np.zeros((0, len(MEASUREMENTS))))
        return cls(np.asarray(result.centroids, dtype=np.float64).reshape(n, 2),
                   np.asarray(result.classes, dtype=np.int8), table, tuple(MEASUREMENTS),
                   Outlines.from_polygons(result.cell_polygons),
                   Outlines.from_polygons(result.nucleus_polygons))

    def __len__(self) -> int:
        return len(self.classes)

    def take(self, idx: np.ndarray) -> CellTable:
        idx = np.asarray(idx, dtype=np.int64)
        return CellTable(self.centroids[idx], self.classes[idx], self.measurements[idx], self.names,
                         self.cells.take(idx), self.nuclei.take(idx))

    def in_core(self, margin: int, shape: tuple[int, int]) -> CellTable:
        """Cells whose centroid lies in the tile proper, moved to its own pixel frame."""
        if margin == 0:
            return self
        x = self.centroids[:, 0] - margin
        y = self.centroids[:, 1] - margin
        keep = np.flatnonzero((x >= 0) & (x < shape[1]) & (y >= 0) & (y < shape[0]))
        t = self.take(keep)
        return CellTable(t.centroids - margin, t.classes, t.measurements, t.names,
                         t.cells.moved(-margin, (1.0, 1.0), (0.0, 0.0)),
                         t.nuclei.moved(-margin, (1.0, 1.0), (0.0, 0.0)))

    def inside(self, mask: np.ndarray) -> np.ndarray:
        """Indices of the cells whose centroid pixel is set in ``mask`` (clamped to it)."""
        rows, cols = mask.shape
        xi = np.clip(self.centroids[:, 0].astype(np.int64), 0, cols - 1)  # int() truncates as this
        yi = np.clip(self.centroids[:, 1].astype(np.int64), 0, rows - 1)
        return np.flatnonzero(mask[yi, xi])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.classes.astype(np.intp), minlength=4)[:4]

    def placed(self, scale: tuple[float, float], offset: tuple[float, float]) -> CellTable:
        """Outlines and centroids moved by ``p * scale + offset`` (tile → level-0 pixels)."""
        s, o = np.asarray(scale), np.asarray(offset)
        return CellTable(self.centroids * s + o, self.classes, self.measurements, self.names,
                         self.cells.moved(0.0, scale, offset), self.nuclei.moved(0.0, scale, offset))

    def feature_text(self, marker: dict[str, str], warp: Any = None) -> str:
        """The cells as QuPath GeoJSON features, comma-separated (no brackets).

        Each feature is ``to_feature(cell_object(cell, nucleus, class, measurements))``
        with the finite measurements. ``warp`` (a function of a shapely geometry)
        maps the outlines when the cells are drawn elsewhere (the H&E → IHC case):
        those cells then take the object path, as do outlines that are not valid
        polygons (which the object path repairs).
        """
        n = len(self)
        if n == 0:
            return ""
        fast = self.cells.simple_ok() & self.nuclei.simple_ok()
        if warp is None and fast.any():
            fast &= self.cells.is_valid() & self.nuclei.is_valid()
        else:
            fast[:] = False
        slow = np.flatnonzero(~fast)
        slow_feats = dict(zip(slow.tolist(), self._object_features(slow, marker, warp)))
        ids = _uuid4_strings(n)
        where = (np.cumsum(fast) - 1).tolist()  # cell i's place among the fast ones
        shown = np.flatnonzero(fast)
        cell_rings, nuc_rings = ((o if shown.size == n else o.take(shown)).coordinates_json()
                                 for o in (self.cells, self.nuclei))
        dumps = functools.partial(json.dumps, allow_nan=False, ensure_ascii=False)
        classes = [dumps({"name": name, "color": color})
                   for name, color in zip(HER2_CLASSES, _class_colors(), strict=True)]
        keys = [dumps(m) + ": " for m in self.names]
        # one feature as json.dumps writes to_feature's dict, keys in its order
        parts = ['{"type": "Feature", "id": "', '", "geometry": {"type": "Polygon", "coordinates": ',
                 '}, "nucleusGeometry": {"type": "Polygon", "coordinates": ',
                 '}, "properties": {"objectType": "cell", "name": ' + dumps(CELL_NAME)
                 + ', "classification": ', ', "measurements": {',
                 '}, "metadata": ' + dumps(dict(marker)) + '}}']
        feats: list[str] = []
        finite = np.isfinite(self.measurements)
        given = finite.any(axis=0)  # measurements no cell has (e.g. of the other intensity mode)
        keys = [key for key, g in zip(keys, given.tolist(), strict=True) if g]
        values = self.measurements[:, given]
        complete = finite[:, given].all(axis=1).tolist()
        for i, (k, row) in enumerate(zip(self.classes.tolist(), values.tolist(), strict=True)):
            if i in slow_feats:
                feats.append(dumps(slow_feats[i]))
                continue
            if complete[i]:  # each value as json.dumps writes a float (its repr)
                meas = ", ".join(map(str.__add__, keys, map(repr, row)))
            else:
                meas = ", ".join([key + repr(v) for key, v in zip(keys, row) if math.isfinite(v)])
            j = where[i]
            feats.append("".join([parts[0], ids[i], parts[1], cell_rings[j], parts[2], nuc_rings[j],
                                  parts[3], classes[k], parts[4], meas, parts[5]]))
        return ", ".join(feats)

    def _object_features(self, idx: np.ndarray, marker: dict[str, str], warp: Any) -> list[Any]:
        """The features of cells ``idx`` built as objects (repairs, warps), as the old path did."""
        if idx.size == 0:
            return []
        cells = self.cells.take(idx).geometries()
        nuclei = self.nuclei.take(idx).geometries()
        out = []
        for j, i in enumerate(idx.tolist()):
            cg, ng = cells[j], nuclei[j]
            if warp is not None:
                cg, ng = warp(cg), warp(ng)
            meas = {m: v for m, v in zip(self.names, self.measurements[i].tolist()) if math.isfinite(v)}
            obj = cell_object(cg, ng, HER2_CLASSES[int(self.classes[i])], meas, name=CELL_NAME,
                              metadata=marker)
            out.append(to_feature(obj))
        return out


def _uuid4_strings(n: int) -> list[str]:
    """``str(uuid.uuid4())`` ``n`` times: random version-4 UUIDs, from one ``os.urandom`` call."""
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.tobytes().hex()
    return [f"{h[k:k + 8]}-{h[k + 8:k + 12]}-{h[k + 12:k + 16]}-{h[k + 16:k + 20]}-{h[k + 20:k + 32]}"
            for k in range(0, 32 * n, 32)]


def _class_colors() -> list[list[int]]:
    return [list(class_color(name)) for name in HER2_CLASSES]
