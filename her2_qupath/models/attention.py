"""Where the tumor classifier looks, and what it says over the slide.

* Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in
  Transformers", ACL 2020): per layer the attention matrices are averaged over
  heads, the residual connection is added (``0.5 A + 0.5 I``), rows are
  renormalised, and the layers are multiplied; the class token's row gives the
  share of each image patch in the prediction.
* Probability heatmaps: one value per tile of the slide grid (NaN where no tile
  was scored), drawn with a colormap over a thumbnail, as in the paper's figures.
* Per-tile measurements (``Tumor probability``, ``Attention max``) ready to be
  written as QuPath detection measurements.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._types import ProgressCallback
from ..errors import ModelError, UserInputError
from ..render import add_colour_bar, add_scale_bar, save_png
from ..tiling import read_tile
from .infer import batched, configure_threads, prefetch, to_input
from .io import LoadedModel

__all__ = [
    "attention_rollout",
    "upsample_map",
    "probability_heatmap",
    "attention_heatmap",
    "heatmap_overlay",
    "write_heatmap_png",
    "tile_measurements",
    "SlideHeatmaps",
    "slide_heatmaps",
    "heatmap_images",
]

log = logging.getLogger(__name__)


def _rollout(attentions: Sequence[Any]) -> Any:
    import torch

    n, _, t, _ = attentions[0].shape
    eye = torch.eye(t, dtype=torch.float32).expand(n, t, t)
    joint = eye
    for a in attentions:
        a = a.float().mean(dim=1)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a @ joint
    return joint


def attention_rollout(model: LoadedModel, tiles: Iterable[Any] | np.ndarray, *, batch_size: int = 8,
                      return_probs: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Rollout maps (N x g x g, float32, the patch grid) of a ViT classifier on RGB tiles.

    Each map holds the class token's rolled-out attention to each patch (summing to
    at most 1). With ``return_probs`` the class probabilities (N x K) come too.
    Runs in fp32 with the eager attention implementation (the only one that
    returns attention weights); the model's own setting is restored afterwards.
    """
    import torch

    if model.kind == "segmenter":
        raise ModelError("attention rollout needs a ViT classifier", hint="pass the tumor or stain model")
    configure_threads()
    net = model.network_as(torch.float32)
    cfg = net.config
    grid = int(cfg.image_size) // int(cfg.patch_size)
    previous = getattr(cfg, "_attn_implementation", None) or "sdpa"
    maps: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    items = list(tiles) if isinstance(tiles, np.ndarray) else tiles
    net.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            for x in prefetch(to_input(b, model) for b in batched(items, batch_size)):
                out = net(pixel_values=x, output_attentions=True)
                joint = _rollout(out.attentions)
                cls = joint[:, 0, 1:]
                maps.extend(cls.reshape(-1, grid, grid).numpy())
                probs.extend(torch.softmax(out.logits.float(), -1).numpy())
    finally:
        net.set_attn_implementation(previous)
    m = np.stack(maps).astype(np.float32) if maps else np.zeros((0, grid, grid), np.float32)
    if return_probs:
        p = np.stack(probs).astype(np.float32) if probs else np.zeros((0, model.num_labels), np.float32)
        return p, m
    return m


def upsample_map(values: np.ndarray, shape: tuple[int, int], *, smooth: bool = True) -> np.ndarray:
    """Resize a small 2-D map to ``shape`` (rows, cols): bilinear if ``smooth``, else nearest."""
    from PIL import Image

    img = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(img.resize((shape[1], shape[0]), resample), dtype=np.float32)


def _grid_cells(grid: Any) -> tuple[list[tuple[int, int]], int, int]:
    tiles = getattr(grid, "tiles", grid)
    cells = [(int(t.row), int(t.col)) if not isinstance(t, tuple) else (int(t[0]), int(t[1])) for t in tiles]
    n_rows = getattr(grid, "n_rows", None)
    n_cols = getattr(grid, "n_cols", None)
    if n_rows is None or n_cols is None:
        n_rows = 1 + max((r for r, _ in cells), default=-1)
        n_cols = 1 + max((c for _, c in cells), default=-1)
    return cells, int(n_rows), int(n_cols)


