"""HER2 scores from pixel-class maps and cell classes.

Two aggregations, both from counts (never from averaged percentages):

* **guideline** (default): the percentage of analysed tumor pixels (pixel level)
  or tumor cells (cell level) in each class 0, 1+, 2+, 3+, scored with a
  cumulative clinical rule (:data:`her2_qupath.config.GUIDELINES`): 3+ if the
  percentage at 3+ exceeds t3, else 2+ if the percentage at >= 2+ exceeds t2,
  else 1+ if the percentage at >= 1+ exceeds t1, else 0.
* **paper**: the seed paper's Algorithm 1. Each tile's class is the majority
  stain class of its pixel map; the slide score is the highest tile class among
  tiles scored 2+ or 3+, else the majority tile class; WSI% is the percentage
  of analysed pixels at 2+ or 3+.

The tile score ``T = x (+) x_hat1 (+) x_hat2`` (segmentation majority, H&E tumor
call, stain classifier) is kept as data on :class:`TileScore`: a tile whose H&E
partner is called non-tumor does not count; the stain classifier's class is
compared with the segmentation majority and the agreement is reported.

The package: :mod:`.rules` (counts to scores: percentages, the guideline rules,
H-score, expression groups), :mod:`.tiles` (:class:`TileScore`), :mod:`.paper`
(Algorithm 1) and :mod:`.regions` (:class:`RegionScore`, aggregation, evaluability).
"""

from __future__ import annotations

from .paper import PaperScore, algorithm1, paper_slide_score
from .regions import RegionScore, aggregate, combine_regions, evaluability
from .rules import (
    EXPRESSION_GROUP_RULE,
    NOT_EVALUABLE,
    SCORE_NAMES,
    class_percentages,
    expression_group,
    guideline_score,
    h_score,
    majority_class,
    score_name,
)
from .tiles import TileScore, score_class_map

__all__ = [
    "SCORE_NAMES",
    "NOT_EVALUABLE",
    "evaluability",
    "expression_group",
    "EXPRESSION_GROUP_RULE",
    "TileScore",
    "RegionScore",
    "score_class_map",
    "guideline_score",
    "h_score",
    "class_percentages",
    "majority_class",
    "paper_slide_score",
    "algorithm1",
    "PaperScore",
    "aggregate",
    "combine_regions",
    "score_name",
]
