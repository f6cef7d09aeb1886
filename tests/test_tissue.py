"""Tissue detection on synthetic thumbnails with known tissue area (and the real CMU slide)."""

from __future__ import annotations

import numpy as np
import pytest

from her2_qupath.config import TissueConfig
from her2_qupath.errors import MPPMissing
from her2_qupath.optics import estimate_white_point, optical_density
from her2_qupath.tissue import (
    TissueMask,
    detect_tissue,
    otsu_threshold,
)

GLASS = (243, 241, 246)
EOSIN = (232, 170, 215)  # pale pink stroma, OD ~ 0.12
HEMATOXYLIN = (120, 80, 160)  # dense nuclei
DAB = (150, 100, 60)


def _scene(mpp: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 6.4 x 4.8 mm scene at ``mpp``: glass with three tissue blobs; returns (rgb, truth)."""
    rng = np.random.default_rng(seed)
    h, w = int(round(4800 / mpp)), int(round(6400 / mpp))
    yy, xx = np.mgrid[0:h, 0:w] * mpp  # micrometres
    ellipse = ((xx - 1800) / 1200) ** 2 + ((yy - 2000) / 900) ** 2 < 1
    rect = (xx > 3600) & (xx < 5800) & (yy > 600) & (yy < 2200)
    disk = (xx - 4500) ** 2 + (yy - 3600) ** 2 < 700**2
    truth = ellipse | rect | disk
    rgb = np.empty((h, w, 3), dtype=np.float64)
    rgb[...] = GLASS
    # stroma everywhere in the tissue, darker stains in part of it
    rgb[truth] = EOSIN
    nuclei = truth & (rng.random((h, w)) < 0.3)
    rgb[nuclei] = HEMATOXYLIN
    rgb[disk & (xx > 4500)] = DAB
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


@pytest.mark.parametrize("mpp", [8.0, 4.0])
def test_area_within_a_few_percent(mpp):
    rgb, truth = _scene(mpp)
    tm = detect_tissue(rgb, TissueConfig(thumbnail_mpp=mpp), mpp=mpp)
    true_area = truth.sum() * mpp**2
    assert tm.area_um2 == pytest.approx(true_area, rel=0.03)
    # and it is the right place, not just the right amount
    assert (tm.mask & truth).sum() / truth.sum() > 0.97
    assert (tm.mask & ~truth).sum() / truth.sum() < 0.03


def test_parameters_hold_across_magnifications():
    """The same scene at 2 and 4 um/px gives the same tissue area (parameters are in um)."""
    cfg = TissueConfig(thumbnail_mpp=2.0, min_object_um2=50_000)
    a2 = detect_tissue(_scene(2.0)[0], cfg, mpp=2.0).area_um2
    a4 = detect_tissue(_scene(4.0)[0], cfg, mpp=4.0).area_um2
    assert a2 == pytest.approx(a4, rel=0.02)


def test_fine_arrays_are_reduced_to_thumbnail_mpp():
    rgb, truth = _scene(4.0)
    cfg = TissueConfig(thumbnail_mpp=8.0, thumbnail_min_size=512)
    tm = detect_tissue(rgb, cfg, mpp=4.0, downsample=8.0)
    assert tm.mpp == pytest.approx(8.0)
    assert tm.downsample == pytest.approx(16.0)  # 8 level-0 pixels per array pixel, halved again
    assert tm.shape == (600, 800)
    assert tm.area_um2 == pytest.approx(truth.sum() * 16.0, rel=0.03)
    # a small image keeps thumbnail_min_size pixels: 6400 um / 1024 px = 6.25 um/px
    tm = detect_tissue(rgb, TissueConfig(thumbnail_mpp=8.0), mpp=4.0)
    assert tm.mpp == pytest.approx(6.25)
    assert tm.area_um2 == pytest.approx(truth.sum() * 16.0, rel=0.03)


def test_thumbnail_mpp_rule():
    from her2_qupath.tissue import thumbnail_mpp

    assert thumbnail_mpp((100_000, 80_000), 0.25) == 8.0  # a slide: 8 um/px
    assert thumbnail_mpp((1024, 1024), 0.46) == pytest.approx(0.46)  # a field: full resolution
    assert thumbnail_mpp((5468, 5468), 0.25) == pytest.approx(5468 * 0.25 / 1024)  # a TMA core


def test_blank_slide_gives_empty_mask():
    rng = np.random.default_rng(1)
    blank = np.clip(rng.normal(240, 2, (300, 400, 3)), 0, 255).astype(np.uint8)
    tm = detect_tissue(blank, mpp=8.0)
    assert tm.is_empty and tm.fraction == 0.0
    assert tm.to_geometry().is_empty
    assert tm.fraction_in((0, 0, 100, 100)) == 0.0
    assert detect_tissue(np.full((50, 50, 3), 255, np.uint8), mpp=8.0).is_empty


def test_tissue_everywhere_is_not_split_by_otsu():
    """No glass at all: the background falls back to white and all tissue is kept."""
    rng = np.random.default_rng(2)
    rgb = np.empty((200, 200, 3), np.float64)
    rgb[...] = EOSIN
    rgb[rng.random((200, 200)) < 0.4] = HEMATOXYLIN
    rgb = np.clip(rgb + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)
    assert detect_tissue(rgb, mpp=8.0).fraction > 0.99


def test_small_objects_removed_and_small_holes_filled():
    mpp = 8.0
    cfg = TissueConfig(closing_um=0.0)  # isolate the size filters
    rgb = np.full((300, 300, 3), GLASS, np.uint8)
    rgb[50:250, 50:250] = HEMATOXYLIN  # 200x200 px tissue
    rgb[100:105, 100:105] = GLASS  # a 1600 um2 hole (< 10000): filled
    rgb[150:200, 150:200] = GLASS  # a 160000 um2 hole: kept
    rgb[10:20, 270:280] = HEMATOXYLIN  # a 6400 um2 speck (< 20000): removed
    tm = detect_tissue(rgb, cfg, mpp=mpp)
    assert tm.mask[102, 102]
    assert not tm.mask[175, 175]
    assert not tm.mask[15, 275]
    assert tm.mask.sum() == 200 * 200 - 50 * 50


def test_closing_bridges_gaps_in_micrometres():
    rgb = np.full((100, 200, 3), GLASS, np.uint8)
    rgb[20:80, 20:98] = HEMATOXYLIN
    rgb[20:80, 102:180] = HEMATOXYLIN  # a 4 px = 32 um gap
    closed = detect_tissue(rgb, TissueConfig(closing_um=40.0), mpp=8.0)
    assert closed.mask[50, 100]
    opened = detect_tissue(rgb, TissueConfig(closing_um=8.0), mpp=8.0)
    assert not opened.mask[50, 100]


def test_fraction_in_is_area_weighted():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, :5] = True
    tm = TissueMask(mask, 4.0)  # 40 x 40 level-0 pixels
    assert tm.fraction_in((0, 0, 20, 40)) == pytest.approx(1.0)
    assert tm.fraction_in((0, 0, 40, 40)) == pytest.approx(0.5)
    assert tm.fraction_in((18, 0, 4, 4)) == pytest.approx(0.5)  # half a mask pixel either side
    assert tm.fraction_in((10, 10, 13, 7)) == pytest.approx(10 / 13)
    assert tm.fraction_in((-40, 0, 80, 40)) == pytest.approx(0.25)  # outside counts as glass
    boxes = np.array([[0, 0, 20, 40], [20, 0, 20, 40]])
    np.testing.assert_allclose(tm.fractions_in(boxes), [1.0, 0.0])


def test_fraction_in_matches_brute_force():
    rng = np.random.default_rng(3)
    mask = rng.random((37, 53)) < 0.4
    tm = TissueMask(mask, 3.0)
    up = np.repeat(np.repeat(mask, 3, axis=0), 3, axis=1)  # level-0 mask
    for _ in range(50):
        x, y = rng.integers(0, 150), rng.integers(0, 100)
        w, h = rng.integers(1, 60), rng.integers(1, 60)
        truth = up[y : y + h, x : x + w].sum() / (w * h)
        assert tm.fraction_in((x, y, w, h)) == pytest.approx(truth, abs=1e-9)


def test_geometry_in_level0_coordinates_with_holes():
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:50, 10:70] = True
    mask[20:30, 20:30] = False  # a hole
    mask[5:8, 75:78] = True  # a second part
    tm = TissueMask(mask, 2.5)
    geom = tm.to_geometry()
    assert geom.is_valid
    assert geom.geom_type == "MultiPolygon"
    assert geom.area == pytest.approx(mask.sum() * 2.5**2, rel=1e-9)
    big = max(geom.geoms, key=lambda g: g.area)
    assert big.bounds == pytest.approx((25.0, 25.0, 175.0, 125.0))
    assert len(big.interiors) == 1


def test_geometry_of_a_blob_matches_the_mask_area():
    rgb, _ = _scene(8.0)
    tm = detect_tissue(rgb, mpp=8.0)
    assert tm.to_geometry().area == pytest.approx(tm.mask.sum(), rel=0.01)


class _FakeSlide:
    """A slide whose thumbnail is a synthetic scene (level 0 at 0.5 um/px)."""

    mpp = 0.5
    mpp_or_none = 0.5

    def __init__(self) -> None:
        self.rgb, self.truth = _scene(8.0)
        self.dimensions = (self.rgb.shape[1] * 16, self.rgb.shape[0] * 16)
        self.requested: list[float | None] = []

    def thumbnail(self, *, max_size=None, mpp=None):
        self.requested.append(mpp)
        return self.rgb


def test_detect_tissue_on_a_slide_object():
    slide = _FakeSlide()
    tm = detect_tissue(slide, TissueConfig(thumbnail_min_size=512))
    assert slide.requested == [8.0]
    assert tm.downsample == pytest.approx(16.0)
    assert tm.level0_mpp == pytest.approx(0.5)
    assert tm.area_um2 == pytest.approx(slide.truth.sum() * 64.0, rel=0.03)
    # a 1 mm box well inside the rectangle (3600..5800 x 600..2200 um) is all tissue
    assert tm.fraction_in((4000 / 0.5, 1000 / 0.5, 1000 / 0.5, 1000 / 0.5)) == pytest.approx(1.0)


def test_array_without_mpp_names_the_fix():
    with pytest.raises(MPPMissing, match="mpp"):
        detect_tissue(np.zeros((10, 10, 3), np.uint8))


def test_helpers():
    assert otsu_threshold(np.r_[np.zeros(100), np.ones(100)]) == pytest.approx(0.5, abs=0.01)
    assert otsu_threshold(np.full(10, 3.0)) == 3.0
    rgb = np.full((10, 10, 3), 128, np.uint8)
    assert optical_density(rgb, np.array([255.0, 255, 255])).mean() == pytest.approx(
        np.log10(255 / 128), rel=1e-5
    )
    glass = np.full((64, 64, 3), GLASS, np.uint8)
    wp = estimate_white_point(glass)
    assert wp.source == "glass" and wp.reliable
    np.testing.assert_allclose(wp.rgb, GLASS)
    assert optical_density(glass, wp).max() == 0.0


@pytest.mark.shared_data
def test_real_cmu_slide(shared_data):
    from her2_qupath import slide as slide_mod

    with slide_mod.open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as slide:
        tm = detect_tissue(slide)
        fine = detect_tissue(slide, TissueConfig(thumbnail_mpp=4.0))
    # a tall strip of skin: about 40 % of the region, glass in the top-left corner,
    # solid tissue low in the left half (checked by eye on the thumbnail)
    assert 0.3 < tm.fraction < 0.55
    assert tm.level0_mpp == pytest.approx(0.499, rel=0.02)
    assert tm.fraction_in((0, 0, 400, 400)) == 0.0
    assert tm.fraction_in((800, 2400, 400, 400)) > 0.95
    # parameters in micrometres: the same area from a thumbnail twice as fine
    assert fine.area_um2 == pytest.approx(tm.area_um2, rel=0.04)
    geom = tm.to_geometry()
    assert geom.is_valid and geom.area == pytest.approx(tm.mask.sum() * tm.downsample**2, rel=1e-6)


def test_mpp_override_asks_for_the_thumbnail_by_size():
    class NoMPP(_FakeSlide):
        @property
        def mpp(self):  # a slide without pixel size raises when asked
            raise MPPMissing("no MPP", hint="pass --mpp")

        def thumbnail(self, *, max_size=None, mpp=None):
            self.requested.append(max_size)
            return self.rgb

    slide = NoMPP()
    with pytest.raises(MPPMissing):
        detect_tissue(slide)
    tm = detect_tissue(slide, TissueConfig(thumbnail_min_size=512), mpp=0.5)
    assert slide.requested == [max(slide.dimensions) // 16]
    assert tm.mpp == pytest.approx(8.0)