def probability_heatmap(tile_probs: Sequence[float] | np.ndarray, grid: Any) -> np.ndarray:
    """Per-tile values placed on the slide grid: an (n_rows, n_cols) float32 array, NaN where no tile.

    ``tile_probs`` has one value per tile of ``grid`` (a ``TileGrid``, a list of tiles with
    ``row``/``col``, or of ``(row, col)`` pairs), e.g. ``classify_tiles(...)[:, k]``.
    """
    values = np.asarray(tile_probs, dtype=np.float32)
    if values.ndim != 1:
        raise UserInputError(f"need one value per tile, got shape {values.shape}",
                             hint="pass one column of the probabilities, e.g. probs[:, tumor_index]")
    cells, n_rows, n_cols = _grid_cells(grid)
    if len(cells) != len(values):
        raise UserInputError(f"{len(values)} values for {len(cells)} tiles", hint="one value per tile")
    heat = np.full((n_rows, n_cols), np.nan, dtype=np.float32)
    for (r, c), v in zip(cells, values):
        heat[r, c] = v
    return heat


def attention_heatmap(maps: np.ndarray, grid: Any, *, cell_px: int = 16) -> np.ndarray:
    """Rollout maps of the tiles assembled over the slide grid, ``cell_px`` pixels per tile.

    Each tile's map is scaled to [0, 1] by its maximum (where the model looks
    within the tile); cells without a tile are NaN.
    """
    cells, n_rows, n_cols = _grid_cells(grid)
    if len(cells) != len(maps):
        raise UserInputError(f"{len(maps)} maps for {len(cells)} tiles", hint="one map per tile")
    canvas = np.full((n_rows * cell_px, n_cols * cell_px), np.nan, dtype=np.float32)
    for (r, c), m in zip(cells, maps):
        top = float(np.max(m)) if m.size else 0.0
        up = upsample_map(m / top if top > 0 else m, (cell_px, cell_px))
        canvas[r * cell_px:(r + 1) * cell_px, c * cell_px:(c + 1) * cell_px] = up
    return canvas


