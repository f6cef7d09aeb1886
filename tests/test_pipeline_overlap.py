"""A run's fixed costs overlapped: the report drawn while the other files are written, the
inputs hashed while the tiles are analysed, the workers' kernels loaded in their fork server."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from her2_qupath.case_report import DRAW_LOCK
from her2_qupath.pipeline import ScoreRequest, run_score, write_result
from her2_qupath.pipeline import result as pipeline_result
from her2_qupath.pipeline import work as pipeline_work
from her2_qupath.pipeline.provenance import input_files, input_files_later
from her2_qupath.slide_writer import write_slide
from her2_qupath.synthetic import synthetic_ihc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> object:
    d = tmp_path_factory.mktemp("overlap")
    slide = write_slide(d / "s.png", synthetic_ihc((512, 512), seed=4)[0], mpp=0.5, kind="png")
    return run_score(ScoreRequest(ihc=slide))


class _ReportFailed(RuntimeError):
    pass


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_the_report_is_drawn_in_a_thread_under_the_draw_lock(scored, tmp_path, monkeypatch) -> None:
    seen = {}
    real = pipeline_result.write_case_report

    def spy(folder, summary, pictures):  # type: ignore[no-untyped-def]
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        out = real(folder, summary, pictures)
        seen["lock_free_after"] = not DRAW_LOCK.locked()
        return out

    monkeypatch.setattr(pipeline_result, "write_case_report", spy)
    out = write_result(scored, tmp_path / "out")
    assert seen == {"thread": True, "lock_free_after": True}
    assert sorted(p.name for p in out.iterdir()) == [
        "annotations.geojson", "detections.geojson", "overlay.png", "report.pdf", "report.png",
        "summary.json"]


def test_an_error_in_the_report_thread_is_raised_as_it_is_and_nothing_is_written(
        scored, tmp_path, monkeypatch) -> None:
    err = _ReportFailed("the report could not be drawn")

    def broken(folder, summary, pictures):  # type: ignore[no-untyped-def]
        (Path(folder) / "report.png").write_bytes(b"half")  # a half-written report
        raise err

    monkeypatch.setattr(pipeline_result, "write_case_report", broken)
    with pytest.raises(_ReportFailed) as raised:
        write_result(scored, tmp_path / "out")
    assert raised.value is err
    assert _leftovers(tmp_path) == []  # no folder, no temporary folder
    # an earlier result in the folder stays as it was
    monkeypatch.undo()
    write_result(scored, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    monkeypatch.setattr(pipeline_result, "write_case_report", broken)
    with pytest.raises(_ReportFailed):
        write_result(scored, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert _leftovers(tmp_path) == ["out"]


def test_an_error_beside_the_report_waits_for_it_before_the_folder_goes(
        scored, tmp_path, monkeypatch) -> None:
    release = threading.Event()
    finished = threading.Event()
    real = pipeline_result.write_case_report

    def slow(folder, summary, pictures):  # type: ignore[no-untyped-def]
        release.wait(10)
        out = real(folder, summary, pictures)
        finished.set()
        return out

    def failing(path, detections):  # type: ignore[no-untyped-def]
        release.set()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline_result, "write_case_report", slow)
    monkeypatch.setattr(pipeline_result, "write_detections", failing)
    with pytest.raises(OSError, match="No space"):
        write_result(scored, tmp_path / "out")
    assert finished.is_set()  # the report was done before the temporary folder was removed
    assert _leftovers(tmp_path) == []


def test_inputs_are_hashed_in_the_background_with_their_errors(tmp_path) -> None:
    slide = tmp_path / "s.bin"
    slide.write_bytes(os.urandom(3 << 20))
    request = ScoreRequest(ihc=slide)
    future = input_files_later(request)
    assert future.result(timeout=30) == input_files(request)
    assert future.result()["ihc"]["bytes"] == 3 << 20 and future.result()["he"] is None
    missing = input_files_later(ScoreRequest(ihc=tmp_path / "gone.svs"))
    with pytest.raises(FileNotFoundError):
        missing.result(timeout=30)


def test_the_fork_server_is_started_early_only_for_worker_processes(monkeypatch) -> None:
    from multiprocessing import forkserver

    started = []
    monkeypatch.setattr(forkserver, "ensure_running", lambda: started.append(True))
    with cf.ThreadPoolExecutor(1) as one, cf.ThreadPoolExecutor(2) as two:
        pipeline_work.prestart_cell_workers("pixel", two)
        pipeline_work.prestart_cell_workers("cell", one)  # one worker: the tiles run in threads
        pipeline_work.prestart_cell_workers("cell", _NotThreads())  # e.g. Dask: used as given
        assert started == []
        pipeline_work.prestart_cell_workers("cell", two)
    assert started == [True]
    assert forkserver._forkserver._preload_modules[-1] == "her2_qupath.pipeline.worker_warmup"


class _NotThreads(cf.Executor):
    pass


_WARM_CHECK = """
import json, sys
from her2_qupath.config import ScoreOptions
from her2_qupath.pipeline.request import TileParams
from her2_qupath.pipeline.tiles import _cells_to_text, analyse_tile
from her2_qupath.stain import StainVectors
from her2_qupath.synthetic import synthetic_ihc
from her2_qupath.tiling import Tile
assert "numba" not in sys.modules
import her2_qupath.pipeline.worker_warmup as warmup  # importing it warms, as in the fork server
from numba.core.registry import CPUDispatcher

