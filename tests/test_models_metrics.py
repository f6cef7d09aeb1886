"""Evaluation metrics, decision curves, heatmaps and rollout against hand-computed truths."""

from __future__ import annotations

import numpy as np
import pytest

from her2_qupath.models.attention import heatmap_overlay, probability_heatmap
from her2_qupath.models.evaluation import (
    DCA_THRESHOLDS,
    auc,
    classification_report,
    confusion_matrix,
    decision_curve,
    iou_per_class,
    per_class_metrics,
    roc_curve,
)


def test_confusion_and_per_class_metrics_match_hand_computation() -> None:
    # true:  0 0 0 0 1 1 1 2 2 2
    # pred:  0 0 1 2 1 1 0 2 2 1
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    m = per_class_metrics(cm, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(6 / 10)
    a = m["per_class"]["a"]  # tp 2, fp 1, fn 2, tn 5
    assert a["precision"] == pytest.approx(2 / 3)
    assert a["recall"] == pytest.approx(2 / 4) == a["sensitivity"]
    assert a["specificity"] == pytest.approx(5 / 6)
    assert a["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    b = m["per_class"]["b"]  # tp 2, fp 2, fn 1, tn 5
    assert (b["precision"], b["recall"], b["specificity"]) == pytest.approx((0.5, 2 / 3, 5 / 7))
    c = m["per_class"]["c"]  # tp 2, fp 1, fn 1, tn 6
    assert (c["precision"], c["recall"], c["specificity"]) == pytest.approx((2 / 3, 2 / 3, 6 / 7))
    assert m["macro_precision"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3)
    assert m["macro_f1"] == pytest.approx(np.mean([4 / 7, 4 / 7, 4 / 6]))


def _auc_mann_whitney(y: np.ndarray, s: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie), by counting all pairs."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_mann_whitney_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding makes many ties
    fpr, tpr, thr = roc_curve(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert auc(fpr, tpr) == pytest.approx(_auc_mann_whitney(y, s), abs=1e-12)


def test_roc_perfect_and_inverted() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(*roc_curve(y, [0.1, 0.2, 0.8, 0.9])[:2]) == 1.0
    assert auc(*roc_curve(y, [0.9, 0.8, 0.2, 0.1])[:2]) == 0.0
    assert np.isnan(auc(*roc_curve([1, 1], [0.3, 0.4])[:2]))  # no negatives


def test_decision_curve_by_hand() -> None:
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.25, 0.15, 0.05, 0.4, 0.02, 0.1, 0.0, 0.3, 0.2])
    dca = decision_curve(y, p, [0.0, 0.1, 0.2])
    # pt = 0.1: act where p >= 0.1 -> {0.9 T, 0.25 T, 0.15 F, 0.4 F, 0.1 F, 0.3 F, 0.2 F}: TP 2, FP 5
    assert dca["model"][1] == pytest.approx(2 / 10 - 5 / 10 * (0.1 / 0.9))
    # pt = 0.2: {0.9 T, 0.25 T, 0.4 F, 0.3 F, 0.2 F}: TP 2, FP 3
    assert dca["model"][2] == pytest.approx(2 / 10 - 3 / 10 * 0.25)
    assert dca["model"][0] == pytest.approx(3 / 10 - 7 / 10 * 0.0)  # everyone treated: prevalence
    assert dca["treat_all"] == pytest.approx([0.3, 0.3 - 0.7 / 9, 0.3 - 0.7 * 0.25])
    assert dca["treat_none"] == [0.0, 0.0, 0.0]
    assert DCA_THRESHOLDS[0] == 0 and DCA_THRESHOLDS[-1] == pytest.approx(0.30) and len(DCA_THRESHOLDS) == 31


def test_iou_per_class() -> None:
    truth = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 2, 2])
    ious = iou_per_class(confusion_matrix(truth, pred, 4))
    assert ious[:3] == pytest.approx([1 / 2, 2 / 4, 1 / 2])
    assert np.isnan(ious[3])  # absent in both


def test_classification_report_perfect_probs() -> None:
    y = np.array([0, 1, 2, 1, 0])
    prob = np.eye(3)[y] * 0.9 + 0.1 / 3
    r = classification_report(y, prob, ["x", "y", "z"], positive=1)
    assert r["accuracy"] == 1.0 and r["macro_auc"] == 1.0
    assert r["decision_curve"]["positive"] == "y"
    assert r["decision_curve"]["prevalence"] == pytest.approx(0.4)


def test_probability_heatmap_places_values_by_row_and_col() -> None:
    class T:
        def __init__(self, row: int, col: int) -> None:
            self.row, self.col = row, col

    class G:
        tiles = [T(0, 0), T(1, 2), T(0, 1)]
        n_rows, n_cols = 2, 3

    heat = probability_heatmap([0.1, 0.9, 0.5], G())
    assert heat.shape == (2, 3)
    assert heat[0, 0] == pytest.approx(0.1) and heat[1, 2] == pytest.approx(0.9)
    assert heat[0, 1] == pytest.approx(0.5)
    assert np.isnan(heat[1, 0]) and np.isnan(heat[0, 2])


