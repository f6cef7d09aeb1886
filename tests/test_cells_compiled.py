"""The cell analysis' own routines against the library routines they replace, bit for bit.

Each replacement (compiled loops in ``her2_qupath.cells._compiled`` and
``_compiled_cells``, OpenCV where scikit-image was used) must give the library's
result exactly — the cells, and so the scores, do not change with the speed-up. Random images with plateaus,
ties, flat objects and touching pieces are the known truth here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from her2_qupath.cells.nuclei import _h_maxima_at, _local_peaks


def _smooth(rng: np.random.Generator, shape: tuple[int, int], trial: int) -> np.ndarray:
    """Smooth random float32 image; every third has plateaus and ties."""
    f = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3.0)).astype(np.float32)
    if trial % 3 == 0:
        f = (np.round(f * 25) / 25).astype(np.float32)
    return f


@pytest.mark.parametrize("seed", [0, 1])
def test_local_peaks_match_scikit_image(seed: int) -> None:
    from skimage.feature import peak_local_max

    rng = np.random.default_rng(seed)
    found = 0
    for trial in range(120):
        shape = tuple(int(s) for s in rng.integers(4, 90, 2))
        image = _smooth(rng, shape, trial)
        mask = _smooth(rng, shape, 1) > rng.uniform(0.4, 0.6)
        if trial % 10 == 0:
            image[mask] = 0.5  # a flat object: its isolated pixels are the peaks
        if not mask.any():
            continue
        for distance in (1, 2, 5):
            expected = peak_local_max(image, min_distance=distance, labels=mask.astype(np.int32),
                                      exclude_border=False)
            got = _local_peaks(image, mask, distance)
            assert np.array_equal(got, expected), (trial, distance)
            found += len(got)
    assert found > 1000


@pytest.mark.parametrize("floor", [False, True])
def test_h_maxima_at_every_pixel_matches_scikit_image(floor: bool) -> None:
    """At every pixel, on smooth images, with plateaus, and on a flat floor with pieces above it
    (the nuclei of a tile), in linear and in log scale (as the seeds are judged)."""
    from skimage.morphology import h_maxima

    rng = np.random.default_rng(17 if floor else 3)
    maxima = 0
    for trial in range(40):
        shape = tuple(int(s) for s in rng.integers(3, 70, 2))
        f = _smooth(rng, shape, trial)
        if floor:
            f = np.maximum(f, np.float32(np.quantile(f, rng.uniform(0.6, 0.97))))
            if trial % 4 == 0:
                f = np.log(f + np.float32(0.01)).astype(np.float32)
        h = float(rng.uniform(0.001, 0.2))
        rows, cols = np.indices(shape).reshape(2, -1)
        expected = h_maxima(f, h).astype(bool).ravel()
        got = _h_maxima_at(f, h, rows, cols)
        assert np.array_equal(got, expected), trial
        maxima += int(expected.sum())
    assert maxima > 40


@pytest.mark.parametrize("seed", [0, 1])
def test_flood_matches_scikit_image_watershed(seed: int) -> None:
    from skimage.segmentation import watershed

    from her2_qupath.cells._compiled import flood

    rng = np.random.default_rng(seed)
    for trial in range(100):
        shape = tuple(int(s) for s in rng.integers(3, 90, 2))
        image = _smooth(rng, shape, trial)
        mask = rng.random(shape) < 0.9 if trial % 2 else np.ones(shape, dtype=bool)
        markers = np.zeros(shape, dtype=np.int32)
        k = int(rng.integers(1, 15))
        markers[rng.integers(0, shape[0], k), rng.integers(0, shape[1], k)] = np.arange(1, k + 1)
        markers[~mask] = 0
        expected = watershed(image, markers, mask=mask)
        got = markers.copy()
        flood(image, got, mask)
        assert np.array_equal(got, expected), trial


def test_gaussians_match_scipy() -> None:
    """Smoothing and Laplacian of Gaussian, edges repeated: SciPy's values to the last bit,
    on images smaller and larger than the kernel."""
    from her2_qupath.cells._compiled import gaussian, gaussian_laplace

    rng = np.random.default_rng(8)
    for trial in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 150, 2))
        image = (rng.random(shape) * rng.uniform(0.1, 3.0)).astype(np.float32)
        sigma = float(rng.choice([0.7, 2.0, 4.0, rng.uniform(0.5, 6.0)]))
        assert np.array_equal(gaussian(image, sigma),
                              ndi.gaussian_filter(image, sigma, mode="nearest")), trial
        assert np.array_equal(gaussian_laplace(image, sigma),
                              ndi.gaussian_laplace(image, sigma, mode="nearest")), trial


def test_expansion_matches_scikit_image() -> None:
    """The labels grown by a distance, each pixel to its nearest labelled pixel (SciPy's
    ties), on sparse seeds and touching blobs, with many equidistant pixels."""
    from skimage.segmentation import expand_labels

    from her2_qupath.cells._compiled_cells import expand

    rng = np.random.default_rng(21)
    grown = 0
    for trial in range(120):
        shape = tuple(int(s) for s in rng.integers(1, 90, 2))
        k = int(rng.integers(1, 30))
        labels = np.zeros(shape, dtype=np.int32)
        labels[rng.integers(0, shape[0], k), rng.integers(0, shape[1], k)] = np.arange(1, k + 1)
        if trial % 2:
            labels = ndi.grey_dilation(labels, size=3)
        distance = float(rng.choice([1.0, 2.5, 7.0, 10.0, 200.0]))
        expected = expand_labels(labels, distance)
        assert np.array_equal(expand(labels, distance), expected), trial
        grown += int(np.count_nonzero(expected) - np.count_nonzero(labels))
    assert grown > 10000


def test_fill_small_holes_matches_scipy_labelling() -> None:
    from her2_qupath.cells.nuclei import _fill_small_holes

    rng = np.random.default_rng(4)
    filled = 0
    for trial in range(150):
        shape = tuple(int(s) for s in rng.integers(1, 120, 2))
        mask = _smooth(rng, shape, 1) > rng.uniform(0.45, 0.55)
        limit = int(rng.integers(0, 80))
        holes, n = ndi.label(~mask)  # 4-connected background pieces
        sizes = np.bincount(holes.ravel(), minlength=n + 1)
        edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        fill = sizes <= limit
        fill[0] = False
        fill[edge] = False
        expected = mask | fill[holes]
        got = _fill_small_holes(mask, limit)
        assert np.array_equal(got, expected), trial
        filled += int(np.count_nonzero(got & ~mask))
    assert filled > 100  # holes were filled, not only left alone


def test_compartment_sums_match_bincount() -> None:
    """Counts, float64 sums (same order, so the same bits) and maxima per label, against
    np.bincount and np.maximum.at over the whole images."""
    from her2_qupath.cells._compiled_cells import compartment_sums

    rng = np.random.default_rng(9)
    for trial in range(30):
        shape = tuple(int(s) for s in rng.integers(1, 80, 2))
        n = int(rng.integers(1, 12))
        cells = rng.integers(0, n + 1, shape).astype(np.int32)
        parts = [np.where(rng.random(shape) < 0.4, cells, 0).astype(np.int32) for _ in range(3)]
        hema, dab = (rng.normal(0.3, 0.2, shape).astype(np.float32) for _ in range(2))
        dab[rng.random(shape) < 0.05] = np.float32(-0.0)
        counts, sums, peaks = compartment_sums(cells, *parts, hema, dab, n)
        rows, cols = np.indices(shape)

        def total(labels: np.ndarray, values: np.ndarray, n: int = n) -> np.ndarray:
            return np.bincount(labels.ravel(), weights=values.ravel().astype(np.float64),
                               minlength=n + 1)[1:]

        for j, labels in enumerate([cells, *parts]):
            assert np.array_equal(counts[:, j], np.bincount(labels.ravel(), minlength=n + 1)[1:])
        expected = [total(cells, dab), total(parts[0], hema), total(parts[0], dab),
                    total(parts[1], dab), total(parts[2], dab), total(cells, rows), total(cells, cols),
                    total(parts[0], rows), total(parts[0], cols)]
        assert np.array_equal(sums, np.stack(expected, axis=1)), trial
        for j, labels in enumerate(parts):
            top = np.full(n + 1, -np.inf)
            np.maximum.at(top, labels.ravel(), dab.ravel().astype(np.float64))
            assert np.array_equal(peaks[:, j], top[1:]), trial
            assert np.array_equal(np.signbit(peaks[:, j]), np.signbit(top[1:])), trial


def test_label_runs_match_find_objects_and_the_saddles() -> None:
    from her2_qupath.cells._compiled_outlines import label_runs

    rng = np.random.default_rng(13)
    saddles = 0
    for trial in range(60):
        shape = tuple(int(s) for s in rng.integers(1, 60, 2))
        n = int(rng.integers(1, 20))
        labels = np.where(rng.random(shape) < 0.5, rng.integers(1, n + 4, shape), 0).astype(np.int32)
        boxes, saddle, _, _ = label_runs(labels, n)
        for i, sl in enumerate(ndi.find_objects(labels, max_label=n)):
            want = None if sl is None else [sl[0].start, sl[0].stop, sl[1].start, sl[1].stop]
            if sl is None:
                assert boxes[i, 0] == -1, (trial, i)
            else:
                assert boxes[i].tolist() == want, (trial, i)
        p = np.pad(labels, 1)
        a, b, c, d = p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:]
        expected = set(np.unique(a[(a == d) & (a != 0) & (b != a) & (c != a)]).tolist()) | set(
            np.unique(b[(b == c) & (b != 0) & (a != b) & (d != b)]).tolist())
        assert set(np.flatnonzero(saddle).tolist()) == {k for k in expected if k <= n}, trial
        saddles += len(expected)
    assert saddles > 100


def _sectors_reference(membranes, depth, dab, centres_rc, n, threshold, sectors, bin_px):
    """The ring sectors with NumPy alone (one bincount over (cell, sector, layer))."""
    rr, cc = np.nonzero(membranes)
    lab = membranes[rr, cc].astype(np.int64) - 1
    angle = np.arctan2(rr - centres_rc[lab, 0], cc - centres_rc[lab, 1])
    sector = np.minimum(((angle + np.pi) * (sectors / (2 * np.pi))).astype(np.int64), sectors - 1)
    layer = (depth[rr, cc] / max(bin_px, 1e-6)).astype(np.int64)
    layers = int(layer.max()) + 1 if layer.size else 1
    key = (lab * sectors + sector) * layers + layer
    count = np.bincount(key, minlength=n * sectors * layers)
    total = np.bincount(key, weights=dab[rr, cc], minlength=n * sectors * layers)
    with np.errstate(invalid="ignore", divide="ignore"):
        layer_mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    sector_od = layer_mean.reshape(n, sectors, layers).max(axis=2)
    present = count.reshape(n, sectors, layers).sum(axis=2) > 0
    stained = present & (sector_od >= threshold)
    n_stained = stained.sum(axis=1)
    completeness = n_stained / np.maximum(present.sum(axis=1), 1)
    desc = -np.sort(-np.where(stained, sector_od, -np.inf), axis=1)
    lo, hi = np.maximum(n_stained - 1, 0) // 2, np.minimum(n_stained // 2, sectors - 1)
    median = 0.5 * (desc[np.arange(n), lo] + desc[np.arange(n), hi])
    return completeness, np.where(n_stained > 0, median, 0.0)


def test_ring_sectors_match_the_numpy_reference() -> None:
    from her2_qupath.cells.measure import _membrane_sectors

    rng = np.random.default_rng(31)
    for trial in range(40):
        shape = tuple(int(s) for s in rng.integers(2, 70, 2))
        n = int(rng.integers(1, 9))
        membranes = np.where(rng.random(shape) < 0.3, rng.integers(1, n + 1, shape), 0)
        depth = (rng.random(shape) * 6).astype(np.float32)
        dab = rng.normal(0.3, 0.25, shape).astype(np.float32)
        centres = rng.uniform(0, max(shape), (n, 2))
        for sectors, bin_px in ((36, 1.0), (8, 2.5)):
            args = (membranes, depth, dab, centres, n, 0.25, sectors, bin_px)
            got, want = _membrane_sectors(*args), _sectors_reference(*args)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), trial


def test_nucleus_centroids_are_the_mean_pixel_centres() -> None:
    """detect_cells' centroids: the mean (x, y) of each nucleus's pixel centres."""
    from her2_qupath.cells import cell_compartments
    from her2_qupath.cells.measure import _measure
    from her2_qupath.config import CellConfig, StainConfig

    rng = np.random.default_rng(5)
    nuclei = np.zeros((60, 80), dtype=np.int32)
    for k in range(1, 9):
        r, c = rng.integers(5, 55), rng.integers(5, 75)
        nuclei[r - 3:r + 2, c - 2:c + 4] = k
    n = int(nuclei.max())
    comp = cell_compartments(nuclei, 0.5)
    planes = rng.random((2, 60, 80)).astype(np.float32)
    _, centroids = _measure(planes[0], planes[1], nuclei, comp, 0.5, CellConfig(), StainConfig(),
                            None)
    rows, cols = np.indices(nuclei.shape)
    for k in range(1, n + 1):
        inside = nuclei == k
        if inside.any():
            expected = (cols[inside].mean() + 0.5, rows[inside].mean() + 0.5)
            assert centroids[k - 1] == pytest.approx(expected, abs=1e-12)
        else:
            assert np.isnan(centroids[k - 1]).all()


def test_membrane_band_and_depth_match_scipy_distance() -> None:
    """The band: cell pixels outside the nucleus whose exact distance to the nearest
    inner boundary pixel (SciPy's transform, cast to float32) is below the width, compared
    in float32 as NumPy compares (a distance equal to the width rounded is outside); their
    depth is that distance, every other pixel's +inf."""
    from scipy import ndimage as ndi

    from her2_qupath.cells._compiled_cells import split_band

    rng = np.random.default_rng(12)
    widths = [3.0 / 0.45, 6.0, 2.0 * math.sqrt(2.0), 0.4, 40.0]  # 6.67 is not a float32
    for trial in range(60):
        shape = tuple(int(s) for s in rng.integers(1, 90, 2))
        width = widths[trial % len(widths)]
        cells = np.where(rng.random(shape) < 0.8, rng.integers(1, 9, shape), 0).astype(np.int32)
        nuclei = np.where(rng.random(shape) < 0.3, cells, 0).astype(np.int32)
        inner = rng.random(shape) < [0.0, 0.002, 0.02, 0.3][trial % 4]
        membranes, cytoplasm, depth = split_band(cells, nuclei, inner, np.float32(width))
        exact = (ndi.distance_transform_edt(~inner).astype(np.float32) if inner.any()
                 else np.full(shape, np.inf, np.float32))
        band = (exact < width) & (nuclei == 0) & (cells > 0)
        assert np.array_equal(membranes, np.where(band, cells, 0)), trial
        assert np.array_equal(cytoplasm, np.where(~band & (nuclei == 0), cells, 0)), trial
        assert np.array_equal(depth, np.where(band, exact, np.float32(np.inf))), trial


def test_nucleus_extent_and_area_filter_match_numpy() -> None:
    """Each nucleus cut at a fraction of its own peak contrast, then the plausible areas
    renumbered in order, against the NumPy expressions (float32 as NumPy computes them)."""
    from her2_qupath.cells._compiled import keep_by_area, nucleus_extent

    rng = np.random.default_rng(23)
    for trial in range(40):
        shape = tuple(int(s) for s in rng.integers(2, 70, 2))
        n = int(rng.integers(1, 12))
        labels = np.where(rng.random(shape) < 0.6, rng.integers(1, n + 1, shape), 0).astype(np.int32)
        contrast = rng.random(shape).astype(np.float32)
        fraction, threshold = 0.5, float(rng.uniform(0.05, 0.3))
        peak = np.zeros(n + 1, dtype=np.float32)
        for k in range(1, n + 1):
            if (labels == k).any():
                peak[k] = contrast[labels == k].max()
        expected = (contrast >= np.maximum(fraction * peak[labels], threshold)) & (labels > 0)
        keep = nucleus_extent(labels, contrast, n, np.float32(fraction), np.float32(threshold))
        assert np.array_equal(keep, expected), trial
        kept = np.where(keep, labels, 0)
        area = np.bincount(kept.ravel()) * 0.25
        ok = (area > 0) & (area >= 2.0) & (area <= 20.0)
        ok[0] = False
        renumbered = (np.cumsum(ok, dtype=np.int32) * ok)[kept]
        assert np.array_equal(keep_by_area(labels, keep, 0.25, 2.0, 20.0), renumbered), trial


def test_clipped_channel_matches_numpy() -> None:
    from her2_qupath.cells._compiled import clipped

    rng = np.random.default_rng(3)
    image = rng.normal(0.5, 1.0, (40, 50)).astype(np.float32)
    image[rng.random(image.shape) < 0.05] = np.nan
    image[0, :4] = [np.inf, -np.inf, -0.0, 1.5]
    expected = np.clip(np.nan_to_num(image), 0.0, 1.5)
    got = clipped(image, np.float32(1.5))
    assert np.array_equal(got, expected) and np.array_equal(np.signbit(got), np.signbit(expected))


def test_label_pieces_match_scipy_label() -> None:
    """Each label's 4-connected pieces (first and last pixel, in the order of their first
    pixels), as ``scipy.ndimage.label`` of the label's mask finds them."""
    from her2_qupath.cells._compiled_outlines import label_runs

    rng = np.random.default_rng(31)
    for trial in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 50, 2))
        n = int(rng.integers(1, 6))
        labels = np.where(rng.random(shape) < 0.5, rng.integers(1, n + 2, shape), 0).astype(np.int32)
        _, _, offsets, pieces = label_runs(labels, n)  # labels above n are left out
        for k in range(1, n + 1):
            parts, count = ndi.label(labels == k)
            expected = []
            for j in range(1, count + 1):
                flat = np.flatnonzero(parts.ravel() == j)
                expected.append((int(flat[0]), int(flat[-1])))
            got = [tuple(p) for p in pieces[offsets[k - 1]:offsets[k]].tolist()]
            assert got == sorted(expected), (trial, k)


