"""Slide reading: synthetic slides of every kind (ground truth by construction),
the real SVS slides of the shared data, and bad input."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from her2_qupath.config import SlideConfig
from her2_qupath.errors import MPPMissing, SlideFormatError, SlideNotFound
from her2_qupath.slide import open_slide
from her2_qupath.slide.metadata import _parse_ome
from her2_qupath.slide_writer import pyramid, write_slide

H, W = 1300, 1700  # two levels with the automatic pyramid (1700 -> 850)


def _coded(h: int = H, w: int = W) -> np.ndarray:
    """Position-coded pixels: a misplaced tile or an off-by-one shows up."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x % 251, y % 241, (x * 7 + y * 3) % 256]).astype(np.uint8)


def _smooth(h: int = H, w: int = W) -> np.ndarray:
    """Smooth colour content that JPEG keeps within a few grey levels."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 150 + 60 * np.sin(x / 47.0) * np.cos(y / 61.0)
    g = 110 + 50 * np.cos(x / 39.0 + y / 83.0)
    b = 170 + 40 * np.sin((x + y) / 71.0)
    return np.dstack([r, g, b]).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def coded() -> np.ndarray:
    return _coded()


@pytest.fixture(scope="session")
def smooth() -> np.ndarray:
    return _smooth()


@pytest.fixture(scope="session")
def slides(tmp_path_factory: pytest.TempPathFactory, coded: np.ndarray, smooth: np.ndarray) -> dict:
    """Synthetic slides: {(kind, compression, with_mpp): path}."""
    root = tmp_path_factory.mktemp("slides")
    out = {}
    for kind in ("svs", "ome", "pyramidal", "plain"):
        for comp in (None, "zlib", "jpeg"):
            for with_mpp in (True, False):
                src = smooth if comp == "jpeg" else coded
                path = root / f"{kind}-{comp}-{with_mpp}.tif"
                write_slide(path, src, kind=kind, compression=comp,
                            mpp=0.5 if with_mpp else None,
                            magnification=20 if with_mpp else None)
                out[(kind, comp, with_mpp)] = path
    return out


PYRAMIDS = ["svs", "ome", "pyramidal"]


# --------------------------------------------------------------------------- synthetic slides


@pytest.mark.parametrize("kind", ["svs", "ome", "pyramidal", "plain"])
@pytest.mark.parametrize("comp", [None, "zlib"])
def test_lossless_read_region_is_pixel_exact(slides, coded, kind, comp):
    with open_slide(slides[(kind, comp, True)]) as s:
        assert s.dimensions == (W, H)
        assert np.array_equal(s.read_region((0, 0), 0, (W, H)), coded)
        rng = np.random.default_rng(0)
        for _ in range(20):
            x, y = int(rng.integers(0, W - 1)), int(rng.integers(0, H - 1))
            w, h = int(rng.integers(1, 600)), int(rng.integers(1, 600))
            got = s.read_region((x, y), 0, (w, h))
            assert got.shape == (h, w, 3) and got.dtype == np.uint8
            inside = coded[y: y + h, x: x + w]
            assert np.array_equal(got[: inside.shape[0], : inside.shape[1]], inside)
            assert (got[inside.shape[0]:] == 255).all() and (got[:, inside.shape[1]:] == 255).all()


@pytest.mark.parametrize("kind", PYRAMIDS)
def test_levels_match_the_written_pyramid(slides, coded, kind):
    expected = pyramid(coded)
    with open_slide(slides[(kind, None, True)]) as s:
        assert s.level_count == len(expected) == 2
        assert s.level_dimensions == ((W, H), (W // 2, H // 2))
        assert s.level_downsamples == pytest.approx((1.0, 2.0))
        level1 = s.read_region((0, 0), 1, (W // 2, H // 2))
        assert np.array_equal(level1, expected[1])
        # location is in level-0 pixels; size in level pixels
        assert np.array_equal(s.read_region((400, 300), 1, (100, 50)), expected[1][150:200, 200:300])


@pytest.mark.parametrize("kind", ["svs", "ome", "pyramidal", "plain"])
def test_jpeg_read_region_within_tolerance(slides, smooth, kind):
    with open_slide(slides[(kind, "jpeg", True)]) as s:
        assert s.compression == "jpeg"
        got = s.read_region((37, 250), 0, (700, 600)).astype(int)
        diff = np.abs(got - smooth[250:850, 37:737])
        assert diff.mean() < 1.5 and np.percentile(diff, 99) < 8


def test_reads_across_tile_borders_and_outside(slides, coded):
    with open_slide(slides[("svs", None, True)]) as s:
        assert s.tile_size == (256, 256)
        # straddles four tiles
        assert np.array_equal(s.read_region((250, 250), 0, (12, 12)), coded[250:262, 250:262])
        # partly outside on the top-left: white there
        got = s.read_region((-10, -20), 0, (50, 60))
        assert (got[:20] == 255).all() and (got[:, :10] == 255).all()
        assert np.array_equal(got[20:, 10:], coded[:40, :40])
        # partly outside on the bottom-right
        got = s.read_region((W - 5, H - 7), 0, (20, 20))
        assert np.array_equal(got[:7, :5], coded[H - 7:, W - 5:])
        assert (got[7:] == 255).all() and (got[:, 5:] == 255).all()
        # entirely outside
        assert (s.read_region((W + 100, 0), 0, (30, 30)) == 255).all()
        assert s.read_region((0, 0), 0, (0, 5)).shape == (5, 0, 3)
        with pytest.raises(IndexError):
            s.read_region((0, 0), 5, (10, 10))


def test_level_selection(slides):
    with open_slide(slides[("ome", None, True)]) as s:
        assert s.best_level_for_downsample(0.5) == 0
        assert s.best_level_for_downsample(1.0) == 0
        assert s.best_level_for_downsample(1.9) == 0
        assert s.best_level_for_downsample(2.0) == 1
        assert s.best_level_for_downsample(64) == 1
        assert s.best_level_for_mpp(0.7) == 0
        assert s.best_level_for_mpp(1.0) == 1
        assert s.best_level_for_mpp(4.0) == 1


def test_read_region_mpp(slides, coded):
    expected = pyramid(coded)
    with open_slide(slides[("pyramidal", None, True)]) as s:
        # exactly level 1: no resampling
        got = s.read_region_mpp((200, 100), (300, 200), 1.0)
        assert np.array_equal(got, expected[1][50:250, 100:400])
        # between levels: read from level 0 and area-averaged
        got = s.read_region_mpp((100, 80), (240, 160), 0.75)
        assert got.shape == (160, 240, 3)
        ref = cv2.resize(coded[80:320, 100:460], (240, 160), interpolation=cv2.INTER_AREA)
        assert np.abs(got.astype(int) - ref).mean() < 1.0
        # finer than level 0: upsampled to the requested size
        assert s.read_region_mpp((0, 0), (64, 32), 0.25).shape == (32, 64, 3)
        # beyond the image: white
        assert (s.read_region_mpp((W + 10, 0), (16, 16), 2.0) == 255).all()


def test_thumbnail(slides, smooth):
    with open_slide(slides[("svs", "jpeg", True)]) as s:
        th = s.thumbnail(max_size=200)
        assert max(th.shape[:2]) == 200
        assert th.shape[:2] == (round(H * 200 / W), 200)
        ref = cv2.resize(smooth, (th.shape[1], th.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(th.astype(int) - ref).mean() < 2.0
        th = s.thumbnail(mpp=4.0)  # 8x coarser than 0.5 µm/px
        assert th.shape[:2] == (round(H / 8), round(W / 8))
        assert max(s.thumbnail().shape[:2]) == min(max(W, H), SlideConfig().thumbnail_max_size)


def test_associated_images(tmp_path, smooth, coded):
    label = coded[:120, :200].copy()
    macro = smooth[:300, :900].copy()
    path = write_slide(tmp_path / "a.svs", smooth, mpp=0.25, magnification=40,
                       associated={"label": label, "macro": macro})
    with open_slide(path) as s:
        assert list(s.associated_images) == ["thumbnail", "label", "macro"]
        assert s.associated_images.size("label") == (200, 120)
        assert np.array_equal(s.associated_images["label"], label)  # LZW: lossless
        assert np.abs(s.associated_images["macro"].astype(int) - macro).mean() < 2
        th = s.associated_images["thumbnail"]
        assert th.ndim == 3 and th.shape[2] == 3 and max(th.shape[:2]) < 1024
        assert s.info()["associated_images"]["label"] == [200, 120]


@pytest.mark.parametrize("kind", ["svs", "ome", "pyramidal", "plain"])
def test_mpp_and_magnification(slides, kind):
    with open_slide(slides[(kind, "jpeg", True)]) as s:
        assert s.mpp == pytest.approx(0.5)
        if kind in ("svs", "ome"):
            assert s.magnification == 20
    with open_slide(slides[(kind, "jpeg", False)]) as s:
        assert s.mpp_or_none is None
        with pytest.raises(MPPMissing, match="--mpp"):
            _ = s.mpp
        with pytest.raises(MPPMissing):
            s.read_region_mpp((0, 0), (10, 10), 1.0)
    with open_slide(slides[(kind, "jpeg", False)], mpp=0.3) as s:
        assert s.mpp == 0.3 and s.mpp_source == "given with --mpp"
        assert s.read_region_mpp((0, 0), (50, 40), 0.6).shape == (40, 50, 3)


def test_meaningless_resolution_is_ignored(tmp_path, coded):
    for name, res, unit in (("dpi72", (72, 72), "INCH"), ("nounit", (2e4, 2e4), "NONE")):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, coded[:64, :64], photometric="rgb", resolution=res,
                         resolutionunit=unit, metadata=None)
        with open_slide(path) as s:
            assert s.mpp_or_none is None
    path = tmp_path / "um.tif"
    tifffile.imwrite(path, coded[:64, :64], photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25),
                     resolutionunit="CENTIMETER", metadata=None)
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.25)
        assert s.mpp_source == "TIFF resolution tags"


def test_ome_units_and_objective():
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Instrument ID="Instrument:0"><Objective ID="Objective:1" NominalMagnification="40"/>'
           '</Instrument><Image ID="Image:0"><ObjectiveSettings ID="Objective:1"/>'
           '<Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.25" '
           'PhysicalSizeYUnit="µm"/></Image></OME>')
    assert _parse_ome(xml) == (pytest.approx(0.25), 40.0)
    assert _parse_ome("<not xml") == (None, None)


def test_ome_channel_planes_planar_rgb_and_named_images(tmp_path, coded):
    """RGB stored one channel per page (OME CYX), planar-separate RGB, a named label image."""
    planes = np.moveaxis(coded[:600, :700], 2, 0).copy()  # (3, h, w)
    path = tmp_path / "cyx.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(planes, tile=(256, 256), compression="zlib", photometric="minisblack",
                 metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(coded[:50, :80], photometric="rgb", metadata={"Name": "label"})
    with open_slide(path) as s:
        assert s.format == "ome-tiff" and s.mpp == pytest.approx(0.5)
        assert np.array_equal(s.read_region((0, 0), 0, (700, 600)), coded[:600, :700])
        assert list(s.associated_images) == ["label"]
        assert np.array_equal(s.associated_images["label"], coded[:50, :80])
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, planes, photometric="rgb", planarconfig="separate", tile=(128, 128),
                     metadata=None)
    with open_slide(path) as s:
        assert np.array_equal(s.read_region((100, 50), 0, (300, 200)), coded[50:250, 100:400])


def test_png_jpeg_and_info(tmp_path, smooth):
    png = write_slide(tmp_path / "a.png", smooth, kind="png", mpp=0.5)
    jpg = write_slide(tmp_path / "a.jpg", smooth, kind="jpeg")
    with open_slide(png) as s:
        assert s.format == "png" and s.mpp == pytest.approx(0.5)
        assert np.array_equal(s.read_region((10, 20), 0, (30, 40)), smooth[20:60, 10:40])
        info = s.info()
        assert info["dimensions"] == [W, H] and info["tile_size"] is None
    with open_slide(jpg) as s:
        assert s.format == "jpeg" and s.mpp_or_none is None
        assert np.abs(s.read_region((0, 0), 0, (W, H)).astype(int) - smooth).mean() < 1.5


def test_concurrent_reads_agree(slides):
    with open_slide(slides[("svs", "jpeg", True)], config=SlideConfig(tile_cache_mb=1)) as s:
        boxes = [((x, y), (300, 300)) for x in range(0, W, 280) for y in range(0, H, 310)]
        serial = [s.read_region(loc, 0, size) for loc, size in boxes]
        results: dict[int, np.ndarray] = {}

        def work(k: int) -> None:
            for i in range(k, len(boxes), 4):
                results[i] = s.read_region(boxes[i][0], 0, boxes[i][1])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(np.array_equal(results[i], serial[i]) for i in range(len(boxes)))


def test_aperio_jpeg2000_ycbcr_tiles(tmp_path, smooth):
    """Compression 33003 stores YCbCr in the J2K code stream; it must come back as RGB."""
    import imagecodecs

    f = smooth[:512, :512].astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    ycc = np.dstack([0.299 * r + 0.587 * g + 0.114 * b,
                     128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                     128 + 0.5 * r - 0.418688 * g - 0.081312 * b])
    ycc = np.clip(np.rint(ycc), 0, 255).astype(np.uint8)

    def tiles():
        for ty in range(0, 512, 256):
            for tx in range(0, 512, 256):
                yield imagecodecs.jpeg2k_encode(ycc[ty: ty + 256, tx: tx + 256], codecformat="J2K",
                                                mct=False, reversible=True, level=0)

    path = tmp_path / "j2k.svs"
    tifffile.imwrite(path, tiles(), shape=(512, 512, 3), dtype=np.uint8, tile=(256, 256),
                     compression=33003, photometric="rgb", metadata=None,
                     description="Aperio Image Library v11.0.37\r\n512x512 (256x256) J2K/YUV16 Q=70")
    with open_slide(path) as s:
        assert s.compression.startswith("jpeg2000")
        got = s.read_region((0, 0), 0, (512, 512)).astype(int)
    assert np.abs(got - smooth[:512, :512]).max() <= 2


def test_pickle_reopens_the_slide(slides, coded):
    import pickle

    with open_slide(slides[("ome", None, False)], mpp=0.42) as s:
        clone = pickle.loads(pickle.dumps(s))
    with clone:
        assert clone.mpp == 0.42
        assert np.array_equal(clone.read_region((5, 6), 0, (40, 30)), coded[6:36, 5:45])


# --------------------------------------------------------------------------- memory


def _big_slide(path: Path, size: int, tile: int = 256) -> None:
    """A single-level zlib slide; every tile is one colour coding its (row, col)."""
    n = size // tile

    def tiles():
        for r in range(n):
            for c in range(n):
                yield np.full((tile, tile, 3), ((r * 5) % 256, (c * 3) % 256, 7), np.uint8)

    tifffile.imwrite(path, tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="zlib", metadata=None)


def test_reading_a_region_decodes_only_its_tiles(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    size = 16384  # level 0 decoded would be 768 MiB
    _big_slide(path, size)
    with open_slide(path, config=SlideConfig(tile_cache_mb=8)) as s:
        level = s._levels[0]
        calls: list[int] = []
        decode = level._decode

        def counting(data, index, **kw):
            calls.append(index)
            return decode(data, index, **kw)

        monkeypatch.setattr(level, "_decode", counting)
        tracemalloc.start()
        try:
            region = s.read_region((5000, 7000), 0, (600, 600))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(calls) == 9  # 3 x 3 tiles of 256 px cover x 5000..5599, y 7000..7599
        assert peak < 16 * 2**20
        # pixel (row, col) of the slide belongs to tile (row // 256, col // 256)
        assert tuple(region[0, 0]) == (((7000 // 256) * 5) % 256, ((5000 // 256) * 3) % 256, 7)
        assert tuple(region[-1, -1]) == (((7599 // 256) * 5) % 256, ((5599 // 256) * 3) % 256, 7)


def test_thumbnail_of_a_single_level_slide_stays_bounded(tmp_path):
    path = tmp_path / "big.tif"
    size = 8192  # 192 MiB decoded
    _big_slide(path, size)
    with open_slide(path, config=SlideConfig(tile_cache_mb=8)) as s:
        tracemalloc.start()
        try:
            th = s.thumbnail(max_size=256)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert th.shape == (256, 256, 3)
    assert peak < 80 * 2**20
    assert tuple(th[0, 0]) == (0, 0, 7) and tuple(th[-1, -1]) == ((31 * 5) % 256, (31 * 3) % 256, 7)


# --------------------------------------------------------------------------- real slides


@pytest.mark.shared_data
def test_cmu_small_region(shared_data):
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    with open_slide(path) as s:
        assert s.format == "svs"
        assert s.dimensions == (2220, 2967)
        assert s.level_count == 1
        assert s.mpp == pytest.approx(0.499)
        assert s.magnification == 20
        assert s.tile_size == (240, 240)
        assert set(s.associated_images) == {"thumbnail", "label", "macro"}
        assert s.associated_images["macro"].shape == (431, 1280, 3)
        region = s.read_region((1000, 1200), 0, (512, 512))
        with tifffile.TiffFile(path) as tif:
            ref = tif.pages[0].asarray()[1200:1712, 1000:1512]
        assert np.array_equal(region, ref)
        # H&E colours: eosin pink / haematoxylin purple means green is the darkest channel
        tissue = region.reshape(-1, 3)[region.reshape(-1, 3).mean(axis=1) < 200].astype(float)
        assert len(tissue) > 1000
        r, g, b = tissue.mean(axis=0)
        assert g < r and g < b


@pytest.mark.shared_data
def test_tcga_slide_without_mpp(shared_data):
    path = shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"
    with open_slide(path) as s:
        assert s.level_dimensions == ((4443, 3567), (2221, 1783))
        assert s.mpp_or_none is None and s.magnification is None
        with pytest.raises(MPPMissing, match="--mpp"):
            _ = s.mpp
        assert s.compression.startswith("jpeg2000")
        # JPEG 2000 tiles decode to the same pixels as tifffile and look like H&E
        region = s.read_region((2000, 1600), 1, (300, 300))
        ds = s.level_downsamples[1]  # 2.0005: level-1 pixel = floor(level-0 / ds)
        x, y = int(2000 // ds), int(1600 // ds)
        with tifffile.TiffFile(path) as tif:
            ref = tif.series[0].levels[1].asarray()[y: y + 300, x: x + 300]
        assert np.array_equal(region, ref)
        tissue = region.reshape(-1, 3)[region.reshape(-1, 3).mean(axis=1) < 200].astype(float)
        r, g, b = tissue.mean(axis=0)
        assert g < r and g < b
    with open_slide(path, mpp=0.25) as s:
        assert s.mpp == 0.25
        assert s.best_level_for_mpp(0.5) == 1
        tile = s.read_region_mpp((0, 0), (256, 256), 0.5)
        assert tile.shape == (256, 256, 3)
        assert np.array_equal(tile, s.read_region((0, 0), 1, (256, 256)))


# --------------------------------------------------------------------------- bad input


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SlideNotFound, match="does not exist"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideNotFound, match="directory"):
        open_slide(tmp_path)


def test_text_file_and_empty_file(tmp_path):
    text = tmp_path / "notes.svs"
    text.write_text("this is not a slide\n" * 10)
    with pytest.raises(SlideFormatError, match="not a supported slide image"):
        open_slide(text)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideFormatError, match="empty"):
        open_slide(empty)
    fake = tmp_path / "fake.tif"
    fake.write_bytes(b"II*\x00" + b"\xff" * 100)
    with pytest.raises(SlideFormatError):
        open_slide(fake)


@pytest.mark.parametrize("comp", ["jpeg", "zlib"])
def test_truncated_tiff(tmp_path, slides, comp):
    data = slides[("svs", comp, True)].read_bytes()
    half = tmp_path / "half.svs"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideFormatError, match="truncated|damaged|not a readable"):
        with open_slide(half) as s:
            for level in range(s.level_count):
                w, h = s.level_dimensions[level]
                s.read_region((0, 0), level, (w, h))


@pytest.mark.parametrize("kind", ["svs", "ome", "pyramidal", "plain"])
def test_any_truncation_is_a_clear_error(tmp_path, slides, kind):
    """Cut anywhere: either the readable part reads, or SlideFormatError; nothing else."""
    data = slides[(kind, "jpeg", True)].read_bytes()
    for fraction in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 0.999):
        cut = tmp_path / f"cut-{fraction}.tif"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(SlideFormatError):
            with open_slide(cut) as s:
                for level in range(s.level_count):
                    w, h = s.level_dimensions[level]
                    s.read_region((0, 0), level, (w, h))
                for name in s.associated_images:
                    s.associated_images[name]


def test_damaged_tile_names_the_tile(tmp_path, slides):
    src = slides[("pyramidal", "zlib", True)]
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        offset, count = int(page.dataoffsets[5]), int(page.databytecounts[5])
    data = bytearray(src.read_bytes())
    data[offset: offset + count] = b"\x00" * count
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(data))
    with open_slide(bad) as s:
        assert s.read_region((0, 0), 0, (256, 256)).shape == (256, 256, 3)  # tile 0 is intact
        with pytest.raises(SlideFormatError, match=r"tile row 0, column 5 of level 0"):
            s.read_region((5 * 256, 0), 0, (10, 10))


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_png_and_jpeg(tmp_path, smooth, kind):
    path = write_slide(tmp_path / f"a.{kind}", smooth[:300, :400], kind=kind)
    data = path.read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideFormatError, match="cannot read"):
        open_slide(cut)


def test_png_with_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 100
    rgba[..., 2] = 50
    rgba[:, :20, 3] = 255  # opaque
    rgba[:, 20:40, 3] = 0  # transparent -> white
    rgba[:, 40:, 3] = 128  # half
    path = write_slide(tmp_path / "alpha.png", rgba, kind="png")
    with open_slide(path) as s:
        got = s.read_region((0, 0), 0, (60, 40))
    a = 128 / 255
    half = np.rint(np.array([200, 100, 50]) * a + 255 * (1 - a))
    assert (got[:, :20] == (200, 100, 50)).all()
    assert (got[:, 20:40] == 255).all()
    assert np.array_equal(got[0, 50], half.astype(np.uint8))


def test_rgba_tiff_is_composited_on_white(tmp_path):
    rgba = np.full((32, 32, 4), (10, 20, 30, 0), np.uint8)
    rgba[:16, :, 3] = 255
    path = write_slide(tmp_path / "alpha.tif", rgba, kind="plain", compression=None)
    with open_slide(path) as s:
        got = s.read_region((0, 0), 0, (32, 32))
    assert (got[:16] == (10, 20, 30)).all() and (got[16:] == 255).all()


def test_16bit_grayscale_tiff(tmp_path):
    gray = (np.arange(256 * 64, dtype=np.uint32).reshape(64, 256) * 4).astype(np.uint16)
    path = tmp_path / "gray16.tif"
    tifffile.imwrite(path, gray, photometric="minisblack", tile=(32, 32), metadata=None)
    with open_slide(path) as s:
        got = s.read_region((0, 0), 0, (256, 64))
    expected = np.rint(gray.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert got.dtype == np.uint8
    assert np.array_equal(got[..., 0], expected)
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 1], got[..., 2])


def test_16bit_grayscale_png_and_miniswhite(tmp_path):
    from PIL import Image

    gray = np.linspace(0, 65535, 50 * 40).reshape(40, 50).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    with open_slide(tmp_path / "g16.png") as s:
        got = s.read_region((0, 0), 0, (50, 40))[..., 1]
    assert np.abs(got.astype(int) - np.rint(gray / 257.0)).max() <= 1
    white = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))
    tifffile.imwrite(tmp_path / "mw.tif", white, photometric="miniswhite", metadata=None)
    with open_slide(tmp_path / "mw.tif") as s:
        assert np.array_equal(s.read_region((0, 0), 0, (64, 8))[..., 0], 255 - white)


def test_bilevel_and_12bit(tmp_path):
    bits = np.zeros((16, 16), bool)
    bits[:, 8:] = True
    tifffile.imwrite(tmp_path / "bw.tif", bits, photometric="minisblack", metadata=None)
    with open_slide(tmp_path / "bw.tif") as s:
        got = s.read_region((0, 0), 0, (16, 16))
    assert (got[:, :8] == 0).all() and (got[:, 8:] == 255).all()
    v = np.array([[0, 1024, 2048, 4095]], np.uint16)
    tifffile.imwrite(tmp_path / "12.tif", v, photometric="minisblack", bitspersample=12,
                     metadata=None)
    with open_slide(tmp_path / "12.tif") as s:
        got = s.read_region((0, 0), 0, (4, 1))[0, :, 0]
    assert got.tolist() == np.rint(v[0].astype(float) * 255 / 4095).astype(int).tolist()


def test_palette_and_cmyk(tmp_path):
    idx = np.tile(np.arange(4, dtype=np.uint8), (4, 4))
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 1] = (65535, 0, 0)
    cmap[:, 2] = (0, 65535, 0)
    cmap[:, 3] = (0, 0, 65535)
    tifffile.imwrite(tmp_path / "pal.tif", idx, photometric="palette", colormap=cmap, metadata=None)
    with open_slide(tmp_path / "pal.tif") as s:
        got = s.read_region((0, 0), 0, (16, 4))
    assert tuple(got[0, 0]) == (0, 0, 0) and tuple(got[0, 1]) == (255, 0, 0)
    assert tuple(got[0, 3]) == (0, 0, 255)
    tifffile.imwrite(tmp_path / "cmyk.tif", np.zeros((8, 8, 4), np.uint8), photometric="separated",
                     metadata=None)
    with pytest.raises(SlideFormatError, match="CMYK"):
        open_slide(tmp_path / "cmyk.tif")


# --------------------------------------------------------------------------- failures told apart


def _failing_decoder(error: BaseException):
    def decode(data, index, **kw):
        raise error
    return decode


@pytest.mark.parametrize("error", [
    ValueError("<COMPRESSION.JPEG2000: 34712> requires the 'imagecodecs' package"),
    ImportError("cannot import name 'jpeg2k_decode' from 'imagecodecs'"),
    NotImplementedError("chroma subsampling not supported without JPEG compression"),
])
def test_missing_codec_is_not_reported_as_damage(slides, monkeypatch, error):
    with open_slide(slides[("pyramidal", "zlib", True)]) as s:
        monkeypatch.setattr(s._levels[0], "_decode", _failing_decoder(error))
        with pytest.raises(SlideFormatError, match=r"tile row 0, column 0 of level 0") as info:
            s.read_region((0, 0), 0, (10, 10))
    text = str(info.value)
    assert "no installed decoder reads its encoding" in text
    assert "pip install imagecodecs" in info.value.hint
    assert "the file is damaged" not in text


def test_unknown_compression_in_a_real_file(tmp_path, slides):
    src = slides[("plain", "zlib", True)]
    with tifffile.TiffFile(src) as tif:
        where = tif.pages[0].tags["Compression"].valueoffset
    data = bytearray(src.read_bytes())
    data[where: where + 2] = (34666).to_bytes(2, "little")  # no such TIFF compression
    path = tmp_path / "odd.tif"
    path.write_bytes(bytes(data))
    with open_slide(path) as s:
        with pytest.raises(SlideFormatError, match="no installed decoder reads its encoding") as info:
            s.read_region((0, 0), 0, (10, 10))
    assert "the file is damaged" not in str(info.value)


def test_memory_error_during_read_is_not_reported_as_damage(slides, monkeypatch):
    with open_slide(slides[("pyramidal", "zlib", True)]) as s:
        monkeypatch.setattr(s._levels[0], "_decode", _failing_decoder(MemoryError()))
        with pytest.raises(MemoryError, match=r"out of memory while decoding tile row 0, "
                                              r"column 0 of level 0") as info:
            s.read_region((0, 0), 0, (10, 10))
    assert not isinstance(info.value, SlideFormatError)
    assert "fewer worker processes" in str(info.value)


def test_memory_error_while_opening(slides, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(tifffile, "TiffFile", no_memory)
    with pytest.raises(MemoryError, match="out of memory while reading the TIFF structure"):
        open_slide(slides[("svs", "zlib", True)])


def test_keyboard_interrupt_passes_through(slides, monkeypatch):
    with open_slide(slides[("pyramidal", "zlib", True)]) as s:
        monkeypatch.setattr(s._levels[0], "_decode", _failing_decoder(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            s.read_region((0, 0), 0, (10, 10))


def test_missing_pillow_decoder(tmp_path, smooth, monkeypatch):
    from PIL import Image

    path = write_slide(tmp_path / "a.png", smooth[:64, :64], kind="png")

    def no_decoder(*args, **kwargs):
        raise OSError("decoder zip not available")

    monkeypatch.setattr(Image, "open", no_decoder)
    with pytest.raises(SlideFormatError, match="no installed decoder reads its encoding"):
        open_slide(path)
