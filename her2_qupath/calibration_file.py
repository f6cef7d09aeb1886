"""The calibration file: write, read, validate and apply a laboratory's membrane grading.

A calibration (from ``her2-qupath calibrate``, fitted in :mod:`her2_qupath.calibration`)
is versioned JSON holding the scored-tissue threshold and the three membrane
line-density thresholds (1+, 2+, 3+). It is validated on load and recorded in every
run's provenance (``ScoreOptions.calibration``). The command line reads it from a
file, the server from a request's ``options.calibration`` or ``serve --calibration``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._io import atomic_write_json
from .config import ScoreOptions
from .errors import UserInputError

__all__ = ["FORMAT", "VERSION", "write_calibration", "load_calibration", "check_calibration",
           "apply_calibration"]

FORMAT = "her2-qupath calibration"
VERSION = 1
_MAKE_ONE = "make it with `her2-qupath calibrate CASES -o calibration.json`"


def write_calibration(path: str | Path, grading: Sequence[float], *, n_cases: int,
                      cross_validation: dict[str, Any] | None = None) -> Path:
    """Write a versioned calibration file (atomically)."""
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "her2_qupath": __version__,
        "intensity": "membrane",
        "membrane_tissue_od_sum": round(float(grading[0]), 5),
        "membrane_thresholds": [round(float(x), 5) for x in grading[1:]],
        "n_cases": int(n_cases),
        "cross_validation": cross_validation or {},
    }
    return atomic_write_json(path, obj)


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read and validate a calibration file; a clear error names what is wrong."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserInputError(f"calibration file {p} not found", hint=_MAKE_ONE) from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserInputError(f"calibration file {p} is not JSON: {err}", hint=_MAKE_ONE) from err
    checked = check_calibration(obj, f"calibration file {p}")
    return {**checked, "path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def check_calibration(obj: Any, source: str = "the calibration") -> dict[str, Any]:
    """Validate a calibration's content (a file's, or a request's ``options.calibration``).

    Returns it with ``path`` (``source``) and ``sha256`` (of its canonical JSON) added
    unless it carries them already.
    """
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserInputError(f"{source} is not a her2-qupath calibration", hint=_MAKE_ONE)
    if obj.get("version") != VERSION:
        raise UserInputError(f"{source} has version {obj.get('version')!r}; "
                             f"this version reads {VERSION}", hint="calibrate again with this version")
    t = obj.get("membrane_thresholds")
    tissue = obj.get("membrane_tissue_od_sum")
    ok = (isinstance(t, list) and len(t) == 3 and all(isinstance(x, (int, float)) for x in t)
          and 0 < t[0] < t[1] < t[2] < 10 and isinstance(tissue, (int, float)) and 0 <= tissue < 2)
    if not ok:
        raise UserInputError(f"{source} holds no valid grading (thresholds {t!r}, tissue {tissue!r})",
                             hint=_MAKE_ONE)
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return {**obj, "path": source, "sha256": hashlib.sha256(canonical).hexdigest()}


def apply_calibration(options: ScoreOptions, calibration: Mapping[str, Any]) -> ScoreOptions:
    """``ScoreOptions`` graded with the calibration (membrane intensity, its thresholds)."""
    t1, t2, t3 = (float(x) for x in calibration["membrane_thresholds"])
    stain = dataclasses.replace(options.stain, intensity="membrane", membrane_thresholds=(t1, t2, t3),
                                membrane_tissue_od_sum=float(calibration["membrane_tissue_od_sum"]))
    return dataclasses.replace(options, stain=stain,
                               calibration=f"{calibration['path']} (sha256 {calibration['sha256']})")
