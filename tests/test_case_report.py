"""The case report (report.png / report.pdf), scale bars, colour bars and the class palette."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from her2_qupath.case_report import Picture, case_report_figure
from her2_qupath.config import HER2_CLASSES, HER2_COLORS
from her2_qupath.pipeline import ScoreOptions, ScoreRequest, TileAnalysis, run_score, write_result
from her2_qupath.pipeline.pictures import _block_canvas
from her2_qupath.registration import Transform
from her2_qupath.render import add_colour_bar, add_scale_bar, scale_bar_length
from her2_qupath.tiling import Tile

sys.path.insert(0, str(Path(__file__).parent))
from server_support import LAYOUT_3, ihc_rgb, write_png  # noqa: E402

# --------------------------------------------------------------------------- palette

#: Machado, Oliveira & Fernandes 2009, full severity, on linear RGB
_CVD = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                   [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                     [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                   [0.004733, 0.691367, 0.303900]],
}


def _lab_under(matrix: np.ndarray | None, rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    c = rgb / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    if matrix is not None:
        lin = np.clip(lin @ np.asarray(matrix).T, 0, 1)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return rgb2lab(srgb[None])[0]


@pytest.mark.parametrize("vision", [None, *_CVD])
def test_class_colours_stay_apart_for_colour_blind_readers(vision: str | None) -> None:
    rgb = np.array([HER2_COLORS[n] for n in HER2_CLASSES], float)
    lab = _lab_under(_CVD[vision] if vision else None, rgb)
    gaps = [np.linalg.norm(lab[i] - lab[j]) for i in range(4) for j in range(i + 1, 4)]
    assert min(gaps) >= 30.0
    # and the classes are ordered by lightness (0 and 3+ apart for a reader without colour)
    assert lab[1, 0] > lab[2, 0] > lab[3, 0]


# --------------------------------------------------------------------------- scale and colour bars


def _bar_length(rgb: np.ndarray) -> int:
    """The longest horizontal run of black pixels in the bottom-left quarter."""
    h, w = rgb.shape[:2]
    black = (rgb[h // 2:, : w // 2] < 30).all(axis=2)
    best = 0
    for row in black:
        padded = np.concatenate([[0], row.astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(padded))
        if edges.size:
            best = max(best, int((edges[1::2] - edges[0::2]).max()))
    return best


@pytest.mark.parametrize(("width", "um_per_px", "um"), [(800, 0.5, 100.0), (1000, 4.0, 1000.0),
                                                        (640, 25.0, 5000.0)])
def test_scale_bar_is_as_long_as_its_label_says(width: int, um_per_px: float, um: float) -> None:
    assert scale_bar_length(width, um_per_px) == um
    pic = add_scale_bar(np.full((600, width, 3), 255, np.uint8), um_per_px)
    assert abs(_bar_length(pic) - um / um_per_px) <= 1
    assert add_scale_bar(np.full((60, 80, 3), 255, np.uint8), None).min() == 255  # no pixel size


def test_colour_bar_runs_from_vmin_to_vmax() -> None:
    import matplotlib

    heat = np.full((300, 400, 3), 128, np.uint8)
    pic = add_colour_bar(heat, "Tumour probability per tile", cmap="inferno")
    assert pic.shape[0] > 300 and pic.shape[1] > 400  # a title above, a bar on the right
    bar = pic[:, 400:]
    lo = (np.array(matplotlib.colormaps["inferno"](0.0)[:3]) * 255).round()
    hi = (np.array(matplotlib.colormaps["inferno"](1.0)[:3]) * 255).round()
    rows_lo = np.flatnonzero((np.abs(bar.astype(int) - lo).sum(axis=2) < 12).any(axis=1))
    rows_hi = np.flatnonzero((np.abs(bar.astype(int) - hi).sum(axis=2) < 12).any(axis=1))
    assert rows_lo.size and rows_hi.size and rows_hi.mean() < rows_lo.mean()  # 1 at the top


# --------------------------------------------------------------------------- block canvas of a pair


def test_mapped_blocks_are_painted_where_the_transform_puts_them() -> None:
    """A tile's block classes land on the IHC overview shifted by the registration."""
    tile = Tile(0, 0, 100.0, 100.0, 64.0, 64.0, 64, 0.5)
    blocks = np.full((8, 8), 2, np.int8)  # every block 2+ (canvas value 3)
    blocks[:, :4] = 0  # left half HER2 0 (canvas value 1)
    shift = Transform(np.array([[1, 0, 40.0], [0, 1, -20.0], [0, 0, 1]]), (400, 400), (400, 400))
    a = TileAnalysis(score=None, blocks=blocks)
    canvas = _block_canvas((200, 200), 0.5, [tile], [a], shift)
    ys, xs = np.nonzero(canvas)
    # H&E box 100..164 -> IHC x 140..204, y 80..144 -> overview (x0.5) x 70..102, y 40..72
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (70, 101, 40, 71)
    assert (canvas[40:72, 70:86] == 1).all() and (canvas[40:72, 86:102] == 3).all()
    identity = _block_canvas((200, 200), 0.5, [tile], [a], None)
    assert (np.nonzero(identity)[1].min(), np.nonzero(identity)[0].min()) == (50, 50)


# --------------------------------------------------------------------------- the report