def test_heatmap_overlay_keeps_thumbnail_where_no_tile() -> None:
    heat = np.array([[1.0, np.nan]], dtype=np.float32)
    thumb = np.full((10, 25, 3), 200, np.uint8)
    rgb = heatmap_overlay(heat, thumb, cell_px=10, alpha=0.5, cmap="gray")
    assert rgb.shape == thumb.shape
    assert (rgb[:, :10] == 228).all()  # 0.5 * 200 + 0.5 * 255, rounded up from 227.5
    assert (rgb[:, 10:] == 200).all()  # NaN cell and beyond the grid: thumbnail only


def test_rollout_of_known_attention() -> None:
    import torch

    from her2_qupath.models.attention import _rollout

    a1 = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])[:, None]  # 1 head
    a2 = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])[:, None]
    eye = np.eye(3)
    r1 = 0.5 * a1[0, 0].numpy() + 0.5 * eye
    r2 = 0.5 * a2[0, 0].numpy() + 0.5 * eye
    expected = r2 @ r1
    got = _rollout([a1, a2])[0].numpy()
    assert got == pytest.approx(expected)
    assert got.sum(-1) == pytest.approx(np.ones(3))


def test_attention_heatmap_and_png(tmp_path) -> None:
    from PIL import Image

    from her2_qupath.models.attention import attention_heatmap, write_heatmap_png

    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, 0] = 0.5  # tile (0, 0) looks at its top-left patch
    maps[1, 3, 3] = 0.2  # tile (1, 1) at its bottom-right patch
    canvas = attention_heatmap(maps, [(0, 0), (1, 1)], cell_px=8)
    assert canvas.shape == (16, 16)
    assert np.isnan(canvas[0, 8]) and np.isnan(canvas[8, 0])  # no tile there
    assert canvas[0, 0] == pytest.approx(1.0, abs=0.3) and canvas[7, 7] < 0.1  # scaled per tile
    assert canvas[15, 15] == pytest.approx(1.0, abs=0.3) and canvas[8, 8] < 0.1
    path = write_heatmap_png(tmp_path / "h.png", probability_heatmap([0.2, 0.9], [(0, 0), (1, 1)]))
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size[0] == im.size[1] > 0


def test_tile_measurements_names() -> None:
    import types

    from her2_qupath.models.attention import tile_measurements

    spec = types.SimpleNamespace(positive_index=1)
    model = types.SimpleNamespace(num_labels=2, kind="tumor", spec=spec, labels=("Other", "Tumor"))
    rows = tile_measurements(model, np.array([[0.3, 0.7]]), np.array([[[0.1, 0.4]]]))
    assert rows == [{"Tumor probability": pytest.approx(0.7), "Attention max": pytest.approx(0.4)}]


def test_slide_heatmaps_over_a_real_tile_grid(tmp_path) -> None:
    import torch
    from PIL import Image

    from her2_qupath.config import TilingConfig
    from her2_qupath.models.attention import slide_heatmaps
    from her2_qupath.models.io import LoadedModel, build_network, make_spec
    from her2_qupath.models.synthetic import stain_tiles
    from her2_qupath.slide import open_slide
    from her2_qupath.slide_writer import write_slide
    from her2_qupath.tiling import tile_grid

    tiles, _ = stain_tiles(6, 256, seed=1)
    rgb = np.full((512, 768, 3), 255, np.uint8)
    for k in range(6):
        r, c = divmod(k, 3)
        rgb[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256] = tiles[k]
    write_slide(tmp_path / "s.svs", rgb, mpp=0.5, compression=None)
    torch.manual_seed(0)
    spec = make_spec("tumor", "tiny", ("Other", "Tumor"), mpp=0.5, tile_size=256, input_size=64)
    model = LoadedModel(spec=spec, network=build_network(spec).eval())
    with open_slide(tmp_path / "s.svs") as slide:
        grid = tile_grid(slide.dimensions, slide.mpp, TilingConfig(tile_size=256, mpp=0.5))
        out = slide_heatmaps(model, slide, grid, tmp_path / "heat", thumbnail_max=384)
    assert grid.n_rows == 2 and grid.n_cols == 3 and len(out.measurements) == 6
    assert out.heatmap.shape == (2, 3) and not np.isnan(out.heatmap).any()
    for t, p in zip(grid, out.probs[:, 1]):
        assert out.heatmap[t.row, t.col] == pytest.approx(p)
        assert out.measurements[list(grid).index(t)]["Tumor probability"] == pytest.approx(p)
    for name in ("probability", "attention"):
        with Image.open(out.paths[name]) as im:
            # the 384 x 256 overlay, a title band above it and a colour bar beside it
            w, h = im.size
            assert w > 384 and h > 256
            pic = np.asarray(im.convert("RGB"))
            top = h - 256
            assert (pic[:top, :384] == 255).mean() > 0.7  # the title band: dark text on white
            import matplotlib

            hi = np.array(matplotlib.colormaps["inferno"](1.0)[:3]) * 255
            assert (np.abs(pic[:, 384:].astype(float) - hi).sum(axis=2) < 12).any()  # the bar
