"""Writing a run's result folder: GeoJSON for QuPath, summary, pictures and the case report."""

from __future__ import annotations

import concurrent.futures as cf
import os
from pathlib import Path

from .._io import atomic_output_dir, atomic_write_json
from ..case_report import write_case_report
from ..qupath.geojson import write_geojson
from ..qupath.stream import write_detections
from ..render import save_png
from .request import ScoreResult

__all__ = ["write_result"]


def write_result(result: ScoreResult, outdir: str | os.PathLike[str], *,
                 he: bool | None = None) -> Path:
    """Write summary.json, detections/annotations GeoJSON, overlay.png and the case report
    (report.png, report.pdf) atomically.

    With an H&E partner, ``he_detections.geojson`` and ``ihc_detections.geojson``
    are written as well so each imports into its own image in QuPath.

    The case report is drawn and encoded in a thread while the other files are
    written (PNG encoding and file I/O release the GIL); an error there is raised
    here, as it is, and the folder is not written.
    """
    with atomic_output_dir(outdir) as tmp, \
            cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="her2-report") as pool:
        report = pool.submit(write_case_report, tmp, result.summary, result.pictures)
        write_detections(tmp / "detections.geojson", result.detections)  # streamed, tile by tile
        write_geojson(tmp / "annotations.geojson", result.annotations)
        if result.he_detections or he:
            write_detections(tmp / "ihc_detections.geojson", result.detections)
            write_geojson(tmp / "he_detections.geojson", result.he_detections)
        atomic_write_json(tmp / "summary.json", result.summary)
        save_png(tmp / "overlay.png", result.overlay)
        for name, rgb in result.images.items():
            save_png(tmp / f"{name}.png", rgb)
        report.result()  # report.png, report.pdf (leaving the pool waits for it in any case)
    return Path(outdir)