def heatmap_overlay(heatmap: np.ndarray, thumbnail: np.ndarray | None = None, *,
                    cell_px: float | None = None, alpha: float = 0.5, cmap: str = "inferno",
                    vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """An RGB picture of ``heatmap`` (colormap), blended over ``thumbnail`` when given.

    ``cell_px`` is the size of one heatmap cell in thumbnail pixels (the tile size
    over the thumbnail's downsample); without it the heatmap is stretched to the
    thumbnail. NaN cells show the thumbnail alone.
    """
    import matplotlib

    heat = np.asarray(heatmap, dtype=np.float32)
    if thumbnail is None:
        scale = int(cell_px or max(1, 512 // max(heat.shape)))
        shape = (heat.shape[0] * scale, heat.shape[1] * scale)
        base = np.full(shape + (3,), 255, dtype=np.uint8)
    else:
        base = np.asarray(thumbnail)[..., :3].astype(np.uint8)
        shape = base.shape[:2]
    big = _cells_to_pixels(heat, shape, cell_px if thumbnail is not None else None)
    norm = np.clip((big - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    colours = (matplotlib.colormaps[cmap](np.nan_to_num(norm))[..., :3] * 255).astype(np.float32)
    a = np.where(np.isnan(big), 0.0, alpha if thumbnail is not None else 1.0)[..., None]
    return (base.astype(np.float32) * (1 - a) + colours * a).round().clip(0, 255).astype(np.uint8)


def _cells_to_pixels(heat: np.ndarray, shape: tuple[int, int], cell_px: float | None) -> np.ndarray:
    """Nearest-cell lookup of each pixel; pixels beyond the grid are NaN."""
    n_rows, n_cols = heat.shape
    if cell_px is None:
        ri = (np.arange(shape[0]) * n_rows // max(1, shape[0])).astype(int)
        ci = (np.arange(shape[1]) * n_cols // max(1, shape[1])).astype(int)
    else:
        ri = np.floor(np.arange(shape[0]) / cell_px).astype(int)
        ci = np.floor(np.arange(shape[1]) / cell_px).astype(int)
    big = heat[np.minimum(ri, n_rows - 1)[:, None], np.minimum(ci, n_cols - 1)[None, :]]
    outside = (ri >= n_rows)[:, None] | (ci >= n_cols)[None, :]
    return np.where(outside, np.nan, big).astype(np.float32)


def write_heatmap_png(path: str | os.PathLike[str], heatmap: np.ndarray,
                      thumbnail: np.ndarray | None = None, **overlay: Any) -> Path:
    """Write :func:`heatmap_overlay` as a PNG (atomically)."""
    save_png(path, heatmap_overlay(heatmap, thumbnail, **overlay))
    return Path(path)


def tile_measurements(model: LoadedModel, probs: np.ndarray,
                      attention: np.ndarray | None = None) -> list[dict[str, float]]:
    """QuPath measurements per tile: ``Tumor probability`` (tumor model) or one
    ``<class> probability`` per class (stain model), and ``Attention max``
    (the largest rolled-out attention share of any patch) when ``attention`` is given.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != model.num_labels:
        raise UserInputError(f"probabilities of shape {probs.shape} do not fit {model.num_labels} classes",
                             hint="pass the output of classify_tiles for this model")
    rows: list[dict[str, float]] = []
    pos = model.spec.positive_index
    for i, p in enumerate(probs):
        row: dict[str, float] = {}
        if model.kind == "tumor" and pos is not None:
            row["Tumor probability"] = float(p[pos])
        else:
            for name, v in zip(model.labels, p):
                row[f"{name} probability"] = float(v)
        if attention is not None:
            row["Attention max"] = float(np.max(attention[i]))
        rows.append(row)
    return rows


@dataclass
class SlideHeatmaps:
    """Heatmaps of a classifier over a slide's tile grid."""

    probs: np.ndarray  # N x K class probabilities, in grid order
    attention: np.ndarray  # N x g x g rollout maps
    heatmap: np.ndarray  # n_rows x n_cols probability of the chosen class, NaN where no tile
    measurements: list[dict[str, float]]  # per tile, for QuPath detections
    paths: dict[str, Path] = field(default_factory=dict)


def slide_heatmaps(model: LoadedModel, slide: Any, grid: Any, out_dir: str | os.PathLike[str] | None = None,
                   *, column: int | None = None, thumbnail_max: int = 2048, batch_size: int = 8,
                   cmap: str = "inferno", alpha: float = 0.5,
                   progress: ProgressCallback | None = None) -> SlideHeatmaps:
    """Classify every tile of ``grid`` with attention rollout; write PNG overlays to ``out_dir``.

    ``column``: the class whose probability is mapped (default: the tumor class).
    Writes ``probability_heatmap.png`` (one colour per tile) and
    ``attention_heatmap.png`` (each tile's rollout map, scaled to its maximum) over
    a thumbnail of the slide (longest side ``thumbnail_max``).
    """
    if column is None:
        column = model.tumor_index
    tiles = list(grid)

    def reader() -> Iterable[np.ndarray]:
        for k, t in enumerate(tiles):
            yield read_tile(slide, t)
            if progress is not None:
                progress(k + 1, len(tiles))

    probs, maps = attention_rollout(model, reader(), batch_size=batch_size, return_probs=True)
    heat = probability_heatmap(probs[:, column], tiles if not hasattr(grid, "n_rows") else grid)
    result = SlideHeatmaps(probs, maps, heat, tile_measurements(model, probs, maps))
    if out_dir is None:
        return result
    out = Path(out_dir)
    for name, rgb in heatmap_images(result, slide, grid, thumbnail_max=thumbnail_max,
                                    alpha=alpha, cmap=cmap).items():
        path = out / f"{name}_heatmap.png"
        save_png(path, rgb)
        result.paths[name] = path
    return result


def heatmap_images(heatmaps: SlideHeatmaps, slide: Any, grid: Any, *, thumbnail_max: int = 2048,
                   alpha: float = 0.5, cmap: str = "inferno",
                   label: str = "Tumour probability") -> dict[str, np.ndarray]:
    """The probability and attention heatmaps over a thumbnail of the slide, each with a
    title, a colour bar and a scale bar (when the slide's pixel size is known)."""
    thumb = np.asarray(slide.thumbnail(max_size=thumbnail_max))
    downsample = slide.dimensions[0] / thumb.shape[1]
    cell = float(grid.level0_stride) / downsample  # one grid cell in thumbnail pixels
    canvas_cell = max(4, int(round(cell)))
    canvas = attention_heatmap(heatmaps.attention, grid, cell_px=canvas_cell)
    mpp = getattr(slide, "mpp_or_none", None)
    um_per_px = float(mpp) * downsample if mpp else None
    pictures = {
        "probability": (heatmap_overlay(heatmaps.heatmap, thumb, cell_px=cell, alpha=alpha, cmap=cmap),
                        f"{label} per tile"),
        "attention": (heatmap_overlay(canvas, thumb, cell_px=cell / canvas_cell, alpha=alpha, cmap=cmap),
                      "Attention (rollout, scaled to each tile's maximum)"),
    }
    return {name: add_colour_bar(add_scale_bar(rgb, um_per_px), title, cmap=cmap)
            for name, (rgb, title) in pictures.items()}
