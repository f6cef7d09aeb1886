"""The tile grid P_R(S): counts, coverage, overlap, tissue and ROI filters, reading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, box

from her2_qupath.config import TilingConfig
from her2_qupath.errors import UserInputError
from her2_qupath.tiling import Tile, grid_shape, read_tile, tile_grid
from her2_qupath.tissue import TissueMask


@pytest.mark.parametrize(
    ("dims", "slide_mpp", "mpp", "f"),
    [
        ((2220, 2967), 0.499, 0.5, 512),  # the CMU slide at the paper's setting
        ((2220, 2967), 0.499, 1.0, 256),
        ((100_000, 80_000), 0.25, 0.5, 512),
        ((4096, 1024), 0.5, 0.5, 512),  # exact multiples
        ((300, 200), 0.25, 0.5, 512),  # smaller than one tile
    ],
)
def test_counts_follow_the_paper(dims, slide_mpp, mpp, f):
    grid = tile_grid(dims, slide_mpp, TilingConfig(tile_size=f, mpp=mpp))
    f0 = f * mpp / slide_mpp
    assert grid.n_cols == math.ceil(dims[0] / f0)
    assert grid.n_rows == math.ceil(dims[1] / f0)
    assert len(grid) == grid.n_rows * grid.n_cols
    assert grid.level0_tile_size == pytest.approx(f0)


def test_exact_multiple_has_no_extra_column():
    grid = tile_grid((1024, 1536), 0.25, TilingConfig(tile_size=256, mpp=0.5))
    assert (grid.n_rows, grid.n_cols) == (3, 2)
    assert all(t.image_fraction == 1.0 for t in grid)


def test_tiles_cover_the_slide_without_gaps_or_overlap():
    dims = (2220, 2967)
    grid = tile_grid(dims, 0.499, TilingConfig())
    union = shapely.union_all(grid.polygons())
    image = box(0, 0, *dims)
    assert image.difference(union).area == pytest.approx(0.0, abs=1e-6)
    total = sum(t.polygon.area for t in grid)
    assert total == pytest.approx(union.area, rel=1e-9)  # no overlap
    # row i, column j, in order, at j*f', i*f'
    f0 = grid.level0_tile_size
    t = grid.by_index(2, 3)
    assert (t.row, t.col) == (2, 3)
    assert (t.x, t.y) == pytest.approx((3 * f0, 2 * f0))
    assert t.width == t.height == pytest.approx(f0)
    assert t.size == 512 and t.mpp == 0.5


def test_overlap_is_exact():
    cfg = TilingConfig(tile_size=512, mpp=0.5, overlap=64)
    grid = tile_grid((5000, 3000), 0.25, cfg)
    f0, s0 = 1024.0, 896.0  # (512 - 64) * 2
    assert grid.stride == 448
    assert grid.n_cols == math.ceil((5000 - f0) / s0) + 1
    a, b = grid.by_index(0, 0), grid.by_index(0, 1)
    assert a.polygon.intersection(b.polygon).area == pytest.approx(128 * f0)
    c = grid.by_index(1, 0)
    assert a.polygon.intersection(c.polygon).area == pytest.approx(128 * f0)
    assert box(0, 0, 5000, 3000).difference(
        shapely.union_all(grid.polygons())
    ).area == pytest.approx(0)
    # the last tile still reaches the edge, the one before does not
    last = grid.by_index(0, grid.n_cols - 1)
    assert last.x + last.width >= 5000 > last.x


def test_edge_tiles_are_padded_full_boxes():
    grid = tile_grid((1300, 700), 0.5, TilingConfig(tile_size=512, mpp=0.5))
    assert (grid.n_rows, grid.n_cols) == (2, 3)
    edge = grid.by_index(1, 2)
    assert edge.polygon.area == 512 * 512  # full box, not clipped
    assert edge.image_fraction == pytest.approx((1300 - 1024) * (700 - 512) / 512**2)
    assert grid.by_index(0, 0).image_fraction == 1.0


def test_tissue_filter_against_known_fraction():
    # mask at downsample 16: tissue in the left 40 % of every tile column-block of 32 px
    mask = np.zeros((64, 128), dtype=bool)
    mask[:, :40] = True  # columns 0..39 -> tile col 0 full (32), tile col 1: 8/32 = 0.25
    tm = TissueMask(mask, 16.0, 8.0)
    grid = tile_grid(
        (2048, 1024), 0.5, TilingConfig(tile_size=512, mpp=0.5, min_tissue_fraction=0.2), tissue=tm
    )
    cols = sorted({t.col for t in grid})
    assert cols == [0, 1]
    assert grid.by_index(0, 0).tissue_fraction == pytest.approx(1.0)
    assert grid.by_index(0, 1).tissue_fraction == pytest.approx(0.25)
    strict = tile_grid(
        (2048, 1024), 0.5, TilingConfig(tile_size=512, mpp=0.5, min_tissue_fraction=0.3), tissue=tm
    )
    assert sorted({t.col for t in strict}) == [0]
    with pytest.raises(KeyError, match="row 0, column 2"):
        grid.by_index(0, 2)


def test_tissue_fraction_counts_padding_as_glass():
    mask = np.ones((10, 10), dtype=bool)  # the whole 100x100 image is tissue
    tm = TissueMask(mask, 10.0)
    grid = tile_grid(
        (100, 100), 1.0, TilingConfig(tile_size=64, mpp=1.0, min_tissue_fraction=0.0), tissue=tm
    )
    edge = grid.by_index(1, 1)
    assert edge.tissue_fraction == pytest.approx((36 * 36) / 64**2)
    assert edge.tissue_fraction == pytest.approx(edge.image_fraction)


def test_roi_filter_against_known_overlap():
    cfg = TilingConfig(tile_size=100, mpp=1.0, min_roi_overlap=0.5)
    rois = [box(0, 0, 150, 100), box(160, 0, 400, 100)]  # tile (0,1): 50 % in ROI 0, 40 % in ROI 1
    grid = tile_grid((400, 200), 1.0, cfg, rois=rois)
    kept = {(t.row, t.col): (t.roi_index, t.roi_fraction) for t in grid}
    assert kept[(0, 0)] == (0, pytest.approx(1.0))
    assert kept[(0, 1)] == (0, pytest.approx(0.5))
    assert kept[(0, 2)] == (1, pytest.approx(1.0))
    assert kept[(0, 3)] == (1, pytest.approx(1.0))
    assert all(t.row == 0 for t in grid)
    # a tile overlapping two regions goes to the larger overlap
    grid2 = tile_grid(
        (400, 200), 1.0, TilingConfig(tile_size=100, mpp=1.0, min_roi_overlap=0.3), rois=rois
    )
    assert grid2.by_index(0, 1).roi_index == 0
    rois_swapped = [box(0, 0, 130, 100), box(130, 0, 400, 100)]  # (0,1): 30 % vs 70 %
    assert tile_grid((400, 200), 1.0, cfg, rois=rois_swapped).by_index(0, 1).roi_index == 1


def test_roi_fraction_of_a_disk():
    disk = Point(500, 500).buffer(300, quad_segs=64)
    grid = tile_grid(
        (1000, 1000), 1.0, TilingConfig(tile_size=100, mpp=1.0, min_roi_overlap=0.0), rois=[disk]
    )
    for t in grid:
        assert t.roi_fraction == pytest.approx(t.polygon.intersection(disk).area / 100**2)
    covered = sum(t.roi_fraction * 100**2 for t in grid)
    assert covered == pytest.approx(disk.area)


def test_tissue_and_roi_together():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, :5] = True
    tm = TissueMask(mask, 100.0)
    cfg = TilingConfig(tile_size=100, mpp=1.0, min_tissue_fraction=0.5, min_roi_overlap=0.5)
    grid = tile_grid((1000, 1000), 1.0, cfg, tissue=tm, rois=[box(0, 0, 1000, 300)])
    assert {t.col for t in grid} == set(range(5))
    assert {t.row for t in grid} == {0, 1, 2}
    assert len(grid) == 15


def test_empty_roi_list_keeps_nothing_and_bad_config_raises():
    assert len(tile_grid((1000, 1000), 1.0, TilingConfig(tile_size=100, mpp=1.0), rois=[])) == 0
    with pytest.raises(UserInputError, match="overlap"):
        tile_grid((100, 100), 1.0, TilingConfig(tile_size=64, overlap=64))
    with pytest.raises(UserInputError, match="--mpp"):
        tile_grid((100, 100), 0.0)


@settings(max_examples=50, deadline=None)
@given(
    w=st.integers(1, 20_000),
    h=st.integers(1, 20_000),
    slide_mpp=st.floats(0.1, 2.0),
    f=st.integers(16, 1024),
    overlap_frac=st.floats(0.0, 0.9),
)
def test_grid_always_covers_the_image(w, h, slide_mpp, f, overlap_frac):
    overlap = int(f * overlap_frac)
    f0 = f * 0.5 / slide_mpp
    s0 = (f - overlap) * 0.5 / slide_mpp
    rows, cols = grid_shape((w, h), f0, s0)
    # the last tile reaches the edge and the one before it does not (no surplus tile)
    assert (cols - 1) * s0 + f0 >= w - 1e-6
    assert cols == 1 or (cols - 2) * s0 + f0 < w
    assert (rows - 1) * s0 + f0 >= h - 1e-6
    assert rows == 1 or (rows - 2) * s0 + f0 < h


class _FakeSlide:
    """Stands in for slide.Slide: records the request and returns a gradient."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def read_region_mpp(self, location, size, mpp):
        self.calls.append((location, size, mpp))
        w, h = size
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[...] = (location[0] % 256, location[1] % 256, 7)
        return out


