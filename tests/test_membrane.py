"""Membrane line density: drawn membranes of known absorbance, at two pixel sizes."""

from __future__ import annotations

import numpy as np
import pytest

from her2_qupath.config import StainConfig
from her2_qupath.errors import UserInputError
from her2_qupath.membrane import (
    block_intensity,
    block_membrane_intensity,
    classify_intensity,
    count_nuclei,
    line_density,
    membrane_class_map,
    membrane_maps,
    unmixing_matrix,
)
from her2_qupath.stain import StainVectors
from her2_qupath.synthetic import compose_rgb

SC = StainConfig()
WHITE = (240.0, 236.0, 244.0)


def _membranes(mpp: float, integrated: float, *, width_um: float = 0.6, size_um: float = 96.0,
               spacing_um: float = 12.0, grey: float = 0.0, diffuse: float = 0.0) -> np.ndarray:
    """A honeycomb-like grid of membranes of integrated DAB ``integrated`` OD·µm, supersampled.

    The membrane is a line of ``width_um`` and OD ``integrated / width_um``, drawn at a
    fine grid (0.05 µm) and averaged down to ``mpp`` (what a scanner's pixel does).
    ``grey`` adds a neutral absorber (OD per channel) in blobs; ``diffuse`` a uniform DAB.
    """
    fine = 0.05
    n = int(round(size_um / fine))
    x = (np.arange(n) + 0.5) * fine
    on = (np.abs(((x + spacing_um / 2) % spacing_um) - spacing_um / 2) < width_um / 2)
    line = (on[None, :] | on[:, None]).astype(np.float32) * (integrated / width_um)
    f = int(round(mpp / fine))
    d = line.reshape(n // f, f, n // f, f).mean(axis=(1, 3)) + diffuse
    h = np.full(d.shape, 0.05, np.float32)
    stains = [(h, SC.hematoxylin), (d.astype(np.float32), SC.dab)]
    if grey:
        yy, xx = np.mgrid[0 : d.shape[0], 0 : d.shape[1]] * mpp
        blob = ((xx % 24 - 6) ** 2 + (yy % 24 - 6) ** 2 < 9).astype(np.float32) * grey
        stains.append((blob, (1.0, 1.0, 1.0)))
    return compose_rgb(stains, WHITE, noise=0.0, rng=np.random.default_rng(0))


@pytest.mark.parametrize("integrated", [0.05, 0.12, 0.3])
def test_line_density_is_the_integrated_absorbance_at_any_pixel_size(integrated: float) -> None:
    """The same membranes seen at 0.25 and 0.5 µm/px give the same line density, ~ OD x width."""
    got = []
    for mpp in (0.25, 0.5):
        rgb = _membranes(mpp, integrated)
        maps = membrane_maps(rgb, StainVectors.default(), WHITE)
        line = line_density(maps.membrane_dab, mpp)
        inten = block_intensity(line, mpp)
        got.append(float(np.median(inten)))
    assert got[0] == pytest.approx(got[1], rel=0.12)
    assert np.mean(got) == pytest.approx(integrated, rel=0.35)


@pytest.mark.parametrize("integrated", [0.05, 0.12, 0.3])
def test_block_intensity_reads_the_drawn_od_times_width(integrated: float) -> None:
    """The pipeline's measure (at 1 µm/px, with its gain) reads OD x width in OD·µm,
    at 0.25 and 0.5 µm/px and for membranes 0.6 or 1 µm wide."""
    for mpp in (0.25, 0.5):
        for width in (0.6, 1.0):
            rgb = _membranes(mpp, integrated, width_um=width)
            maps = membrane_maps(rgb, StainVectors.default(), WHITE)
            inten = block_membrane_intensity(maps.membrane_dab, mpp)
            assert float(np.median(inten)) == pytest.approx(integrated, rel=0.05), (mpp, width)


def test_diffuse_staining_is_not_membrane() -> None:
    """A uniform cytoplasmic DAB wash adds nothing to the line density."""
    mpp = 0.5
    plain = _membranes(mpp, 0.12)
    washed = _membranes(mpp, 0.12, diffuse=0.25)
    v = StainVectors.default()
    a = block_intensity(line_density(membrane_maps(plain, v, WHITE).membrane_dab, mpp), mpp)
    b = block_intensity(line_density(membrane_maps(washed, v, WHITE).membrane_dab, mpp), mpp)
    assert np.median(b) == pytest.approx(np.median(a), abs=0.01)


def test_grey_absorbers_do_not_count_as_dab() -> None:
    """Red cells, pigment and fold edges absorb all colours: the neutral channel takes them."""
    mpp = 0.5
    v = StainVectors.default()
    grey_only = _membranes(mpp, 0.0, grey=0.4)
    maps = membrane_maps(grey_only, v, WHITE)
    # the ordinary (cross-product residual) deconvolution calls a good share of the grey DAB
    assert float(maps.dab.max()) > 0.1
    assert float(np.abs(maps.membrane_dab).max()) < 0.03
    m = unmixing_matrix(v)
    assert m.shape == (3, 3)
    assert np.allclose(np.array([1.0, 1.0, 1.0]) @ m[:, 2], 0.0, atol=1e-9)
    assert np.allclose(np.asarray(v.dab) / np.linalg.norm(v.dab) @ m[:, 2], 1.0)
    assert np.allclose(m[:, :2], v.inverse[:, :2])  # hematoxylin and DAB as deconvolve gives them


def test_block_classes_follow_the_thresholds_exactly() -> None:
    """Blocks of membranes at known densities land in the class their density reaches."""
    mpp = 0.5
    cfg = StainConfig(membrane_thresholds=(0.03, 0.08, 0.2), membrane_tissue_od_sum=0.04)
    # drawn densities sit well inside each band
    for integrated, expected in ((0.0, 0), (0.05, 1), (0.13, 2), (0.4, 3)):
        rgb = _membranes(mpp, integrated)
        maps = membrane_maps(rgb, StainVectors.default(), WHITE)
        cmap, blocks = membrane_class_map(maps, mpp, cfg)
        inner = blocks[1:-1, 1:-1]
        assert (inner == expected).mean() > 0.95, (integrated, np.bincount(inner.ravel() + 1))
        assert (cmap > 0).all()  # every pixel of a tissue block is analysed


def test_glass_blocks_are_background_and_rois_cut_blocks() -> None:
    mpp = 0.5
    rgb = _membranes(mpp, 0.13, size_um=64.0)
    rgb[:, :64] = np.round(WHITE).astype(np.uint8)  # the left half is glass
    maps = membrane_maps(rgb, StainVectors.default(), WHITE)
    cfg = StainConfig(membrane_tissue_od_sum=0.04)
    cmap, blocks = membrane_class_map(maps, mpp, cfg)
    assert (cmap[:, :64] == 0).all() and (cmap[:, 64:] > 0).all()
    roi = np.zeros(cmap.shape, bool)
    roi[:64, :] = True
    cmap2, _ = membrane_class_map(maps, mpp, cfg, tissue_mask=roi)
    assert (cmap2[64:] == 0).all() and (cmap2[:64, 64:] > 0).all()


def test_pale_blocks_are_left_out_of_the_count() -> None:
    """Blocks paler than membrane_tissue_od_sum (loose stroma, fat) are not scored tissue."""
    mpp = 0.5
    rgb = _membranes(mpp, 0.13, size_um=64.0)  # hematoxylin 0.05 + membranes: OD sum ~0.1
    maps = membrane_maps(rgb, StainVectors.default(), WHITE)
    od = float(maps.od_sum.mean())
    kept, _ = membrane_class_map(maps, mpp, StainConfig(membrane_tissue_od_sum=0.5 * od))
    dropped, _ = membrane_class_map(maps, mpp, StainConfig(membrane_tissue_od_sum=2.0 * od))
    assert (kept > 0).mean() > 0.95 and (dropped == 0).all()


def test_classify_intensity_and_bad_thresholds() -> None:
    v = np.array([0.0, 0.029, 0.03, 0.079, 0.08, 0.2, 1.0])
    assert classify_intensity(v, (0.03, 0.08, 0.2)).tolist() == [0, 0, 1, 1, 2, 3, 3]
    with pytest.raises(UserInputError, match="increase"):
        classify_intensity(v, (0.08, 0.03, 0.2))


def test_count_nuclei_counts_drawn_nuclei() -> None:
    """Nuclei of 7 µm on a 15 µm grid: the blob count is the number drawn (edges aside)."""
    mpp = 0.5
    n_side = 12
    size = int(n_side * 15 / mpp)
    yy, xx = np.mgrid[0:size, 0:size] * mpp
    d2 = ((xx % 15) - 7.5) ** 2 + ((yy % 15) - 7.5) ** 2
    h = np.where(d2 < 3.5**2, 0.3, 0.02).astype(np.float32)
    assert count_nuclei(h, mpp) == n_side * n_side
    tissue = np.zeros(h.shape, bool)
    tissue[: size // 2] = True
    assert count_nuclei(h, mpp, tissue) == n_side * n_side // 2


def test_tile_score_from_blocks_equals_the_pixel_count() -> None:
    """The pipeline counts membrane tiles by blocks; the full class-map count agrees exactly."""
    from her2_qupath.config import CellConfig
    from her2_qupath.pipeline import TileParams, analyse_tile
    from her2_qupath.scoring import score_class_map

    mpp = 0.5
    rgb = _membranes(mpp, 0.13, size_um=100.0)  # 200 px: partial edge blocks
    rgb[:, :60] = np.round(WHITE).astype(np.uint8)
    params = TileParams(StainConfig(membrane_tissue_od_sum=0.04), CellConfig(), "pixel",
                        StainVectors.default(), WHITE, mpp, 0.01)
    fast = analyse_tile(rgb, params).score
    maps = membrane_maps(rgb, StainVectors.default(), WHITE)
    cmap, _ = membrane_class_map(maps, mpp, params.stain)
    full = score_class_map(cmap, dab_od=maps.dab)
    assert fast.pixel_counts == full.pixel_counts and fast.n_pixels == full.n_pixels
    assert fast.dab_od_mean == pytest.approx(full.dab_od_mean, rel=1e-5)
    assert sum(fast.pixel_counts[1:]) > 0 and fast.pixel_counts[0] > 0
