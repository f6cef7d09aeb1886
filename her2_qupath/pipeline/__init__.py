"""One IHC slide (and optionally its H&E partner) in, one scored result out.

The pipeline follows the paper's system and the clinical rules:

1. open the IHC slide (and the H&E slide), detect tissue on thumbnails;
2. build the tile grid ``P_R(S)`` inside tissue and inside the regions of
   interest (ROIs from QuPath annotations; without ROIs all tissue counts);
3. with an H&E slide: register H&E → IHC (or load a transform), build the
   grid on the H&E slide and map each H&E tile to its IHC partner
   (``I(p_ij^HE) = p_ij^IHC``), classify the H&E tiles for tumour with the
   model C when given;
4. per IHC tile: a stain class map (segmenter M when given, else colour
   deconvolution), optionally cells with membrane measurements, the stain
   classifier L when given;
5. aggregate tile → region → slide by counts (guideline rules or the paper's
   Algorithm 1) and build QuPath objects, an overlay and a provenance record.

Tile analysis is a pure function of a tile's pixels (:func:`analyse_tile`),
run over chunks of tiles by any ``concurrent.futures.Executor`` — a local
thread pool by default, a Dask cluster's executor to scale out.

The package, in the order of the data:

* :mod:`.request` -- :class:`ScoreRequest`, :class:`ScoreResult`, :class:`TileParams`,
  :class:`TileAnalysis` (the options are :class:`~her2_qupath.config.ScoreOptions`);
* :mod:`.tiles` -- :func:`analyse_tile` and a worker's chunk of tiles, the slide cache;
* :mod:`.work` -- chunks over an executor, worker processes, the models over the tiles;
* :mod:`.inputs` -- ROIs, white point and tissue, stain vectors, the registration;
* :mod:`.qc` -- the QC warnings and the regions' evaluability;
* :mod:`.run` -- :func:`run_score` and the result's assembly (the QuPath objects come
  from :mod:`her2_qupath.qupath.builder`);
* :mod:`.pictures` -- the overview and the case report's pictures;
* :mod:`.provenance` -- how the result was made;
* :mod:`.result` -- :func:`write_result`.
"""

from __future__ import annotations

from ..config import ScoreOptions
from .request import ScoreRequest, ScoreResult, TileAnalysis, TileParams
from .result import write_result
from .run import run_score
from .tiles import analyse_tile

__all__ = [
    "ScoreOptions",
    "ScoreRequest",
    "ScoreResult",
    "TileAnalysis",
    "TileParams",
    "analyse_tile",
    "run_score",
    "write_result",
]
