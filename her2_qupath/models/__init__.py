"""The transformer models of the pipeline: C (H&E tumor classifier), L (IHC stain
classifier) and M (IHC stain segmenter).

Public names are imported lazily from the submodules, so ``import her2_qupath.models``
does not import torch or transformers:

* :mod:`.io` -- model directories: :func:`load_model`, :func:`save_model`, :class:`LoadedModel`;
* :mod:`.infer` -- :func:`classify_tiles`, :func:`segment_tiles` (batched, bf16 where supported);
* :mod:`.attention` -- attention rollout, probability heatmaps, PNG overlays, per-tile measurements;
* :mod:`.datasets` -- labelled tiles from class folders, QuPath annotations or mask pairs;
* :mod:`.train` -- :func:`train_classifier`, :func:`train_segmenter`;
* :mod:`.evaluation` -- :func:`evaluate`, :func:`write_evaluation` and the metrics.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "LoadedModel": "io", "ModelSpec": "io", "Preprocessing": "io", "load_model": "io",
    "save_model": "io", "validate_model_dir": "io", "model_fingerprint": "io", "make_spec": "io", "build_network": "io",
    "STAIN_LABELS": "io", "SEGMENTER_LABELS": "io", "CLASSIFIER_ARCHS": "io", "SEGMENTER_ARCHS": "io",
    "classify_tiles": "infer", "segment_tiles": "infer", "stain_grades": "infer", "bf16_supported": "infer",
    "attention_rollout": "attention", "probability_heatmap": "attention",
    "heatmap_overlay": "attention", "write_heatmap_png": "attention", "tile_measurements": "attention",
    "attention_heatmap": "attention", "slide_heatmaps": "attention", "heatmap_images": "attention", "SlideHeatmaps": "attention",
    "TileDataset": "datasets", "MaskDataset": "datasets", "load_tile_folders": "datasets",
    "load_mask_pairs": "datasets", "load_qupath_annotations": "datasets",
    "discover_dataset": "datasets", "split_by_group": "datasets",
    "TrainResult": "train", "train_classifier": "train", "train_segmenter": "train",
    "evaluate": "evaluation", "write_evaluation": "evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