def _texts(fig: object) -> str:
    from matplotlib.text import Text

    return "\n".join(t.get_text() for t in fig.findobj(Text))  # type: ignore[attr-defined]


def _check_files(folder: Path) -> None:
    png = Image.open(folder / "report.png")
    assert abs(png.size[0] - 1286) <= 2 and abs(png.size[1] - 910) <= 2  # A4 landscape, 110 dpi
    assert (folder / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_report_of_a_scored_slide(tmp_path: Path) -> None:
    image = write_png(tmp_path / "case.png", ihc_rgb(LAYOUT_3))
    res = run_score(ScoreRequest(ihc=image))
    write_result(res, tmp_path / "out")
    _check_files(tmp_path / "out")
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["her2_score"] == "3+"
    fig = case_report_figure(s, res.pictures)
    text = _texts(fig)
    assert "HER2 3+  ·  HER2-positive" in text
    assert f"{s['h_score']:.0f}" in text and f"{s['n_tiles_counted']} of {s['n_tiles']}" in text
    for k in ("0", "1+", "2+", "3+"):
        assert f"{s['class_percentages'][k]:.1f} %" in text
    assert "10 %" in text  # the breast rule's cut-off is drawn
    for name in (*HER2_CLASSES, "scored region", "tile not counted"):
        assert name in text  # a legend entry for every colour
    assert "none (default grading)" in text and "her2-qupath" in text
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 and all(ax.get_title(loc="left") for ax in fig.axes)
    for pic in res.pictures:  # 0.5 µm/px, 512 px thumbnail: a 50 µm bar of 100 px
        assert isinstance(pic, Picture) and abs(_bar_length(pic.rgb) - 100) <= 1


def test_report_of_a_not_evaluable_slide(tmp_path: Path) -> None:
    image = write_png(tmp_path / "tiny.png", ihc_rgb([[None, None], [None, 1]], tile=64))
    res = run_score(ScoreRequest(ihc=image))
    assert res.summary["her2_score"] == "not evaluable"
    write_result(res, tmp_path / "out")
    _check_files(tmp_path / "out")
    text = _texts(case_report_figure(res.summary, res.pictures))
    assert "HER2 not evaluable" in text and "too little tissue" in text
    assert "HER2 0  ·" not in text


def test_report_of_a_pair(tmp_path: Path) -> None:
    from her2_qupath.config import StainConfig
    from her2_qupath.slide_writer import write_slide
    from her2_qupath.synthetic import synthetic_pair

    he, ihc, _m, _t = synthetic_pair((768, 768), seed=3, mpp=0.5, rotation_deg=4.0)
    write_slide(tmp_path / "he.tif", he, mpp=0.5, kind="pyramidal", compression="zlib")
    write_slide(tmp_path / "ihc.tif", ihc, mpp=0.5, kind="pyramidal", compression="zlib")
    res = run_score(ScoreRequest(ihc=tmp_path / "ihc.tif", he=tmp_path / "he.tif",
                                 options=ScoreOptions(stain=StainConfig(intensity="membrane"))))
    write_result(res, tmp_path / "out")
    _check_files(tmp_path / "out")
    titles = [p.title for p in res.pictures]
    assert titles[0].startswith("H&E slide") and titles[1].startswith("HER2 class")
    text = _texts(case_report_figure(res.summary, res.pictures))
    assert "Registration" in text


# --------------------------------------------------------------------------- PNG files


def _zlib_level_class(png: bytes) -> int:
    """FLEVEL of a PNG's zlib stream (0: fastest, 1: fast, 2: default, 3: best)."""
    at = png.index(b"IDAT") + 4
    return png[at + 1] >> 6


def test_pngs_are_compressed_at_the_fastest_level_with_the_same_pixels(tmp_path: Path) -> None:
    import io

    from her2_qupath.render import encode_png

    rgb = np.full((300, 400, 3), 230, np.uint8)
    rgb[50:120, 60:200] = (40, 90, 200)
    rgb = add_scale_bar(rgb, 0.5)
    fast = encode_png(rgb)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")  # Pillow's default, zlib level 6
    assert _zlib_level_class(fast) == 0 and _zlib_level_class(buf.getvalue()) == 2
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast))), rgb)
    # the report page too
    image = write_png(tmp_path / "case.png", ihc_rgb(LAYOUT_3))
    res = run_score(ScoreRequest(ihc=image))
    write_result(res, tmp_path / "out")
    page = (tmp_path / "out" / "report.png").read_bytes()
    assert _zlib_level_class(page) == 0
    fig = case_report_figure(res.summary, res.pictures)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(page))),
                          np.asarray(Image.open(buf)))


def test_class_map_colours_by_table_are_those_of_the_clipped_index() -> None:
    from her2_qupath.render import CLASS_MAP_COLORS, colorize_class_map

    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    want = CLASS_MAP_COLORS[np.clip(values.astype(np.intp), 0, len(CLASS_MAP_COLORS) - 1)]
    for cmap in (values, values[:, ::3], values.astype(np.int16) - 3, values[:0]):
        ref = CLASS_MAP_COLORS[np.clip(np.asarray(cmap).astype(np.intp), 0, 4)]
        got = colorize_class_map(cmap)
        assert got.dtype == np.uint8 and got.shape == ref.shape and np.array_equal(got, ref)
    assert np.array_equal(colorize_class_map(values), want)
