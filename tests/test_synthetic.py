"""Synthetic slides: ground truth by construction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from her2_qupath import stain
from her2_qupath.config import StainConfig
from her2_qupath.errors import UserInputError
from her2_qupath.scoring import aggregate, guideline_score, score_class_map
from her2_qupath.synthetic import MEMBRANE_CLASSES, compose_rgb, synthetic_ihc, synthetic_pair


def test_shapes_dtypes_and_non_white_background() -> None:
    rgb, h, d, truth = synthetic_ihc((200, 300), seed=0)
    assert rgb.shape == (200, 300, 3) and rgb.dtype == np.uint8
    assert h.shape == d.shape == (200, 300) and h.dtype == d.dtype == np.float32
    assert truth["background"] != (255.0, 255.0, 255.0)
    glass = ~truth["tissue_mask"]
    assert glass.any() and truth["tissue_mask"].any()
    assert (h[glass] == 0).all() and (d[glass] == 0).all()


def test_beer_lambert_model_without_noise() -> None:
    bg = (236.0, 231.0, 244.0)
    rgb, h, d, _ = synthetic_ihc((128, 128), seed=1, noise=0.0, background=bg)
    cfg = StainConfig()
    hv = np.asarray(cfg.hematoxylin) / np.linalg.norm(cfg.hematoxylin)
    dv = np.asarray(cfg.dab) / np.linalg.norm(cfg.dab)
    od = h[..., None] * hv + d[..., None] * dv
    expect = np.asarray(bg) * 10.0 ** (-od)
    assert np.abs(rgb.astype(float) - expect).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("layout", ["isolated", "packed"])
def test_exact_cell_class_percentages_per_region(layout: str) -> None:
    regions = [{"0": 50, "1+": 10, "3+": 40}, {"0": 100}, {"0": 25, "1+": 25, "2+": 25, "3+": 25}]
    _, _, _, truth = synthetic_ihc((768, 768), seed=2, regions=regions, layout=layout)
    cells = truth["cells"]
    for r, want in enumerate(regions):
        sel = cells["region"] == r
        n = int(sel.sum())
        assert n > 50
        got = np.bincount(cells["her2_class"][sel], minlength=4)
        for k, key in enumerate(("0", "1+", "2+", "3+")):
            assert abs(got[k] - want.get(key, 0) * n / 100) <= 1.0
        assert truth["regions"][r]["cell_counts"] == got.tolist()


@pytest.mark.parametrize("layout", ["isolated", "packed"])
def test_drawn_membranes_follow_their_class(layout: str) -> None:
    _, _, d, truth = synthetic_ihc(
        (512, 512), seed=3, regions=[{"0": 25, "1+": 25, "2+": 25, "3+": 25}], layout=layout
    )
    assert truth["layout"] == layout
    c = truth["cells"]
    for k, mc in enumerate(MEMBRANE_CLASSES):
        sel = c["her2_class"] == k
        assert (c["membrane_od"][sel] >= mc.od[0]).all() and (
            c["membrane_od"][sel] <= mc.od[1]
        ).all()
        assert (c["completeness"][sel] >= mc.completeness[0]).all()
    # each cell's own membrane carries its OD: inside the tissue, around a 3+
    # cell (at most 21 px from its centre at 0.5 um/px in either layout) the
    # strongest DAB is its membrane or a brighter neighbour's
    tissue = truth["tissue_mask"]
    sel = np.flatnonzero(c["her2_class"] == 3)
    checked = 0
    for i in sel:
        y, x = int(round(c["y"][i])), int(round(c["x"][i]))
        box = (slice(max(y - 22, 0), y + 23), slice(max(x - 22, 0), x + 23))
        if not tissue[box].all():
            continue
        assert d[box].max() >= c["membrane_od"][i] - 1e-5
        assert d[y, x] == 0.0  # the nucleus carries no DAB
        checked += 1
    assert checked >= 10
    # stained pixels lie at cell borders, never on a nucleus
    yy, xx = np.mgrid[0 : d.shape[0], 0 : d.shape[1]]
    for i in sel[:30]:
        disk = (yy - c["y"][i]) ** 2 + (xx - c["x"][i]) ** 2 <= c["nucleus_radius"][i] ** 2
        assert (d[disk] == 0).all()


def test_truth_class_map_and_guideline_answer() -> None:
    rgb, _, d, truth = synthetic_ihc((512, 512), seed=4, regions=[{"0": 60, "3+": 40}])
    t1, t2, t3 = StainConfig().thresholds
    cm = truth["class_map"]
    assert ((cm == 4) == (truth["tissue_mask"] & (d >= t3))).all()
    # cell-level answer known by construction: 40 % at 3+ -> 3+ under every guideline
    assert guideline_score(np.bincount(truth["cells"]["her2_class"], minlength=4), "breast") == 3
    # and the pixel classes from the image agree with the truth map
    est = stain.dab_class_map(rgb, background=stain.estimate_background(rgb))
    t = aggregate([score_class_map(est)])
    tt = aggregate([score_class_map(cm)])
    for k in t.class_percentages:
        assert abs(t.class_percentages[k] - tt.class_percentages[k]) < 1.0


def test_deterministic_by_seed() -> None:
    a = synthetic_ihc((96, 96), seed=7)[0]
    b = synthetic_ihc((96, 96), seed=7)[0]
    c = synthetic_ihc((96, 96), seed=8)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_regions_and_sizes() -> None:
    with pytest.raises(UserInputError):
        synthetic_ihc((64, 64), regions=[{"0": 50}])
    with pytest.raises(UserInputError):
        synthetic_ihc((64, 64), regions=[{"4+": 100}])
    with pytest.raises(UserInputError):
        synthetic_ihc((8, 8))
    with pytest.raises(UserInputError):
        synthetic_ihc((64, 64), nucleus_radius_um=6.0)
    with pytest.raises(UserInputError):
        synthetic_ihc((64, 64), nucleus_radius_um=7.0, layout="packed")
    with pytest.raises(UserInputError):
        synthetic_ihc((64, 64), layout="woven")


@pytest.mark.parametrize("layout", ["isolated", "packed"])
def test_pair_known_affine(layout: str) -> None:
    he, ihc, m, truth = synthetic_pair(
        (512, 512), seed=5, rotation_deg=10.0, translation=(20.0, -12.0), layout=layout
    )
    assert he.shape == ihc.shape == (512, 512, 3)
    assert m.shape == (3, 3) and np.allclose(m[2], [0, 0, 1])
    assert np.isclose(np.degrees(np.arctan2(m[1, 0], m[0, 0])), 10.0)
    # H&E: eosin makes tissue pink (green absorbed most); IHC tissue is not
    tis = truth["tissue_mask"]
    assert he[..., 1][tis].mean() < he[..., 0][tis].mean()
    # nuclei land where the matrix says: hematoxylin is high at mapped nucleus centres
    xy = np.round(truth["ihc_cells_xy"]).astype(int)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < 512) & (xy[:, 1] >= 0) & (xy[:, 1] < 512)
    h_ihc = stain.deconvolve(ihc, background=truth["background"])[..., 0]
    at_nuclei = h_ihc[xy[inside, 1], xy[inside, 0]]
    assert inside.sum() > 50
    assert np.median(at_nuclei) > 0.4
    shifted = h_ihc[np.clip(xy[inside, 1] + 7, 0, 511), np.clip(xy[inside, 0] + 7, 0, 511)]
    assert np.median(shifted) < 0.3
    # the warped tissue mask matches where IHC holds tissue
    od_sum = stain.rgb_to_od(ihc, truth["background"]).sum(axis=-1)
    agree = ((od_sum > 0.15) == truth["ihc_tissue_mask"]).mean()
    assert agree > 0.97


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    st.integers(0, 2**16),
    st.floats(0.05, 0.6),
    st.floats(0.05, 1.0),
    st.sampled_from(["breast", "gastric", "endometrial"]),
)
def test_adding_dab_to_tissue_never_lowers_the_score(
    seed: int, amount: float, share: float, guideline: str
) -> None:
    """Image level: more DAB on tissue pixels never lowers a pixel-level score."""
    bg = (238.0, 233.0, 243.0)
    regions = [{"0": 70, "1+": 10, "2+": 10, "3+": 10}]
    _, h, d, truth = synthetic_ihc((128, 128), seed=seed % 97, noise=0.0, regions=regions)
    rng = np.random.default_rng(seed)
    more = d + amount * (truth["tissue_mask"] & (rng.random(d.shape) < share))
    cfg = StainConfig()
    scores = []
    for dab in (d, more):
        rgb = compose_rgb([(h, cfg.hematoxylin), (dab, cfg.dab)], bg, noise=0.0, rng=rng)
        r = aggregate([score_class_map(stain.dab_class_map(rgb, background=bg))], guideline)
        scores.append((r.guideline_score, r.h_score, r.percent_positive))
    assert scores[1][0] >= scores[0][0]
    assert scores[1][1] >= scores[0][1]
    assert scores[1][2] >= scores[0][2]


def test_render_stains_is_beer_lambert_by_hand() -> None:
    """One hematoxylin pixel, one DAB pixel, one empty: the RGB worked out by hand."""
    from her2_qupath.config import StainConfig
    from her2_qupath.synthetic import render_stains

    sc = StainConfig()
    h = np.array([[0.5, 0.0, 0.0]])
    d = np.array([[0.0, 0.8, 0.0]])
    rgb = render_stains(h, d)
    hv = np.asarray(sc.hematoxylin) / np.linalg.norm(sc.hematoxylin)
    dv = np.asarray(sc.dab) / np.linalg.norm(sc.dab)
    assert rgb[0, 0].tolist() == [round(255 * 10 ** (-0.5 * c)) for c in hv]
    assert rgb[0, 1].tolist() == [round(255 * 10 ** (-0.8 * c)) for c in dv]
    assert rgb[0, 2].tolist() == [255, 255, 255]
    noisy = render_stains(np.zeros((200, 200)), np.full((200, 200), 0.3), noise=2.0,
                          rng=np.random.default_rng(1)).astype(float)
    clean = render_stains(np.zeros((1, 1)), np.full((1, 1), 0.3)).astype(float)[0, 0]
    assert np.abs(noisy.mean(axis=(0, 1)) - clean).max() < 0.6  # unbiased
    assert 1.8 < noisy[..., 0].std() < 2.3  # the noise asked for (plus rounding)
