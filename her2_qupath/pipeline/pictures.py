"""A run's pictures: the overview (overlay.png) and the case report's titled pictures.

The IHC thumbnail with the HER2 class of each membrane block (or DAB pixel), each
tile outlined in its class colour, the scored regions and a scale bar; with an H&E
partner the H&E thumbnail beside it, the tiles drawn where they were analysed and
mapped onto the IHC slide; a legend with the score, the class percentages and the
QC warnings.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..case_report import Picture
from ..config import ScoreOptions, ScoringConfig
from ..qupath.builder import tile_her2_class
from ..registration import map_tile, warp_geometry
from ..render import (
    TileMark,
    add_legend,
    add_scale_bar,
    blend,
    colorize_class_map,
    draw_outlines,
    draw_tiles,
    side_by_side,
)
from ..stain import dab_class_map
from .request import TileAnalysis

__all__ = ["OVERLAY_MAX_SIZE"]


#: Longest side of the overview picture, in pixels.
OVERLAY_MAX_SIZE = 1400


def _rings(geom: Any, scale: float) -> list[tuple[tuple[float, float], ...]]:
    """Exterior rings of a (multi)polygon, scaled to picture pixels."""
    parts = [geom] if geom.geom_type == "Polygon" else [
        g for g in getattr(geom, "geoms", []) if g.geom_type == "Polygon"]
    return [tuple((x * scale, y * scale) for x, y in p.exterior.coords) for p in parts]


def _mark(polygon: Any, score: Any, scale: float, scoring: ScoringConfig) -> Any:
    ring = _rings(polygon if polygon.geom_type == "Polygon" else polygon.envelope, scale)[0]
    return TileMark(ring, tile_her2_class(score, scoring), bool(score.counts_toward_score))


def _um_per_px(slide: Any, scale: float) -> float | None:
    """µm per pixel of a picture of ``slide`` drawn at ``scale`` (None: pixel size unknown)."""
    mpp = getattr(slide, "mpp_or_none", None)
    return float(mpp) / scale if mpp else None


def _overlay(ihc: Any, he: Any, tiles: list[Any], analyses: list[TileAnalysis],
             transform: Any, summary: dict[str, Any], opts: ScoreOptions,
             vectors: Any, background: Any, rois: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """IHC thumbnail with pixel classes, tile scores and ROIs (H&E beside it when given) + legend,
    and the case report's pictures (each titled, with a scale bar)."""
    thumb = ihc.thumbnail(max_size=OVERLAY_MAX_SIZE)
    scale = thumb.shape[1] / ihc.dimensions[0]
    ihc_um = _um_per_px(ihc, scale)
    if opts.stain.intensity == "membrane":
        cmap = _block_canvas(thumb.shape[:2], scale, tiles, analyses, transform)
    else:
        cmap = dab_class_map(thumb, opts.stain, vectors=vectors, background=background)
    pic = blend(thumb, colorize_class_map(cmap), 0.55, mask=cmap > 0)
    polys = [t.polygon for t in tiles]
    if transform is not None:
        polys = [map_tile(transform, t) for t in tiles]
    width = max(1, round(thumb.shape[1] / 500))
    marks = [_mark(p, a.score, scale, opts.scoring) for p, a in zip(polys, analyses)]
    pic = draw_tiles(pic, marks, width=width)
    ihc_rois = rois if transform is None else [warp_geometry(transform, g) for g in rois]
    ihc_rings = [r for g in ihc_rois for r in _rings(g, scale)]
    pic = add_scale_bar(draw_outlines(pic, ihc_rings, width=2 * width), ihc_um)
    what = "membrane blocks" if opts.stain.intensity == "membrane" else "DAB pixels"
    classes = Picture(pic, f"HER2 class of the {what}, tile scores")
    if he is None:
        pictures = [Picture(add_scale_bar(draw_outlines(thumb, ihc_rings, width=2 * width), ihc_um),
                            "IHC slide" + (" and the scored regions" if rois else " (all tissue scored)")),
                    classes]
    else:
        he_thumb = he.thumbnail(max_size=OVERLAY_MAX_SIZE)
        he_scale = he_thumb.shape[1] / he.dimensions[0]
        he_marks = [_mark(t.polygon, a.score, he_scale, opts.scoring) for t, a in zip(tiles, analyses)]
        he_pic = draw_tiles(he_thumb, he_marks, width=width)
        he_pic = draw_outlines(he_pic, [r for g in rois for r in _rings(g, he_scale)], width=2 * width)
        he_pic = add_scale_bar(he_pic, _um_per_px(he, he_scale))
        pictures = [Picture(he_pic, "H&E slide: regions and tiles (mapped to the IHC)"), classes]
        pic = side_by_side(he_pic, pic)
    pct = summary["class_percentages"]
    lines = [f"NOT EVALUABLE: {r}" for r in summary.get("not_evaluable_reasons", [])]
    if summary.get("her2_expression"):
        lines.append(summary["her2_expression"])
    lines += [f"{k}: {pct[k]:.1f} %" for k in ("0", "1+", "2+", "3+")]
    lines += [f"H-score: {summary['h_score']:.0f}", f"WSI% (2+/3+ px): {summary['percent_positive']:.1f}",
              f"tiles: {summary['n_tiles_counted']}/{summary['n_tiles']}"]
    if summary.get("n_cells") is not None:
        lines.append(f"cells: {summary['n_cells']}")
    if not summary["reliable"]:
        lines.append("REGISTRATION UNRELIABLE")
    if any("looks like an H&E" in w or "swapped" in w for w in summary["warnings"]):
        lines.append("CHECK STAINS: see warnings")
    lines += [f"QC: {w}" for w in summary["warnings"] if not w.startswith("not evaluable")]
    title = f"HER2 {summary['her2_score']}  ({summary['guideline']}, {summary['level']})"
    return add_legend(pic, title, lines), pictures


