"""Colour deconvolution, background and stain-vector estimation, DAB pixel classes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from her2_qupath import stain
from her2_qupath.config import StainConfig
from her2_qupath.errors import UserInputError
from her2_qupath.stain import StainVectors, deconvolution
from her2_qupath.synthetic import compose_rgb, synthetic_ihc

QUPATH_LINE = (
    'setColorDeconvolutionStains(\'{"Name" : "H-DAB default", "Stain 1" : "Hematoxylin", '
    '"Values 1" : "0.65111 0.70119 0.29049", "Stain 2" : "DAB", '
    '"Values 2" : "0.26917 0.56824 0.77759", "Background" : " 255 255 255"}\');'
)


# ---------------------------------------------------------------- vectors
def test_vectors_are_normalised_and_residual_is_cross_product() -> None:
    v = StainVectors((2.0, 2.0, 1.0), (0.0, 3.0, 4.0))
    assert np.allclose(np.linalg.norm(v.matrix, axis=1), 1.0)
    assert np.allclose(v.hematoxylin, (2 / 3, 2 / 3, 1 / 3))
    cross = np.cross(v.hematoxylin, v.dab)
    cross /= np.linalg.norm(cross)
    assert np.allclose(np.abs(np.asarray(v.residual) @ cross), 1.0)
    assert np.allclose(v.matrix @ v.inverse, np.eye(3), atol=1e-12)


def test_default_vectors_come_from_config() -> None:
    cfg = StainConfig(hematoxylin=(1.0, 1.0, 0.5), dab=(0.2, 0.5, 1.0))
    v = StainVectors.default(cfg)
    assert np.allclose(v.hematoxylin, np.array([1.0, 1.0, 0.5]) / 1.5)
    assert v.background is None


@pytest.mark.parametrize(
    "bad", [((1, 1, 1), (2, 2, 2)), ((0, 0, 0), (1, 0, 0)), ((1, 2), (1, 0, 0))]
)
def test_bad_vectors_are_refused(bad) -> None:
    with pytest.raises(UserInputError):
        StainVectors(*bad)


def test_from_qupath_script_line() -> None:
    v = StainVectors.from_qupath(QUPATH_LINE)
    assert v.name == "H-DAB default"
    assert np.allclose(
        v.hematoxylin,
        np.array([0.65111, 0.70119, 0.29049]) / np.linalg.norm([0.65111, 0.70119, 0.29049]),
    )
    assert np.allclose(
        v.dab, np.array([0.26917, 0.56824, 0.77759]) / np.linalg.norm([0.26917, 0.56824, 0.77759])
    )
    assert v.background == (255.0, 255.0, 255.0)


def test_from_qupath_dict_swapped_with_third_stain_and_background() -> None:
    v = StainVectors.from_qupath(
        {
            "Name": "custom",
            "Stain 1": "DAB",
            "Values 1": "0.3 0.6 0.74",
            "Stain 2": "Hematoxylin",
            "Values 2": "0.62 0.72 0.3",
            "Stain 3": "Residual",
            "Values 3": "0.6 -0.7 0.3",
            "Background": " 241 236 247",
        }
    )
    assert v.dab[2] > v.dab[0]  # DAB was stain 1 and is recognised by name
    assert v.hematoxylin[0] > v.hematoxylin[2]
    assert np.allclose(v.residual, np.array([0.6, -0.7, 0.3]) / np.linalg.norm([0.6, -0.7, 0.3]))
    assert v.background == (241.0, 236.0, 247.0)


def test_qupath_round_trip() -> None:
    v = StainVectors.from_qupath(QUPATH_LINE)
    w = StainVectors.from_qupath(v.to_qupath())
    assert np.allclose(v.matrix, w.matrix, atol=1e-5)
    assert w.background == (255.0, 255.0, 255.0)


@pytest.mark.parametrize(
    "text",
    [
        "no braces here",
        "{not json}",
        '{"Values 1" : "0.6 0.7 0.3"}',
        '{"Values 1" : "0.6 0.7", "Values 2" : "0.3 0.6 0.7"}',
        '{"Values 1" : "0.6 x 0.3", "Values 2" : "0.3 0.6 0.7"}',
        '{"Values 1" : "0.6 0.7 0.3", "Values 2" : "0.3 0.6 0.7", "Background" : "255 255"}',
    ],
)
def test_from_qupath_rejects_bad_text(text: str) -> None:
    with pytest.raises(UserInputError):
        StainVectors.from_qupath(text)


# ---------------------------------------------------------------- OD
def test_od_lookup_table_values() -> None:
    lut = stain.od_lut((200.0, 220.0, 250.0))
    assert lut.dtype == np.float32 and lut.shape == (256, 3)
    assert abs(lut[200, 0]) < 1e-7 and abs(lut[220, 1]) < 1e-7
    assert np.isclose(lut[0, 2], np.log10(250.0))  # I = 0 clamps to 1
    assert np.isclose(lut[20, 0], -np.log10(20 / 200.0))
    od = stain.rgb_to_od(np.array([[[200, 22, 25]]], dtype=np.uint8), (200.0, 220.0, 250.0))
    assert od.dtype == np.float32
    assert np.allclose(od[0, 0], [0.0, 1.0, 1.0], atol=1e-6)


def test_input_validation() -> None:
    with pytest.raises(UserInputError):
        stain.deconvolve(np.zeros((4, 4), np.uint8), background=255)
    with pytest.raises(UserInputError):
        stain.deconvolve(np.zeros((4, 4, 3), np.float32), background=255)
    with pytest.raises(UserInputError):
        stain.deconvolve(np.zeros((4, 4, 3), np.uint8), background=(0, 255, 255))


def test_matches_skimage_separate_stains_on_same_vectors() -> None:
    from skimage import data
    from skimage.color import separate_stains

    rgb = data.immunohistochemistry()
    v = StainVectors.default()
    ours = stain.deconvolve(rgb, v, 255)
    # skimage: stains = log(I/255) / log(1e-6) @ inv(M), clipped at 0, i.e. OD10 / 6.
    ref = separate_stains(rgb, v.inverse) * 6.0
    ok = (rgb > 0).all(axis=-1)  # skimage maps I = 0 to OD 6, we clamp I to 1
    assert ok.mean() > 0.99
    assert np.abs(np.maximum(ours, 0)[ok] - ref[ok]).max() < 1e-3


def test_strips_do_not_change_the_result(monkeypatch) -> None:
    rgb, *_ = synthetic_ihc((96, 80), seed=3)
    whole = stain.deconvolve(rgb, background=(238, 233, 243))
    monkeypatch.setattr(deconvolution, "_STRIP_PIXELS", 100)
    assert np.allclose(whole, stain.deconvolve(rgb, background=(238, 233, 243)), atol=1e-6, rtol=0)


def test_rgba_input_drops_alpha() -> None:
    rgb, *_ = synthetic_ihc((64, 64), seed=4)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert np.array_equal(
        stain.deconvolve(rgb, background=250), stain.deconvolve(rgba, background=250)
    )


# ---------------------------------------------------------------- Beer-Lambert truth
def test_recovers_known_od_maps_exactly_without_noise() -> None:
    bg = (236.0, 231.0, 244.0)
    rgb, h, d, _ = synthetic_ihc((256, 256), seed=1, noise=0.0, background=bg)
    out = stain.deconvolve(rgb, background=bg)
    assert np.abs(out[..., 0] - h).max() < 0.02
    assert np.abs(out[..., 1] - d).max() < 0.02


def test_recovers_random_od_maps() -> None:
    rng = np.random.default_rng(5)
    h = rng.uniform(0, 0.8, (128, 128)).astype(np.float32)
    d = rng.uniform(0, 0.8, (128, 128)).astype(np.float32)
    cfg = StainConfig()
    bg = (241.0, 238.0, 246.0)
    rgb = compose_rgb([(h, cfg.hematoxylin), (d, cfg.dab)], bg, noise=0.0, rng=rng)
    out = stain.deconvolve(rgb, background=bg)
    err = np.abs(out[..., :2] - np.dstack([h, d]))
    assert np.percentile(err, 99) < 0.02
    assert np.abs(out[..., 2]).max() < 0.03  # nothing in the residual


def test_recovers_od_with_noise_and_estimated_background() -> None:
    bg = (238.0, 233.0, 243.0)
    rgb, h, d, _ = synthetic_ihc((384, 384), seed=2, noise=0.01, background=bg)
    est = stain.estimate_background(rgb)
    assert np.allclose(est, bg, atol=1.5)
    out = stain.deconvolve(rgb, background=est)
    assert np.median(np.abs(out[..., 0] - h)) < 0.02
    assert np.median(np.abs(out[..., 1] - d)) < 0.02
    assert abs(float((out[..., 1] - d).mean())) < 0.005  # no bias


def test_pixel_class_percentages_match_truth() -> None:
    rgb, _, _, truth = synthetic_ihc(
        (512, 512), seed=6, noise=0.01, regions=[{"0": 30, "1+": 20, "2+": 20, "3+": 30}]
    )
    cm = stain.dab_class_map(rgb, background=stain.estimate_background(rgb))
    got = np.bincount(cm.ravel(), minlength=5)
    want = np.bincount(truth["class_map"].ravel(), minlength=5)
    assert got[1:].sum() > 0
    p_got = 100 * got[1:] / got[1:].sum()
    p_want = 100 * want[1:] / want[1:].sum()
    assert np.abs(p_got - p_want).max() < 1.0
    # tissue (class > 0) against the true tissue mask
    assert abs(100 * (cm > 0).mean() - 100 * truth["tissue_mask"].mean()) < 1.0


def test_dab_class_map_thresholds_and_masks() -> None:
    cfg = StainConfig()
    bg = (240.0, 236.0, 245.0)
    levels = [0.1, 0.3, 0.5, 0.8]
    d = np.repeat(np.array(levels, np.float32), 16)[None, :].repeat(8, axis=0)
    h = np.full_like(d, 0.2)
    h[:, :4] = d[:, :4] = 0.0  # glass
    rgb = compose_rgb(
        [(h, cfg.hematoxylin), (d, cfg.dab)], bg, noise=0.0, rng=np.random.default_rng(0)
    )
    cm = stain.dab_class_map(rgb, cfg, background=bg)
    assert cm.dtype == np.uint8
    assert (cm[:, :4] == 0).all()
    for k in range(4):
        assert (cm[:, 16 * k + 4 : 16 * (k + 1)] == k + 1).all()
    mask = np.ones(cm.shape, bool)
    mask[:4] = False
    masked = stain.dab_class_map(rgb, cfg, background=bg, tissue_mask=mask)
    assert (masked[:4] == 0).all() and np.array_equal(masked[4:], cm[4:])
    higher = stain.dab_class_map(rgb, StainConfig(thresholds=(0.35, 0.6, 0.9)), background=bg)
    assert (higher[:, 20:32] == 1).all() and (higher[:, 52:] == 3).all()
    with pytest.raises(UserInputError):
        stain.dab_class_map(rgb, StainConfig(thresholds=(0.4, 0.2, 0.6)), background=bg)


def test_dab_od_recovers_the_drawn_dab() -> None:
    """DAB drawn at known ODs over a hematoxylin background is read back within 8-bit rounding."""
    from her2_qupath.synthetic import render_stains

    drawn = np.repeat(np.array([[0.0, 0.1, 0.3, 0.5, 0.7]]), 4, axis=0)
    rgb = render_stains(np.full(drawn.shape, 0.3), drawn)
    assert np.abs(stain.dab_od(rgb, background=255) - drawn).max() < 0.012
    assert np.abs(stain.deconvolve(rgb, background=255)[..., 0] - 0.3).max() < 0.012


# ---------------------------------------------------------------- background
@pytest.mark.parametrize("noise", [0.0, 0.008, 0.02])
def test_background_non_white_with_mask(noise: float) -> None:
    bg = (228.0, 221.0, 236.0)
    rgb, _, _, truth = synthetic_ihc((256, 256), seed=9, noise=noise, background=bg)
    assert np.allclose(stain.estimate_background(rgb), bg, atol=1.5)
    assert np.allclose(stain.estimate_background(rgb, ~truth["tissue_mask"]), bg, atol=1.5)
    # restricted to tissue there is no glass to find
    assert stain.estimate_background(rgb, truth["tissue_mask"]) == (255.0, 255.0, 255.0)


def test_background_without_glass_falls_back_and_warns(caplog) -> None:
    cfg = StainConfig()
    h = np.full((32, 32), 0.8, np.float32)
    rgb = compose_rgb(
        [(h, cfg.hematoxylin)], (240, 240, 240), noise=0.0, rng=np.random.default_rng(0)
    )
    with caplog.at_level(logging.WARNING, logger="her2_qupath.stain"):
        assert stain.estimate_background(rgb) == (255.0, 255.0, 255.0)
    assert "no empty glass" in caplog.text
    assert stain.estimate_background(rgb, config=StainConfig(background=(241, 242, 243))) == (
        241.0,
        242.0,
        243.0,
    )


# ---------------------------------------------------------------- Macenko
def test_estimate_vectors_recovers_a_different_stain_pair() -> None:
    h_true = np.array([0.60, 0.74, 0.30])
    d_true = np.array([0.32, 0.55, 0.77])
    rng = np.random.default_rng(11)
    h = rng.uniform(0, 0.9, (200, 200)).astype(np.float32) * (rng.random((200, 200)) < 0.6)
    d = rng.uniform(0, 0.9, (200, 200)).astype(np.float32) * (rng.random((200, 200)) < 0.5)
    bg = (240.0, 238.0, 245.0)
    rgb = compose_rgb([(h, h_true), (d, d_true)], bg, noise=0.003, rng=rng)
    v = stain.estimate_vectors(rgb, background=bg)
    assert v is not None
    assert float(np.asarray(v.hematoxylin) @ (h_true / np.linalg.norm(h_true))) > 0.995
    assert float(np.asarray(v.dab) @ (d_true / np.linalg.norm(d_true))) > 0.995
    # and the estimate separates the stains better than the defaults
    est = stain.deconvolve(rgb, v, bg)[..., 1]
    assert np.median(np.abs(est - d)) < 0.03


def test_estimate_vectors_refuses_a_single_stain() -> None:
    cfg = StainConfig()
    rng = np.random.default_rng(12)
    h = rng.uniform(0.1, 0.9, (100, 100)).astype(np.float32)
    rgb = compose_rgb([(h, cfg.hematoxylin)], (240, 238, 245), noise=0.002, rng=rng)
    assert stain.estimate_vectors(rgb, background=(240, 238, 245)) is None


# ---------------------------------------------------------------- real IHC
def test_skimage_ihc_dab_where_brown() -> None:
    from skimage import data

    rgb = data.immunohistochemistry()
    d = stain.deconvolve(rgb, background=stain.estimate_background(rgb))
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    brown = (r - b > 40) & (r < 200)
    blue = (b - r > 20) & (b < 200)
    assert brown.mean() > 0.02 and blue.mean() > 0.02
    assert d[..., 1][brown].mean() > 0.3
    assert d[..., 1][blue].mean() < 0.1
    assert d[..., 0][blue].mean() > d[..., 0][brown].mean()
    # stable: the same call gives the same classes
    a = stain.dab_class_map(rgb)
    assert np.array_equal(a, stain.dab_class_map(rgb))
    assert 0.05 < (a >= 2).mean() < 0.8


@pytest.mark.shared_data
def test_ki67_dab_in_positive_nuclei(shared_data: Path) -> None:
    from PIL import Image
    from scipy import ndimage as ndi

    tiles = sorted((shared_data / "ihc" / "ki67").glob("*.groundtruth.png"))
    if not tiles:
        pytest.skip("no Ki67 tiles in the shared data")
    for gt_path in tiles:
        rgb = np.asarray(Image.open(str(gt_path).replace(".groundtruth", "")).convert("RGB"))
        gt = np.asarray(Image.open(gt_path).convert("RGB")).astype(int)
        red = (gt[..., 0] > 100) & (gt[..., 1] < 80) & (gt[..., 2] < 80)
        blue = (gt[..., 2] > 100) & (gt[..., 0] < 80) & (gt[..., 1] < 80)
        d = stain.deconvolve(rgb, background=stain.estimate_background(rgb))[..., 1]
        lr, nr = ndi.label(red)
        lb, nb = ndi.label(blue)
        assert nr >= 5 and nb >= 5
        pos = np.asarray(ndi.mean(d, lr, range(1, nr + 1)))
        neg = np.asarray(ndi.mean(d, lb, range(1, nb + 1)))
        # positive (brown) nuclei carry DAB above the 1+ threshold, negative ones do not
        assert (pos > 0.2).mean() >= 0.9, gt_path.name
        assert (neg < 0.2).mean() >= 0.9, gt_path.name
        cm = stain.dab_class_map(rgb, background=stain.estimate_background(rgb))
        assert (cm[red] >= 2).mean() > 0.8
        assert (cm[blue] >= 2).mean() < 0.1


def test_class_maps_give_the_drawn_classes() -> None:
    """DAB drawn inside each class band of QuPath's 0.2/0.4/0.6: both class-map paths give the
    drawn class (values 1-4), glass outside the tissue mask stays 0."""
    from her2_qupath.synthetic import render_stains

    drawn = np.repeat(np.array([[0.1, 0.3, 0.5, 0.75, 0.0]]), 4, axis=0)
    rgb = render_stains(np.full(drawn.shape, 0.2), drawn)
    tissue = np.ones(drawn.shape, bool)
    tissue[:, 4] = False
    expected = np.repeat(np.array([[1, 2, 3, 4, 0]]), 4, axis=0)
    assert (stain.dab_class_map(rgb, background=255, tissue_mask=tissue) == expected).all()
    od = stain.deconvolve(rgb, background=255)
    assert (stain.class_map_from_stains(od, tissue_mask=tissue) == expected).all()
    with pytest.raises(UserInputError):
        stain.class_map_from_stains(od[..., :2])


def test_deconvolve_into_a_given_array() -> None:
    rgb, *_ = synthetic_ihc((64, 48), seed=14)
    buf = np.full((64, 48, 3), np.nan, np.float32)
    got = stain.deconvolve(rgb, background=250, out=buf)
    assert got is buf
    assert np.allclose(buf, stain.deconvolve(rgb, background=250), atol=1e-6)
    with pytest.raises(UserInputError):
        stain.deconvolve(rgb, background=250, out=np.empty((64, 48, 3), np.float64))


def test_stain_shares_tell_he_from_ihc(shared_data) -> None:
    """Real slides: H&E shows eosin, DAB IHC hardly any (the check behind swapped-input warnings)."""
    from PIL import Image
    from skimage import data

    from her2_qupath.slide import open_slide
    from her2_qupath.stain import stain_shares

    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as s:
        assert stain_shares(s.thumbnail(mpp=2.0)).looks_like_he()
    with open_slide(shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs", mpp=0.5) as s:
        assert stain_shares(s.thumbnail(mpp=2.0)).looks_like_he()
    he = np.asarray(Image.open(shared_data / "pairs" / "rat-kidney" / "HE.jpg").convert("RGB"))
    assert stain_shares(he).looks_like_he()
    ihc_images = [data.immunohistochemistry(),
                  np.asarray(Image.open(shared_data / "pairs" / "rat-kidney" /
                                        "IHC-PanCytokeratin.jpg").convert("RGB"))]
    ihc_images += [np.asarray(Image.open(p).convert("RGB"))
                   for p in sorted((shared_data / "ihc" / "ki67").glob("*_?.png"))]
    for rgb in ihc_images:
        check = stain_shares(rgb)
        assert not check.looks_like_he(), check
        assert check.hematoxylin + check.eosin + check.dab == pytest.approx(1.0)