def test_read_tile_delegates_to_slide():
    grid = tile_grid((2220, 2967), 0.499, TilingConfig())
    slide = _FakeSlide()
    tile = grid.by_index(1, 2)
    rgb = read_tile(slide, tile)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    (location, size, mpp) = slide.calls[0]
    assert size == (512, 512) and mpp == 0.5
    assert location == (round(tile.x), round(tile.y))


def test_tile_properties():
    t = Tile(1, 2, 10.0, 20.0, 30.0, 30.0, 64, 0.5)
    assert t.box == (10.0, 20.0, 30.0, 30.0)
    assert t.bounds == (10.0, 20.0, 40.0, 50.0)
    assert t.polygon.equals(box(10, 20, 40, 50))
    assert t.index == (1, 2)
    with pytest.raises(AttributeError):
        t.row = 3  # type: ignore[misc]


@pytest.mark.shared_data
def test_real_cmu_grid_and_padded_edge_tile(shared_data):
    from her2_qupath import slide as slide_mod

    with slide_mod.open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as slide:
        grid = tile_grid(slide.dimensions, slide.mpp, TilingConfig())
        f0 = 512 * 0.5 / slide.mpp
        assert (grid.n_rows, grid.n_cols) == (math.ceil(2967 / f0), math.ceil(2220 / f0)) == (6, 5)
        corner = grid.by_index(5, 4)
        rgb = read_tile(slide, corner)
        inside_x = (2220 - corner.x) / f0 * 512  # working pixels inside the image
        inside_y = (2967 - corner.y) / f0 * 512
        assert corner.image_fraction == pytest.approx(inside_x * inside_y / 512**2)
        assert (rgb[:, int(inside_x) + 2 :] == 255).all()  # padded with white
        assert (rgb[int(inside_y) + 2 :, :] == 255).all()
        assert rgb[: int(inside_y) - 2, : int(inside_x) - 2].mean() < 250  # real pixels


def test_rois_must_be_geometries_and_invalid_ones_are_repaired():
    with pytest.raises(UserInputError, match="ROI 0 is a tuple"):
        tile_grid(
            (400, 400), 1.0, TilingConfig(tile_size=100, mpp=1.0), rois=[(box(0, 0, 1, 1), "x")]
        )
    bowtie = shapely.Polygon([(0, 0), (400, 400), (400, 0), (0, 400)])
    grid = tile_grid(
        (400, 400), 1.0, TilingConfig(tile_size=100, mpp=1.0, min_roi_overlap=1.0), rois=[bowtie]
    )
    # repaired into two triangles meeting at the centre; each fully contains two tiles
    assert {t.index for t in grid} == {(1, 0), (2, 0), (1, 3), (2, 3)}
