"""White point, optical density and tissue (her2_qupath.optics) on images with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from her2_qupath.config import StainConfig, TissueConfig
from her2_qupath.errors import UserInputError
from her2_qupath.optics import (
    WhitePoint,
    estimate_white_point,
    glass_mask,
    od_sum,
    optical_density,
    parse_rgb,
    tissue_mask,
)
from her2_qupath.synthetic import compose_rgb, synthetic_ihc

SC = StainConfig()


def _textured_tissue(shape: tuple[int, int], white: tuple[float, float, float], *, h: float, d: float,
                     seed: int = 0) -> np.ndarray:
    """Pale tissue: nuclei-sized hematoxylin speckle and faint DAB on a given white point."""
    rng = np.random.default_rng(seed)
    hh = np.where(rng.random(shape) < 0.15, 4 * h, h).astype(np.float32)
    import cv2

    hh = cv2.GaussianBlur(hh, (0, 0), 0.8)  # nuclei of a few pixels: tissue has texture
    dd = np.full(shape, d, np.float32)
    return compose_rgb([(hh, SC.hematoxylin), (dd, SC.dab)], white, noise=0.004, rng=rng)


@pytest.mark.parametrize("white", [(238.0, 233.0, 243.0), (175.0, 174.0, 171.0), (212.0, 211.0, 209.0)])
def test_white_point_from_glass_whatever_the_white_balance(white) -> None:
    """Grey-balanced scans (glass at 175) are found as well as white ones, within 1.5 levels."""
    rgb, _h, _d, truth = synthetic_ihc((384, 384), seed=3, noise=0.01, background=white)
    wp = estimate_white_point(rgb, 0.5)
    assert wp.source == "glass" and wp.reliable and wp.usable
    assert np.allclose(wp.rgb, white, atol=1.5)
    assert wp.glass_fraction == pytest.approx(1 - truth["tissue_mask"].mean(), abs=0.15)


def test_pale_tissue_is_not_taken_for_glass() -> None:
    """Tissue edge to edge with a little glass: the glass, not the (textured) tissue, is the white."""
    white = (244.0, 240.0, 246.0)
    rgb = _textured_tissue((400, 400), white, h=0.04, d=0.02)
    rgb[:, :40] = np.round(np.asarray(white)).astype(np.uint8)  # a strip of glass, 10 %
    wp = estimate_white_point(rgb, 1.0)
    assert wp.source == "glass" and wp.reliable
    assert np.allclose(wp.rgb, white, atol=1.5)
    g = glass_mask(rgb, 1.0)
    assert g[:, 5:35].mean() > 0.95 and g[:, 60:].mean() < 0.02


def test_no_glass_is_doubtful_and_falls_back_to_the_brightest_grey() -> None:
    white = (240.0, 238.0, 244.0)
    rgb = _textured_tissue((300, 300), white, h=0.08, d=0.03)
    wp = estimate_white_point(rgb, 1.0)
    assert wp.source == "fallback" and not wp.reliable and wp.usable
    assert "no glass" in wp.note
    # the brightest structures (of the image averaged to 2 µm/px): brighter than 90 % of it
    assert all(wp.rgb[c] >= np.percentile(rgb[..., c], 90) for c in range(3))
    # a coloured fallback (pink stroma edge to edge) is made grey at its brightest channel
    pink = np.empty((200, 200, 3), np.uint8)
    pink[...] = (232, 170, 215)
    pink = np.clip(pink + np.random.default_rng(1).normal(0, 6, pink.shape), 0, 255).astype(np.uint8)
    wp = estimate_white_point(pink, 1.0)
    assert wp.source == "fallback" and max(wp.rgb) - min(wp.rgb) < 1e-9 and wp.rgb[0] >= 232
    # a dark image has no usable white point at all
    dark = (rgb // 3).astype(np.uint8)
    assert not estimate_white_point(dark, 1.0).usable


def test_user_and_stain_string_white_points_win() -> None:
    rgb, *_ = synthetic_ihc((128, 128), seed=1)
    wp = estimate_white_point(rgb, user="201,202,203", stain_string=(100, 100, 100))
    assert wp == WhitePoint((201.0, 202.0, 203.0), "user", note="given by the user")
    assert estimate_white_point(rgb, stain_string=(100, 101, 102)).source == "stain string"
    with pytest.raises(UserInputError, match="three values"):
        parse_rgb("300,1,1")
    with pytest.raises(UserInputError, match="three numbers"):
        parse_rgb("white")


def test_optical_density_is_beer_lambert_against_the_white_point() -> None:
    white = (230.0, 220.0, 240.0)
    od = np.array([0.1, 0.3, 0.5])
    rgb = np.round(np.asarray(white) * 10 ** -od).astype(np.uint8)[None, None, :]
    got = optical_density(rgb, white)[0, 0]
    assert np.allclose(got, od, atol=0.01)  # within the uint8 rounding
    assert od_sum(rgb, white)[0, 0] == pytest.approx(od.sum(), abs=0.02)
    glass = np.full((4, 4, 3), np.round(white), np.uint8)
    assert np.abs(od_sum(glass, white)).max() < 0.003


@pytest.mark.parametrize("white", [(242.0, 240.0, 245.0), (178.0, 177.0, 175.0)])
def test_tissue_mask_keeps_pale_tissue_and_grey_glass_is_glass(white) -> None:
    """Pale counterstain (OD sum ~0.1) is tissue; glass at a grey white balance is not."""
    rgb = np.empty((300, 300, 3), np.uint8)
    rgb[...] = np.round(white).astype(np.uint8)
    tissue = _textured_tissue((300, 150), white, h=0.03, d=0.01)
    rgb[:, 150:] = tissue
    wp = estimate_white_point(rgb, 2.0)
    m = tissue_mask(rgb, 2.0, wp, TissueConfig(min_object_um2=0, min_hole_um2=0, closing_um=0))
    assert m[:, 160:].mean() > 0.97
    assert m[:, :140].mean() < 0.01