def signatures():
    return {f"{m}.{k}": sorted(map(str, v.signatures)) for m, mod in list(sys.modules.items())
            if m.startswith("her2_qupath.") for k, v in vars(mod).items()
            if isinstance(v, CPUDispatcher)}

warm = signatures()
again = warmup.warm_cell_kernels()
opts = ScoreOptions()
margin = round(opts.cells.tile_margin_um / opts.tiling.mpp)
rgb = synthetic_ihc((512 + 2 * margin,) * 2, seed=7, background=(232.7, 232.1, 240.0))[0]
params = TileParams(opts.stain, opts.cells, "cell", StainVectors.default(opts.stain),
                    (232.7, 232.1, 240.0), opts.tiling.mpp, opts.scoring.min_letter_fraction, margin)
tile = Tile(3, 5, 5120.0, 3072.0, 1024.0, 1024.0, 512, opts.tiling.mpp)
a = analyse_tile(rgb, params)
_cells_to_text(a, tile, None, "run")
after = signatures()
print(json.dumps({"again": again, "cells": a.cell_count, "kernels": len(warm),
                  "loaded": sum(1 for v in warm.values() if v),
                  "new": {k: v for k, v in after.items() if v != warm.get(k)}}))
"""


def test_the_fork_server_preload_loads_every_kernel_a_slide_tile_calls() -> None:
    """Importing the warm-up (the fork server's last preload) analyses a synthetic tile; a slide
    tile analysed afterwards loads no kernel and no signature it did not load."""
    out = subprocess.run([sys.executable, "-c", _WARM_CHECK], capture_output=True, text=True,
                         timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["again"] is not None and got["again"] > 0
    assert got["cells"] > 50 and got["kernels"] >= 10 and got["loaded"] >= 10
    assert got["new"] == {}


_MAIN_CHECK = """
import json, sys
from her2_qupath.config import ScoringConfig
from her2_qupath.pipeline import ScoreOptions, ScoreRequest, run_score
r = run_score(ScoreRequest(ihc=sys.argv[1], options=ScoreOptions(scoring=ScoringConfig(level="cell"))))
print(json.dumps({"numba": "numba" in sys.modules, "cells": r.summary["n_cells"],
                  "tiles": r.summary["n_tiles"]}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="worker processes need two CPUs")
def test_a_cell_level_run_in_worker_processes_never_imports_numba_here(tmp_path) -> None:
    slide = write_slide(tmp_path / "s.tif", synthetic_ihc((1200, 1200), seed=5)[0], mpp=0.5,
                        kind="pyramidal", compression="zlib")
    out = subprocess.run([sys.executable, "-c", _MAIN_CHECK, str(slide)], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tiles"] >= 2 and got["cells"] > 100
    assert got["numba"] is False  # the kernels live in the fork server and its workers


def test_files_written_from_threads_at_once_get_the_mode_of_the_umask(tmp_path,
                                                                      monkeypatch) -> None:
    """The umask is read without being set to 0 for a moment (another thread creating a file
    then would make it writable by all)."""
    from her2_qupath._io import atomic_write_bytes, process_umask
    from her2_qupath.qupath.stream import GeoJSONStreamWriter

    def write(k: int) -> Path:
        if k % 2:
            return atomic_write_bytes(tmp_path / f"f{k}", b"x")
        with GeoJSONStreamWriter(tmp_path / f"g{k}.geojson") as w:
            w.add_text(b"", 0)
        return w.path

    old = os.umask(0o027)
    try:
        if Path("/proc/self/status").exists():  # Linux: read there, never set
            with monkeypatch.context() as m:
                m.setattr(os, "umask", lambda *a: pytest.fail("the umask was set"))
                assert process_umask() == 0o027
        assert process_umask() == 0o027
        with cf.ThreadPoolExecutor(8) as pool:
            paths = list(pool.map(write, range(400)))
    finally:
        os.umask(old)
    assert {p.stat().st_mode & 0o777 for p in paths} == {0o640}
