"""What a result records about how it was made: inputs and their hashes, models, versions.

The record is ``summary["provenance"]``: the run's id and time, the package
versions (read without importing torch or transformers), the input files with
their SHA-256, the models' fingerprints, every option, the guideline rule, the
white point and the stain vectors (also as QuPath's ``setColorDeconvolutionStains``
argument).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import platform
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import sha256_file
from ..config import GUIDELINES
from ..models import model_fingerprint
from .request import ScoreRequest

__all__: list[str] = []


#: (module, distribution) of the packages whose versions a result records
_RECORDED_PACKAGES = (("tifffile", "tifffile"), ("shapely", "shapely"), ("skimage", "scikit-image"),
                      ("cv2", "opencv-python-headless"), ("torch", "torch"),
                      ("transformers", "transformers"))


def _package_version(module: str, dist: str) -> str | None:
    """The version of a package: the imported module's, else the installed distribution's.

    Never imports the package (torch and transformers take seconds to import and
    are loaded only by runs with models); None when it is not installed.
    """
    loaded = sys.modules.get(module)
    if loaded is not None:
        return getattr(loaded, "__version__", None)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _file_info(p: Path | None) -> dict[str, Any] | None:
    if p is None:
        return None
    p = Path(p)
    return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}


def input_files(request: ScoreRequest) -> dict[str, dict[str, Any] | None]:
    """The run's input files (IHC and H&E slides, transform): path, SHA-256 and size."""
    return {"ihc": _file_info(request.ihc), "he": _file_info(request.he),
            "transform": _file_info(request.transform)}


def input_files_later(request: ScoreRequest) -> cf.Future[dict[str, dict[str, Any] | None]]:
    """:func:`input_files` in a background thread (its result or error in the future).

    Hashing a slide reads all of it (0.1 s for 150 MB, seconds for a large scan); file
    reads and SHA-256 release the GIL, so started with the tile work it is done, off the
    run's serial tail, by the time the result is assembled.
    """
    future: cf.Future[dict[str, dict[str, Any] | None]] = cf.Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():  # pragma: no cover - never cancelled
            return
        try:
            future.set_result(input_files(request))
        except BaseException as err:  # noqa: BLE001 - handed over to whoever waits
            future.set_exception(err)

    threading.Thread(target=work, name="her2-input-hashes", daemon=True).start()
    return future


def _provenance(request: ScoreRequest, background: Any, vectors: Any, seconds: float,
                run_id: str, inputs: dict[str, dict[str, Any] | None] | None = None
                ) -> dict[str, Any]:
    """The provenance record; ``inputs`` as :func:`input_files` gives it (computed if None)."""
    models = {}
    for name in ("tumor_model", "stain_model", "seg_model"):
        d = getattr(request.options, name)
        if d is not None:
            models[name] = {"path": str(d), "sha256": model_fingerprint(d)}
    versions = {"her2_qupath": __version__, "python": platform.python_version(),
                "numpy": np.__version__}
    versions.update({mod: _package_version(mod, dist) for mod, dist in _RECORDED_PACKAGES})
    return {
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 3),
        "versions": versions,
        "inputs": input_files(request) if inputs is None else inputs,
        "models": models,
        "parameters": dataclasses.asdict(request.options),
        "guideline_rule": dataclasses.asdict(GUIDELINES[request.options.scoring.guideline]),
        "background_rgb": [float(b) for b in background],
        "stain_vectors": getattr(vectors, "as_dict", lambda: repr(vectors))(),
        # the same as QuPath's setColorDeconvolutionStains argument (the scripts apply it)
        "stain_vectors_qupath": vectors.to_qupath(tuple(background)) if hasattr(vectors, "to_qupath")
        else None,
        "roi_class": request.roi_class,
        "n_rois": 0 if not request.rois else len(request.rois),
    }
