"""Warm cell-level workers: the fork server loads the compiled cell kernels before it forks.

The cell-level worker processes are forked from a fork server that imports
:data:`.work._WORKER_PRELOAD` once. This module is the last of them: importing it
runs :func:`warm_cell_kernels`, which analyses one small synthetic tile exactly as a
worker analyses a slide tile. Every compiled kernel the tile work calls is then loaded
from numba's on-disk cache (or compiled and cached, on a first run) with the argument
types the slide tiles give it, and the imports the tile work makes lazily are made, so
each worker forked afterwards starts with all of that instead of paying it on its first
tile. The fork server is started early in a run (:func:`.work.prestart_cell_workers`),
so this overlaps the main process's tissue detection.

The main process never imports this module: numba and the kernels stay out of it.
"""

from __future__ import annotations

import logging
import time

from ..config import ScoreOptions
from ..stain import StainVectors
from ..synthetic import synthetic_ihc
from ..tiling import Tile
from .request import TileParams
from .tiles import _cells_to_text, analyse_tile

__all__ = ["WARM_TILE_PX", "warm_cell_kernels"]

log = logging.getLogger(__name__)

#: Side of the synthetic tile's core, in working pixels (a few dozen cells).
WARM_TILE_PX = 128


def warm_cell_kernels() -> float | None:
    """Analyse one synthetic tile at the cell level, its cells turned into GeoJSON text, as
    a worker does (default options, a slide at half the working pixel size so the outlines
    take the whole-number path of slide tiles). The seconds it took; None when it failed
    (logged: the workers then load what they need themselves, as without it)."""
    t0 = time.perf_counter()
    try:
        opts = ScoreOptions()
        margin = round(opts.cells.tile_margin_um / opts.tiling.mpp)
        side = WARM_TILE_PX + 2 * margin
        rgb = synthetic_ihc((side, side), seed=0, layout="packed", tissue_fraction=1.0)[0]
        params = TileParams(opts.stain, opts.cells, "cell", StainVectors.default(opts.stain),
                            (238.0, 233.0, 243.0), opts.tiling.mpp,
                            opts.scoring.min_letter_fraction, margin)
        tile = Tile(0, 0, 0.0, 0.0, 2.0 * WARM_TILE_PX, 2.0 * WARM_TILE_PX, WARM_TILE_PX,
                    opts.tiling.mpp)
        _cells_to_text(analyse_tile(rgb, params), tile, None, "")
    except Exception:  # an optimisation only: never stop the fork server
        log.warning("could not warm the cell kernels in the fork server", exc_info=True)
        return None
    return time.perf_counter() - t0


warm_cell_kernels()
