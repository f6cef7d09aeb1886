"""Cell detection and membrane analysis: synthetic tiles with ground truth, and real Ki67 tiles."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from her2_qupath.cells import (
    MEASUREMENTS,
    classify_cells,
    detect_cells,
    detect_nuclei,
    nucleus_channel,
)
from her2_qupath.config import CellConfig, StainConfig
from her2_qupath.errors import UserInputError
from her2_qupath.synthetic import render_stains

#: The synthetic cells here are drawn in DAB OD against QuPath's 0.2/0.4/0.6 thresholds:
#: they test the "od" grading; the membrane line-density grading has its own tests.
OD = StainConfig(intensity="od")


WHITE = (255.0, 255.0, 255.0)
MEMBRANE_UM = 1.5  # width of the drawn membranes


# ----------------------------------------------------------------------------- synthetic tiles


def render(
    h_od: np.ndarray, dab_od: np.ndarray, *, noise: float = 1.5, seed: int = 0
) -> np.ndarray:
    """Beer-Lambert: RGB of a white-lit section holding the given H and DAB amounts."""
    return render_stains(h_od, dab_od, noise=noise, rng=np.random.default_rng(seed))


@dataclasses.dataclass(frozen=True)
class Design:
    """One drawn cell: membrane DAB OD, arc fraction (completeness) and expected class."""

    dab: float
    fraction: float
    expected: int


# faint = 0.3 (between the 1+ and 2+ thresholds), moderate = 0.5, strong = 0.9 (above 3+)
DESIGNS = [
    Design(0.0, 0.0, 0),  # no membrane staining
    Design(0.3, 0.25, 1),  # faint, incomplete
    Design(0.3, 0.60, 1),  # faint, incomplete
    Design(0.3, 1.00, 1),  # faint, complete: still faint
    Design(0.5, 0.60, 1),  # moderate but incomplete
    Design(0.5, 1.00, 2),  # weak-moderate, complete
    Design(0.9, 0.25, 1),  # strong but only a quarter of the ring
    Design(0.9, 0.60, 2),  # strong, incomplete (more than half)
    Design(0.9, 1.00, 3),  # strong, complete
]


def draw_cells(
    designs: list[Design],
    mpp: float,
    *,
    nucleus_um: float = 3.0,
    spacing_um: float = 22.0,
    config: CellConfig = CellConfig(),  # noqa: B008
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A tile of isolated cells in a grid; returns (rgb, centres (n, 2) as (x, y) in QuPath px).

    Nuclei are discs of hematoxylin OD 0.6, the cell (nucleus grown by
    ``config.expansion_um``) holds a light hematoxylin OD 0.05 (cytoplasm), and
    the membrane is the outer ``MEMBRANE_UM`` (1.5 µm) band of the cell,
    stained with DAB over an arc of the given fraction starting at a random angle.
    """
    rng = np.random.default_rng(seed)
    cols = 3
    rows = math.ceil(len(designs) / cols)
    step = spacing_um / mpp
    size_r = int(math.ceil(rows * step))
    size_c = int(math.ceil(cols * step))
    yy, xx = np.mgrid[0:size_r, 0:size_c].astype(np.float64)
    h = np.zeros((size_r, size_c))
    d = np.zeros((size_r, size_c))
    r_nuc = nucleus_um / mpp
    r_cell = (nucleus_um + config.expansion_um) / mpp
    width = MEMBRANE_UM / mpp
    centres = []
    for k, design in enumerate(designs):
        cy = (k // cols + 0.5) * step
        cx = (k % cols + 0.5) * step
        # pixel (r, c) has its centre at (c + 0.5, r + 0.5) in QuPath coordinates
        dy, dx = yy - cy, xx - cx
        rad = np.hypot(dy, dx)
        h[rad <= r_cell] = 0.05
        h[rad <= r_nuc] = 0.6
        if design.fraction > 0:
            start = rng.uniform(-np.pi, np.pi)
            rel = np.mod(np.arctan2(dy, dx) - start, 2 * np.pi)
            arc = rel <= 2 * np.pi * design.fraction
            band = (rad > r_cell - width) & (rad <= r_cell + 0.5)
            d[band & arc] = design.dab
        centres.append((cx + 0.5, cy + 0.5))
    return render(h, d, seed=seed), np.asarray(centres)


def _match(found: np.ndarray, truth: np.ndarray, radius: float) -> np.ndarray:
    """Index of the found point nearest each true point, -1 when none lies within radius."""
    out = np.full(len(truth), -1)
    if len(found) == 0:
        return out
    for j, t in enumerate(truth):
        dist = np.hypot(*(found - t).T)
        i = int(np.argmin(dist))
        if dist[i] <= radius:
            out[j] = i
    return out


@pytest.fixture(scope="module")
def designed() -> tuple:
    mpp = 0.5
    rgb, centres = draw_cells(DESIGNS, mpp)
    result = detect_cells(rgb, mpp, stain=OD, background=WHITE)
    return rgb, centres, result, mpp


# ----------------------------------------------------------------------------- synthetic tests


def test_every_drawn_nucleus_is_found_once(designed) -> None:
    _, centres, result, mpp = designed
    assert len(result) == len(DESIGNS)
    idx = _match(result.centroids, centres, radius=1.0 / mpp)
    assert (idx >= 0).all() and len(set(idx.tolist())) == len(DESIGNS)
    area = result.measurements["Nucleus: Area µm^2"][idx]
    assert np.allclose(area, math.pi * 3.0**2, rtol=0.15)


def test_membrane_completeness_and_intensity_are_recovered(designed) -> None:
    _, centres, result, mpp = designed
    idx = _match(result.centroids, centres, radius=1.0 / mpp)
    comp = result.measurements["Membrane: completeness"][idx]
    stained = result.measurements["Membrane: stained DAB OD"][idx]
    for design, c, s in zip(DESIGNS, comp, stained, strict=True):
        assert abs(c - design.fraction) <= 0.1, (design, c)
        if design.fraction > 0:
            assert abs(s - design.dab) <= 0.05, (design, s)
    # the ring's plain mean is the drawn OD diluted by the unstained part of the ring
    ring_mean = result.measurements["Membrane: DAB OD mean"][idx]
    ring_max = result.measurements["Membrane: DAB OD max"][idx]
    for design, mean, peak in zip(DESIGNS, ring_mean, ring_max, strict=True):
        assert mean <= design.dab * min(1.0, design.fraction + 0.1) + 0.02
        assert abs(peak - design.dab) <= 0.06
    assert np.all(np.abs(result.measurements["Nucleus: DAB OD mean"]) < 0.03)
    assert np.allclose(result.measurements["Nucleus: Hematoxylin OD mean"], 0.6, atol=0.08)


def test_cells_are_classified_as_designed(designed) -> None:
    _, centres, result, mpp = designed
    idx = _match(result.centroids, centres, radius=1.0 / mpp)
    got = result.classes[idx].tolist()
    assert got == [d.expected for d in DESIGNS]
    assert [result.cells[i].classification for i in idx] == [
        ("HER2 0", "HER2 1+", "HER2 2+", "HER2 3+")[d.expected] for d in DESIGNS
    ]
    counts = result.class_counts()
    assert counts.tolist() == np.bincount([d.expected for d in DESIGNS], minlength=4).tolist()


def test_measurements_and_outlines_are_consistent(designed) -> None:
    _, centres, result, mpp = designed
    n = len(result)
    assert list(result.measurements) == list(MEASUREMENTS)
    assert all(v.shape == (n,) for v in result.measurements.values())
    for k, cell in enumerate(result.cells):
        assert cell.id == k + 1
        nuc, whole = cell.nucleus_polygon, cell.cell_polygon
        assert nuc.is_valid and whole.is_valid and nuc.area > 0
        # outline areas agree with the pixel counts, the nucleus lies in its cell
        px = mpp * mpp
        assert nuc.area * px == pytest.approx(cell.measurements["Nucleus: Area µm^2"], rel=0.15)
        assert whole.area * px == pytest.approx(cell.measurements["Cell: Area µm^2"], rel=0.1)
        assert whole.buffer(1.0).contains(nuc)
        from shapely.geometry import Point

        assert nuc.contains(Point(*cell.centroid))
    # isolated cells: the nucleus grown by exactly the expansion distance
    r_nuc = np.sqrt(result.measurements["Nucleus: Area µm^2"] / math.pi)
    grown = math.pi * (r_nuc + CellConfig().expansion_um) ** 2
    assert np.allclose(result.measurements["Cell: Area µm^2"], grown, rtol=0.05)


def test_same_cells_at_another_magnification() -> None:
    """Parameters are in micrometres: the same cells drawn at 0.25 µm/px give the same answer."""
    designs = [DESIGNS[0], DESIGNS[1], DESIGNS[5], DESIGNS[8]]
    mpp = 0.25
    rgb, centres = draw_cells(designs, mpp, seed=3)
    result = detect_cells(rgb, mpp, stain=OD, background=WHITE)
    idx = _match(result.centroids, centres, radius=1.0 / mpp)
    assert (idx >= 0).all()
    assert result.classes[idx].tolist() == [d.expected for d in designs]
    assert np.allclose(result.measurements["Nucleus: Area µm^2"][idx], math.pi * 9.0, rtol=0.15)


def test_touching_nuclei_are_split() -> None:
    mpp = 0.5
    yy, xx = np.mgrid[0:80, 0:100].astype(np.float64)
    truth = np.array([(40.0, 40.0), (51.0, 40.0), (70.0, 44.0)])  # (x, y) pixel-centre coords
    h = np.zeros(yy.shape)
    for x, y in truth:
        h[np.hypot(xx - x, yy - y) <= 6.5] = 0.6
    rgb = render(h, np.zeros_like(h))
    labels = detect_nuclei(nucleus_channel(_deconv(rgb)), mpp)
    assert labels.max() == 3
    from scipy import ndimage as ndi

    found = np.array(ndi.center_of_mass(labels > 0, labels, range(1, 4)))[:, ::-1]
    idx = _match(found, truth, radius=2.0)
    assert (idx >= 0).all() and len(set(idx.tolist())) == 3


@pytest.mark.parametrize("mpp", [0.25, 0.5])
@pytest.mark.parametrize(
    ("semi_axes_um", "n_touching"), [((5.0, 5.0), 1), ((6.0, 4.5), 1), ((3.5, 3.5), 2)]
)
def test_large_pale_nucleus_gives_one_seed(
    mpp: float, semi_axes_um: tuple[float, float], n_touching: int
) -> None:
    """A large pale nucleus (10-12 µm, OD 0.25) is one nucleus; two touching small ones stay two.

    The scale-2 µm Laplacian of Gaussian of a flat nucleus larger than its scale
    peaks near the rim, giving several seeds for one nucleus; the relative-dip
    criterion (``split_min_dip``) merges them, since the ridge between them
    hardly dips, while two touching nuclei (here with ``n_touching=2``, discs of
    radius 3.5 µm whose centres are 7 µm apart, OD 0.5) are separated by a valley.
    """
    yy, xx = (np.mgrid[0 : int(60 / mpp), 0 : int(60 / mpp)] + 0.5) * mpp
    a, b = semi_axes_um
    od = np.zeros(yy.shape)
    centres = [(30.0, 30.0)] if n_touching == 1 else [(26.5, 30.0), (33.5, 30.0)]
    value = 0.25 if n_touching == 1 else 0.5
    for cx, cy in centres:
        od[((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1] = value
    od += np.random.default_rng(0).normal(0.0, 0.02, od.shape)
    assert detect_nuclei(od, mpp).max() == n_touching
    if n_touching == 1:  # without the criterion the LoG maxima split it
        assert detect_nuclei(od, mpp, CellConfig(split_min_dip=0.0)).max() >= 2


def _deconv(rgb: np.ndarray) -> np.ndarray:
    from her2_qupath.stain import deconvolve

    return deconvolve(rgb, None, WHITE)


def test_nucleus_channel_choice_for_nuclear_stains() -> None:
    """A brown (DAB) nucleus is a nucleus only when the channel includes DAB (Ki67 setting)."""
    mpp = 0.5
    yy, xx = np.mgrid[0:60, 0:100].astype(np.float64)
    h = np.where(np.hypot(xx - 25, yy - 30) <= 7, 0.5, 0.0)
    d = np.where(np.hypot(xx - 70, yy - 30) <= 7, 0.8, 0.0)
    rgb = render(h, d)
    blue_only = detect_cells(rgb, mpp, stain=OD, background=WHITE)
    both = detect_cells(rgb, mpp, CellConfig(nucleus_channel="hematoxylin+dab"), OD, background=WHITE)
    assert len(blue_only) == 1 and abs(blue_only.centroids[0, 0] - 25.5) < 1.5
    assert len(both) == 2
    dab_mean = both.measurements["Nucleus: DAB OD mean"]
    assert sorted(np.round(dab_mean, 1).tolist()) == [0.0, 0.8]


def test_blank_tile_has_no_cells() -> None:
    rgb = np.full((64, 64, 3), 250, dtype=np.uint8)
    result = detect_cells(rgb, 0.5, stain=OD, background=WHITE)
    assert len(result) == 0 and result.classes.shape == (0,)
    assert all(v.shape == (0,) for v in result.measurements.values())
    assert result.class_counts().tolist() == [0, 0, 0, 0]


def test_class_rule_is_monotone_in_intensity_and_completeness() -> None:
    """More DAB or a more complete ring never lowers a cell's class."""
    inten = np.linspace(0.0, 1.2, 61)
    comp = np.linspace(0.0, 1.0, 41)
    ii, cc = np.meshgrid(inten, comp, indexing="ij")
    cls = classify_cells(
        {"Membrane: stained DAB OD": ii.ravel(), "Membrane: completeness": cc.ravel()}, stain=OD
    ).reshape(ii.shape)
    assert (np.diff(cls.astype(int), axis=0) >= 0).all()
    assert (np.diff(cls.astype(int), axis=1) >= 0).all()
    # the corners: nothing -> 0, strong complete -> 3+, faint partial -> 1+
    assert cls[0, 0] == 0 and cls[-1, -1] == 3
    assert classify_cells(
        {"Membrane: stained DAB OD": np.array([0.25]), "Membrane: completeness": np.array([0.3])},
        stain=OD,
    ).tolist() == [1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mpp": 0.0}, "pixel size"),
        ({"mpp": float("nan")}, "pixel size"),
        ({"rgb": np.zeros((8, 8), np.uint8)}, "RGB"),
        ({"rgb": np.zeros((8, 8, 3), np.float32)}, "RGB"),
        ({"config": CellConfig(nucleus_channel="dab")}, "nucleus_channel"),  # type: ignore[arg-type]
        ({"config": CellConfig(complete_fraction=1.5)}, "complete_fraction"),
        ({"config": CellConfig(split_min_dip=1.0)}, "split_min_dip"),
        ({"stain": StainConfig(thresholds=(0.6, 0.4, 0.2))}, "thresholds"),
    ],
)
def test_bad_input_is_refused_with_a_fix(kwargs: dict, message: str) -> None:
    args = {"rgb": np.full((32, 32, 3), 255, np.uint8), "mpp": 0.5} | kwargs
    rgb, mpp = args.pop("rgb"), args.pop("mpp")
    with pytest.raises(UserInputError, match=message):
        detect_cells(rgb, mpp, **args)


def test_real_ihc_image_runs_and_is_deterministic() -> None:
    """skimage's FHL2 IHC image: many cells, sane sizes, the same answer twice."""
    from skimage.data import immunohistochemistry

    rgb = immunohistochemistry()
    a = detect_cells(rgb, 0.5)
    b = detect_cells(rgb, 0.5)
    assert 100 < len(a) < 2000  # (nucleus sizes are checked against drawn nuclei above)
    assert np.array_equal(a.nucleus_labels, b.nucleus_labels)
    assert np.array_equal(a.classes, b.classes)
    # brown cells (high DAB around the nucleus) are classed above the blue ones
    cell_dab = a.measurements["Membrane: DAB OD mean"]
    assert np.nanmean(cell_dab[a.classes >= 2]) > np.nanmean(cell_dab[a.classes == 0])


# ----------------------------------------------------------------------------- real Ki67 tiles


def ground_truth_nuclei(path: Path, min_px: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (x, y) and positivity of the nuclei of a DeepLIIF ground-truth image.

    Red fill = DAB-positive nucleus, blue fill = negative (green boundaries and
    black background ignored). Each connected component of red, and of blue,
    is one nucleus; components under ``min_px`` pixels are annotation specks.
    """
    from scipy import ndimage as ndi
    from skimage.io import imread

    g = imread(path)[..., :3].astype(np.int16)
    red = (g[..., 0] > 128) & (g[..., 1] < 100) & (g[..., 2] < 100)
    blue = (g[..., 2] > 128) & (g[..., 0] < 100) & (g[..., 1] < 100)
    pts, pos = [], []
    for mask, positive in ((red, True), (blue, False)):
        lab, n = ndi.label(mask)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        keep = np.nonzero(sizes >= min_px)[0] + 1
        com = np.array(ndi.center_of_mass(mask, lab, keep)).reshape(-1, 2)
        pts.append(com[:, ::-1] + 0.5)  # (x, y) in the same convention as the detector
        pos.append(np.full(len(keep), positive))
    return np.concatenate(pts), np.concatenate(pos)


def annotated_distance(path: Path) -> np.ndarray:
    """Distance (pixels) of every pixel to the nearest annotated pixel of any colour.

    Annotated = red or blue fill or green boundary of a DeepLIIF ground-truth
    image; black is unannotated background.
    """
    from scipy import ndimage as ndi
    from skimage.io import imread

    g = imread(path)[..., :3].astype(np.int16)
    red = (g[..., 0] > 128) & (g[..., 1] < 100) & (g[..., 2] < 100)
    blue = (g[..., 2] > 128) & (g[..., 0] < 100) & (g[..., 1] < 100)
    green = (g[..., 1] > 128) & (g[..., 0] < 100) & (g[..., 2] < 100)
    return ndi.distance_transform_edt(~(red | blue | green))


def match_one_to_one(found: np.ndarray, truth: np.ndarray, radius: float) -> np.ndarray:
    """Optimal one-to-one pairs (i_found, j_truth) within ``radius`` (Hungarian assignment)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if len(found) == 0 or len(truth) == 0:
        return np.zeros((0, 2), dtype=int)
    dist = cdist(found, truth)
    cost = np.where(dist <= radius, dist, 1e6)
    i, j = linear_sum_assignment(cost)
    ok = dist[i, j] <= radius
    return np.column_stack([i[ok], j[ok]])


KI67_MPP = 0.25  # nuclei 20-30 px across: 40x scanning
MATCH_RADIUS_PX = 6.0
UNANNOTATED_PX = 20.0  # detections this far from any annotation lie in unannotated tissue


@pytest.mark.shared_data
@pytest.mark.parametrize("downsample", [1, 2], ids=["0.25um", "0.5um"])
def test_nucleus_detection_on_real_ki67_ground_truth(shared_data: Path, downsample: int) -> None:
    """Detection precision/recall/F1 and positive/negative agreement on the DeepLIIF Ki67 tiles.

    Ki67 is a nuclear stain, so the nucleus channel includes DAB
    (``nucleus_channel="hematoxylin+dab"``). A detected nucleus is positive
    when its mean DAB OD reaches the 1+ threshold (0.2, QuPath's default
    positive-cell threshold on "Nucleus: DAB OD mean"). The tiles are analysed
    as scanned (0.25 µm/px) and 2x downsampled to the pipeline's working
    resolution (0.5 µm/px); centroids are compared at full resolution.
    """
    from skimage.io import imread
    from skimage.transform import downscale_local_mean

    tiles = sorted((shared_data / "ihc" / "ki67").glob("*.groundtruth.png"))
    if not tiles:
        pytest.skip("no Ki67 ground truth in the shared data")
    config = CellConfig(nucleus_channel="hematoxylin+dab")
    threshold = StainConfig().thresholds[0]
    tp = n_found = n_truth = agree = n_inside = 0
    per_tile = {}
    for gt_path in tiles:
        rgb = imread(gt_path.with_name(gt_path.name.replace(".groundtruth", "")))[..., :3]
        if downsample > 1:
            rgb = downscale_local_mean(rgb.astype(np.float64), (downsample, downsample, 1))
            rgb = np.round(rgb).astype(np.uint8)
        truth, positive = ground_truth_nuclei(gt_path)
        result = detect_cells(rgb, KI67_MPP * downsample, config)
        pairs = match_one_to_one(result.centroids * downsample, truth, MATCH_RADIUS_PX)
        called = result.measurements["Nucleus: DAB OD mean"][pairs[:, 0]] >= threshold
        # Secondary figure: detections far from any annotated object (of any colour) lie where
        # the annotator drew nothing; a matched detection is never among them.
        far = annotated_distance(gt_path)
        rc = np.clip((result.centroids * downsample).astype(int), 0, np.array(far.shape[::-1]) - 1)
        inside = int((far[rc[:, 1], rc[:, 0]] <= UNANNOTATED_PX).sum())
        n_inside += inside
        tile_agree = int((called == positive[pairs[:, 1]]).sum())
        p, r = len(pairs) / max(len(result), 1), len(pairs) / len(truth)
        per_tile[gt_path.name] = (
            p,
            r,
            2 * p * r / max(p + r, 1e-9),
            tile_agree / max(len(pairs), 1),
            len(pairs) / max(inside, 1),
        )
        tp += len(pairs)
        n_found += len(result)
        n_truth += len(truth)
        agree += tile_agree
    precision, recall = tp / n_found, tp / n_truth
    f1 = 2 * precision * recall / (precision + recall)
    agreement = agree / tp
    precision_annotated = tp / max(n_inside, 1)
    print(
        f"\nKi67 nuclei at {KI67_MPP * downsample} µm/px: P={precision:.3f} R={recall:.3f} F1={f1:.3f} pos/neg agreement={agreement:.3f} P(annotated areas)={precision_annotated:.3f}"
    )
    for name, (p, r, f, a, pa) in per_tile.items():
        print(
            f"  {name}: P={p:.3f} R={r:.3f} F1={f:.3f} agreement={a:.3f} P(annotated areas)={pa:.3f}"
        )
    # Thresholds (see docs/cells.md), the measured values less 0.01-0.02 (the detector is
    # deterministic): pooled F1 >= 0.70 (measured 0.718/0.719 at 0.25/0.5 µm/px), precision
    # >= 0.67 (0.685/0.687), recall >= 0.735 (0.754); F1 >= 0.765 on 22_2 (0.782), the tile
    # whose annotation is complete; 34_3 leaves nuclei unannotated, which caps its precision.
    # Precision over detections within UNANNOTATED_PX of an annotated object >= 0.71
    # (0.727/0.730). Positive/negative calls of matched nuclei agree >= 98 % (99.4 %).
    assert f1 >= 0.70 and precision >= 0.67 and recall >= 0.735
    if "22_2.groundtruth.png" in per_tile:
        assert per_tile["22_2.groundtruth.png"][2] >= 0.765
    assert precision_annotated >= 0.71
    assert agreement >= 0.98


def draw_sheet(dab: float, mpp: float = 0.5, *, spacing_um: float = 11.0, seed: int = 0):
    """A 4 x 4 sheet of touching cells whose shared membranes (1 µm wide) carry ``dab`` OD.

    Cells are the Voronoi regions of the nuclei, limited to nucleus radius +
    expansion (as the detector grows them); the membrane is drawn on every
    cell boundary (shared ones and the sheet's outer edge). Returns (rgb, centres (n, 2) as (x, y)).
    """
    cfg = CellConfig()
    step = spacing_um / mpp
    n = 4
    size = int(math.ceil((n + 1) * step))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centres = np.array([((i + 1) * step, (j + 1) * step) for j in range(n) for i in range(n)])
    dist = np.stack([np.hypot(xx - cx, yy - cy) for cx, cy in centres])
    nearest = dist.argmin(axis=0)
    d1 = dist.min(axis=0)
    r_nuc = 3.0 / mpp
    r_cell = (3.0 + cfg.expansion_um) / mpp
    labels = np.where(d1 <= r_cell, nearest + 1, 0)
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        diff = np.diff(labels, axis=axis) != 0
        sl_a = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        sl_b = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        edge[sl_a] |= diff
        edge[sl_b] |= diff
    membrane = edge & (labels > 0)  # two pixels across each shared boundary: 1 µm at 0.5 µm/px
    h = np.where(labels > 0, 0.05, 0.0)
    h[d1 <= r_nuc] = 0.6
    d = np.where(membrane, dab, 0.0)
    return render(h, d, seed=seed), centres + 0.5


@pytest.mark.parametrize(("dab", "expected"), [(0.3, 1), (0.5, 2), (0.9, 3)])
def test_touching_cells_with_shared_membranes(dab: float, expected: int) -> None:
    """Complete membranes shared by neighbouring cells: each cell is 1+/2+/3+ by intensity."""
    mpp = 0.5
    rgb, centres = draw_sheet(dab, mpp)
    result = detect_cells(rgb, mpp, stain=OD, background=WHITE)
    idx = _match(result.centroids, centres, radius=1.0 / mpp)
    assert (idx >= 0).all() and len(result) == len(centres)
    # the four inner cells are surrounded by neighbours: complete shared membranes
    inner = idx[[5, 6, 9, 10]]
    assert result.measurements["Membrane: completeness"][inner].min() >= 0.9
    assert np.allclose(result.measurements["Membrane: stained DAB OD"][inner], dab, atol=0.06)
    assert result.classes[inner].tolist() == [expected] * 4
    # cells on the sheet's edge have stained shared sides only: never above the inner class
    outer = np.setdiff1d(idx, inner)
    assert result.measurements["Membrane: completeness"][outer].min() >= 0.4
    assert result.classes[outer].max() <= expected


def test_more_dab_never_lowers_a_cell_class() -> None:
    """The same cells with every membrane darker: no cell's class goes down."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    mpp = 0.5
    base_rgb, centres = draw_cells(DESIGNS, mpp, seed=5)
    base = detect_cells(base_rgb, mpp, stain=OD, background=WHITE)
    base_cls = base.classes[_match(base.centroids, centres, radius=2.0)]

    @settings(max_examples=6, deadline=None, derandomize=True)
    @given(st.floats(min_value=1.0, max_value=2.5))
    def check(scale: float) -> None:
        darker = [dataclasses.replace(d, dab=d.dab * scale) for d in DESIGNS]
        rgb, _ = draw_cells(darker, mpp, seed=5)
        result = detect_cells(rgb, mpp, stain=OD, background=WHITE)
        idx = _match(result.centroids, centres, radius=2.0)
        assert (idx >= 0).all()
        assert (result.classes[idx] >= base_cls).all()

    check()


def test_cell_objects_carry_finite_measurements_only(designed) -> None:
    _, _, result, _ = designed
    for cell in result.cells:
        assert set(cell.measurements) <= set(MEASUREMENTS)
        assert all(math.isfinite(v) for v in cell.measurements.values())
        assert "Membrane: completeness" in cell.measurements
        assert cell.classification == ("HER2 0", "HER2 1+", "HER2 2+", "HER2 3+")[cell.her2_class]


def test_product_synthetic_slide_cells_recovered() -> None:
    """The product's own synthetic IHC (``her2_qupath.synthetic``): cells and classes come back.

    Its cells are isolated (stroma between them) and smaller than the default
    expansion, so the drawn membrane lies inside the cell band rather than on
    the boundary. Rings cut by the tissue edge are drawn incomplete although
    the generator's truth keeps the requested completeness; those cells are
    scored separately.
    """
    from her2_qupath.synthetic import synthetic_ihc

    mpp = 0.5
    regions = ({"0": 25.0, "1+": 25.0, "2+": 25.0, "3+": 25.0},)
    rgb, _, _, truth = synthetic_ihc((512, 512), seed=2, mpp=mpp, regions=regions)
    cells = truth["cells"]
    xy = np.column_stack([cells["x"], cells["y"]]) + 0.5
    result = detect_cells(rgb, mpp, stain=OD, background=truth["background"])
    pairs = match_one_to_one(result.centroids, xy, radius=2.0 / mpp)
    assert len(pairs) >= 0.98 * len(xy) and len(pairs) >= 0.98 * len(result)

    tissue = truth["tissue_mask"]
    ang = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    rad = cells["cell_radius"][:, None] + 1.0
    px = np.clip(
        np.round(cells["x"][:, None] + rad * np.cos(ang)).astype(int), 0, tissue.shape[1] - 1
    )
    py = np.clip(
        np.round(cells["y"][:, None] + rad * np.sin(ang)).astype(int), 0, tissue.shape[0] - 1
    )
    whole_ring = tissue[py, px].all(axis=1)[pairs[:, 1]]
    want = cells["her2_class"][pairs[:, 1]]
    got = result.classes[pairs[:, 0]]
    assert whole_ring.sum() >= 50
    assert np.mean(got[whole_ring] == want[whole_ring]) >= 0.99
    assert np.mean(got == want) >= 0.95
    # class percentages over all matched cells within 3 points of the truth
    pct_got = 100 * np.bincount(got, minlength=4) / len(got)
    pct_want = 100 * np.bincount(want, minlength=4) / len(want)
    assert np.abs(pct_got - pct_want).max() <= 3.0


# ----------------------------------------------------------------------------- fast paths


def _random_labels(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Touching blobs (watershed of noise): holes, several pieces and corner contacts occur."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    field = ndi.gaussian_filter(rng.random(shape), 2.0)
    markers = np.zeros(shape, dtype=np.int32)
    k = max(2, shape[0] * shape[1] // 150)
    markers[rng.integers(0, shape[0], k), rng.integers(0, shape[1], k)] = np.arange(1, k + 1)
    labels = watershed(field, markers).astype(np.int32)
    labels[rng.random(shape) < 0.08] = 0  # speckle: holes, split pieces, saddles
    labels[field < np.quantile(field, 0.15)] = 0
    return labels


def _reference_outline(labels: np.ndarray, i: int, tolerance: float):
    """Marching squares (scikit-image) on the padded mask, largest contour, Douglas-Peucker."""
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    mask = np.pad(labels == i, 1).astype(np.float32)
    best = None
    for contour in find_contours(mask, 0.5):
        poly = Polygon(contour[:, ::-1] - 1.0 + 0.5)
        if not poly.is_valid:
            continue
        if best is None or poly.area > best.area:
            best = poly
    if best is None or tolerance <= 0:
        return best
    simple = best.simplify(tolerance, preserve_topology=False)
    ok = simple.geom_type == "Polygon" and not simple.is_empty and simple.is_valid
    return simple if ok else best


def test_outlines_match_marching_squares_vertex_for_vertex() -> None:
    """The compiled tracer gives scikit-image's contour (same vertices, start and
    orientation) and the compiled Douglas-Peucker GEOS's simplification, bit for bit:
    at four tolerances, on touching blobs with holes, several pieces and corner contacts.
    Each kind of outline occurs: simplified by the compiled loops, left to GEOS (the
    simplified ring is not simple, or collapses), traced by scikit-image (saddles)."""
    import shapely
    from scipy import ndimage as ndi

    from her2_qupath.cells import label_polygons
    from her2_qupath.cells._compiled_outlines import label_runs, outline_rings
    from her2_qupath.cells.outlines import label_outlines

    rng = np.random.default_rng(7)
    compared = several = 0
    kinds = np.zeros(4, dtype=np.int64)
    for trial in range(24):
        shape = (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
        labels = _random_labels(rng, shape)
        n = int(labels.max())
        saddle = label_runs(labels, n)[1]
        for tolerance in (0.0, 0.5, 1.0, 2.0, 3.0):
            outlines = label_outlines(labels, n, tolerance=tolerance)
            polys = label_polygons(labels, tolerance=tolerance)
            assert [p.wkt for p in polys] == [p.wkt for p in outlines]
            kinds += np.bincount(outline_rings(labels, n, tolerance)[2], minlength=4)
            # marked valid: shapely agrees
            assert not np.any(outlines.valid & ~shapely.is_valid(outlines.geometries()))
            for i in np.unique(labels[labels > 0]).tolist():
                ref = _reference_outline(labels, i, tolerance)
                if ref is None or saddle[i]:
                    continue
                got = polys[i - 1]
                assert list(got.exterior.coords) == list(ref.exterior.coords), (trial, i, tolerance)
                compared += 1
                several += tolerance == 0 and ndi.label(labels == i)[1] > 1
    assert compared > 1500 and several > 5, (compared, several)
    assert np.all(kinds[1:] > 50), kinds  # final, left to GEOS, saddles
    # pieces: two equal squares (the first in row-major order wins), the larger piece
    # last, a piece in the hole of a ring of the same label
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[20:24, 2:6] = labels[3:7, 30:34] = 1
    labels[2:4, 2:4] = 2
    labels[10:16, 20:27] = 2
    labels[8:19, 8:19] = 3
    labels[10:17, 10:17] = 0
    labels[12:15, 12:15] = 3
    for tolerance in (0.0, 0.5):
        polys = label_polygons(labels, tolerance=tolerance)
        for i in (1, 2, 3):
            ref = _reference_outline(labels, i, tolerance)
            assert list(polys[i - 1].exterior.coords) == list(ref.exterior.coords), (i, tolerance)
    assert polys[0].bounds == (30.0, 3.0, 34.0, 7.0)


def test_opencv_openings_match_scipy() -> None:
    from scipy import ndimage as ndi

    from her2_qupath.cells.nuclei import _binary_opening, _disk, _grey_opening

    rng = np.random.default_rng(5)
    image = ndi.gaussian_filter(rng.random((57, 83)), 1.5).astype(np.float32)
    mask = image > np.median(image)
    expected = ndi.maximum_filter(
        ndi.minimum_filter(image, size=9, mode="nearest"), size=9, mode="nearest"
    )
    assert np.array_equal(_grey_opening(image, 9), expected)
    for r in (1, 2, 3.5):
        disk = _disk(r)
        assert np.array_equal(_binary_opening(mask, disk), ndi.binary_opening(mask, structure=disk))


def test_without_polygons_the_cells_are_the_same(designed) -> None:
    rgb, _, result, mpp = designed
    bare = detect_cells(rgb, mpp, stain=OD, background=WHITE, polygons=False)
    assert len(bare) == len(result) > 0
    assert np.array_equal(bare.classes, result.classes)
    assert np.array_equal(bare.centroids, result.centroids)
    for name in MEASUREMENTS:
        np.testing.assert_array_equal(bare.measurements[name], result.measurements[name])
    assert all(c.nucleus_polygon is None and c.cell_polygon is None for c in bare.cells)


def test_fast_inner_boundaries_match_scikit_image() -> None:
    """The cells' inner boundaries: scikit-image's, bit for bit."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    from her2_qupath.cells.measure import _inner_boundaries

    rng = np.random.default_rng(23)
    for trial in range(60):
        shape = tuple(int(v) for v in rng.integers(1, 80, 2))
        smooth = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 2.0))
        labels = ndi.label(smooth > rng.uniform(0.45, 0.75))[0].astype(np.int32)
        if trial % 9 == 0:
            labels[:] = 0
        assert np.array_equal(_inner_boundaries(labels), find_boundaries(labels, mode="inner"))
