"""The seed paper's Algorithm 1: the slide score from the tiles' majority classes, and WSI%."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from ..errors import UserInputError
from .rules import _counts4, _percent_positive, majority_class
from .tiles import TileScore

__all__ = ["PaperScore", "algorithm1", "paper_slide_score"]


class PaperScore(NamedTuple):
    """Algorithm 1's outputs: ``WSI_score`` (0..3) and ``WSI%``."""

    score: int
    percent_positive: float


def algorithm1(tile_classes: Sequence[int] | np.ndarray) -> int | None:
    """Algorithm 1 on a histogram of tile classes (tiles at 0, 1+, 2+, 3+).

    The highest class among tiles scored 2+ or 3+, else the majority tile
    class (ties to the higher); None without tiles.
    """
    hist = _counts4(tile_classes, "tile class histogram")
    if hist[3] > 0:
        return 3
    if hist[2] > 0:
        return 2
    return majority_class(hist)


def paper_slide_score(tile_scores: Iterable[TileScore]) -> PaperScore:
    """The seed paper's Algorithm 1 over tiles: ``(WSI_score, WSI%)``.

    Only tiles that count toward the score are used (tissue present, H&E
    partner not called non-tumor). ``WSI_score`` is the highest tile class among
    tiles scored 2+ or 3+, else the majority tile class; ``WSI%`` is
    ``100 * (2+ and 3+ pixels) / analysed pixels`` over those tiles. Without
    any such tile the result is ``(0, 0.0)`` (``aggregate(...).n_tiles`` and
    ``algorithm1`` tell an empty slide apart).
    """
    hist = np.zeros(4, dtype=np.int64)
    px = np.zeros(4, dtype=np.int64)
    for t in tile_scores:
        if not isinstance(t, TileScore):
            raise UserInputError(
                f"expected TileScore objects, got {type(t).__name__}",
                hint="score tiles with score_class_map first",
            )
        tc = t.tile_class
        if t.counts_toward_score and tc is not None:
            hist[tc] += 1
            px += t.her2_pixel_counts
    score = algorithm1(hist)
    return PaperScore(0 if score is None else score, _percent_positive(px))