def test_segment_distance_is_geos_bit_for_bit() -> None:
    """The Douglas-Peucker distance: GEOS's point-to-segment distance (shapely's distance of a
    point to a two-point line), to the last bit, on the half-pixel grid of the outlines."""
    import shapely

    from her2_qupath.cells._compiled_outlines import segment_distance

    rng = np.random.default_rng(5)
    pts = rng.integers(-40, 40, (3000, 6)) * 0.5
    pts[::7, 4:] = pts[::7, 2:4]  # degenerate segments (a ring's closing chord)
    got = np.array([segment_distance(*p) for p in pts.tolist()])
    expected = shapely.distance(shapely.points(pts[:, :2]),
                                shapely.linestrings(pts[:, 2:].reshape(-1, 2, 2)))
    assert np.array_equal(got, expected)


def test_simple_rings_are_the_valid_polygons() -> None:
    """A closed ring on an integer grid is simple exactly when shapely (GEOS) calls its
    polygon valid: random rings with crossings, touching vertices, spikes and collinear
    back-tracks."""
    import shapely

    from her2_qupath.cells._compiled_outlines import is_simple

    rng = np.random.default_rng(9)
    agree = simple = 0
    for trial in range(3000):
        k = int(rng.integers(3, 9))
        ring = rng.integers(0, [4, 5, 8][trial % 3], (k, 2)).astype(np.int64)
        if trial % 5 == 0:  # convex-ish: points around a circle, mostly simple
            a = np.sort(rng.random(k)) * 2 * np.pi
            ring = np.round(np.stack([np.cos(a), np.sin(a)], axis=1) * 9).astype(np.int64)
        ring = np.concatenate([ring, ring[:1]])
        if np.any(np.all(ring[1:] == ring[:-1], axis=1)):
            continue  # repeated points: GEOS drops them, the traced rings have none
        got = is_simple(ring, np.arange(len(ring)))
        assert got == bool(shapely.is_valid(shapely.polygons(ring.astype(float)))), ring.tolist()
        agree += 1
        simple += got
    assert agree > 2000 and 100 < simple < agree - 100, (agree, simple)