def _block_canvas(shape: tuple[int, int], scale: float, tiles: list[Any],
                  analyses: list[TileAnalysis], transform: Any) -> np.ndarray:
    """The membrane block classes of every tile painted on the overview (0 = nothing, 1..4).

    Without a transform each tile's block grid is resized onto the tile's box; with
    an H&E partner (the block grid lies in the H&E tile's frame) each overview pixel of
    the mapped tile looks its block up through the inverse transform.
    """
    canvas = np.zeros(shape, dtype=np.uint8)
    if transform is not None:
        _paint_mapped_blocks(canvas, scale, tiles, analyses, transform)
        return canvas
    for tile, a in zip(tiles, analyses):
        if a.blocks is None or a.blocks.size == 0:
            continue
        x0, y0 = int(round(tile.x * scale)), int(round(tile.y * scale))
        x1 = int(round((tile.x + tile.width) * scale))
        y1 = int(round((tile.y + tile.height) * scale))
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        grid = (a.blocks.astype(np.int16) + 1).astype(np.uint8)  # -1 background -> 0
        up = cv2.resize(grid, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        canvas[cy0:cy1, cx0:cx1] = np.maximum(canvas[cy0:cy1, cx0:cx1],
                                              up[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0])
    return canvas


def _paint_mapped_blocks(canvas: np.ndarray, scale: float, tiles: list[Any],
                         analyses: list[TileAnalysis], transform: Any) -> None:
    for tile, a in zip(tiles, analyses):
        if a.blocks is None or a.blocks.size == 0:
            continue
        x0, y0, x1, y1 = (np.asarray(map_tile(transform, tile).bounds) * scale).tolist()
        x0, y0 = max(int(x0), 0), max(int(y0), 0)
        x1, y1 = min(int(np.ceil(x1)), canvas.shape[1]), min(int(np.ceil(y1)), canvas.shape[0])
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        pts = np.column_stack([(xs.ravel() + 0.5) / scale, (ys.ravel() + 0.5) / scale])
        he_pts = transform.apply_inverse(pts)
        rows, cols = a.blocks.shape
        u = (he_pts[:, 0] - tile.x) / tile.width * cols
        v = (he_pts[:, 1] - tile.y) / tile.height * rows
        inside = (u >= 0) & (u < cols) & (v >= 0) & (v < rows)
        vals = a.blocks[v[inside].astype(np.intp), u[inside].astype(np.intp)].astype(np.int16) + 1
        yi, xi = ys.ravel()[inside], xs.ravel()[inside]
        canvas[yi, xi] = np.maximum(canvas[yi, xi], vals.astype(np.uint8))
