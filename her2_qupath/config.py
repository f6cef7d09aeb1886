"""The one source of defaults.

Every tunable number of the product lives in a frozen dataclass here. The
CLI, the server and the library API all read these defaults; a run writes
the instances it used into its provenance file (``dataclasses.asdict``).
Change a default here and it changes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "HER2_CLASSES",
    "HER2_COLORS",
    "STAIN_LETTERS",
    "PRODUCT_MARKER",
    "TilingConfig",
    "TissueConfig",
    "StainConfig",
    "CellConfig",
    "GuidelineRule",
    "GUIDELINES",
    "ScoringConfig",
    "ModelConfig",
    "TrainConfig",
    "RegistrationConfig",
    "ServerConfig",
]

#: QuPath classification names of the four HER2 classes, in order 0, 1+, 2+, 3+.
HER2_CLASSES: tuple[str, str, str, str] = ("HER2 0", "HER2 1+", "HER2 2+", "HER2 3+")
#: Their colours (RGB), the blue-yellow-orange-red ramp QuPath uses for 0/1+/2+/3+.
HER2_COLORS: dict[str, tuple[int, int, int]] = {
    "HER2 0": (112, 112, 225),
    "HER2 1+": (255, 215, 0),
    "HER2 2+": (255, 128, 0),
    "HER2 3+": (200, 0, 0),
}
#: The paper's stain letters for classes 0, 1+, 2+, 3+ (no-stain, faint, weak, strong).
STAIN_LETTERS: tuple[str, str, str, str] = ("N", "F", "W", "S")
#: Marks every object this product writes (name prefix and metadata key), so a
#: re-run replaces only our objects and never the user's.
PRODUCT_MARKER = "her2-qupath"

Guideline = Literal["breast", "gastric", "endometrial"]
Level = Literal["pixel", "cell"]
Aggregation = Literal["guideline", "paper"]


@dataclass(frozen=True)
class TilingConfig:
    """The tile grid P_R(S): f x f tiles at a working pixel size."""

    tile_size: int = 512  # f, pixels at the working MPP (paper default)
    mpp: float = 0.5  # working resolution, micrometres per pixel
    overlap: int = 0  # pixels at the working MPP shared by neighbours
    min_tissue_fraction: float = 0.25  # keep a tile if >= this fraction is tissue
    min_roi_overlap: float = 0.5  # keep a tile if >= this fraction lies in the ROIs
    pad_value: int = 255  # edge tiles are padded with white (glass)


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection on a low-resolution thumbnail (parameters in micrometres)."""

    thumbnail_mpp: float = 8.0  # resolution of the image the mask is computed on
    min_od: float = 0.05  # optical density (mean over RGB) above which a pixel is tissue
    closing_um: float = 40.0  # morphological closing radius
    min_object_um2: float = 20_000.0  # drop tissue islands smaller than this
    min_hole_um2: float = 10_000.0  # fill holes smaller than this


@dataclass(frozen=True)
class StainConfig:
    """Colour deconvolution and DAB pixel classes (QuPath's positive-cell thresholds)."""

    # Ruifrok & Johnston H-DAB optical-density vectors (same as QuPath's "H-DAB" default
    # and skimage.color.hdx_from_rgb's first two rows).
    hematoxylin: tuple[float, float, float] = (0.650, 0.704, 0.286)
    dab: tuple[float, float, float] = (0.268, 0.570, 0.776)
    residual: tuple[float, float, float] | None = None  # derived as the cross product
    background: tuple[float, float, float] | None = None  # None: estimated per slide
    thresholds: tuple[float, float, float] = (0.2, 0.4, 0.6)  # DAB OD for 1+, 2+, 3+
    tissue_od: float = 0.15  # total OD above which a pixel counts as tissue (not background)
    estimate_vectors: bool = False  # Macenko-style estimation from the slide


@dataclass(frozen=True)
class CellConfig:
    """Nucleus detection and membrane analysis (micrometres, so it holds across magnifications)."""

    smoothing_um: float = 1.0  # Gaussian sigma on the hematoxylin channel
    nucleus_min_area_um2: float = 10.0
    nucleus_max_area_um2: float = 400.0
    expansion_um: float = 5.0  # bounded nucleus-to-cell expansion (QuPath's default)
    membrane_width_um: float = 1.5  # width of the cell boundary band
    complete_fraction: float = 0.7  # ring fraction above the 1+ threshold for "complete"


@dataclass(frozen=True)
class GuidelineRule:
    """A cumulative tumor-cell percentage rule: 3+ if >t3 %, else 2+ if >t2 %, ..."""

    name: str
    reference: str
    t3: float  # percent of tumor cells at 3+ for a 3+ score
    t2: float  # percent at >= 2+ for a 2+ score
    t1: float  # percent at >= 1+ for a 1+ score


GUIDELINES: dict[str, GuidelineRule] = {
    "breast": GuidelineRule(
        "breast",
        "Wolff AC et al., ASCO/CAP HER2 testing in breast cancer, J Clin Oncol 2018;36:2105-22 "
        "(affirmed in the 2023 update, J Clin Oncol 2023;41:3867-72)",
        10.0,
        10.0,
        10.0,
    ),
    "gastric": GuidelineRule(
        "gastric",
        "Bartley AN et al., HER2 testing in gastroesophageal adenocarcinoma, CAP/ASCP/ASCO, "
        "J Clin Oncol 2017;35:446-64",
        10.0,
        10.0,
        10.0,
    ),
    "endometrial": GuidelineRule(
        "endometrial",
        "Buza N et al., HER2 testing and reporting in endometrial serous carcinoma, "
        "Mod Pathol 2021;34:1789-99",
        30.0,
        10.0,
        10.0,
    ),
}


@dataclass(frozen=True)
class ScoringConfig:
    guideline: Guideline = "breast"
    level: Level = "pixel"
    aggregation: Aggregation = "guideline"


@dataclass(frozen=True)
class ModelConfig:
    """Inference settings of the transformer models C, L and M."""

    precision: Literal["fp32", "bf16"] = "bf16"
    batch_size: int = 32
    num_workers: int = 1  # tile-reading threads running beside compute
    tumor_threshold: float = 0.5  # probability above which an H&E tile is tumor
    classifier_input: int = 224
    segmenter_input: int = 512


@dataclass(frozen=True)
class TrainConfig:
    """Training defaults from the paper's Table 1 (C and L; M overrides lr/batch/epochs)."""

    lr: float = 2e-4
    batch_size: int = 16
    epochs: int = 20
    seg_lr: float = 5e-5
    seg_batch_size: int = 2
    seg_epochs: int = 50
    val_fraction: float = 0.2
    patience: int = 5  # early stopping, epochs without improvement
    seed: int = 0


@dataclass(frozen=True)
class RegistrationConfig:
    model: Literal["rigid", "affine", "nonrigid"] = "affine"
    work_mpp: float = 20.0  # resolution of the coarse search (micrometres/pixel)
    rotation_step_deg: float = 5.0
    allow_mirror: bool = False
    min_quality: float = 0.5  # below this the mapping is flagged unreliable


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_queue: int = 32
    max_request_bytes: int = 16 * 1024 * 1024
    max_roi_vertices: int = 100_000
    max_tiles_per_job: int = 20_000
    max_sync_tiles: int = 16  # larger synchronous /score requests get 413
    result_ttl_hours: float = 24.0 * 7
    max_results_bytes: int = 2 * 1024**3
    requeue_interrupted: bool = True
    image_roots: tuple[str, ...] = field(default_factory=tuple)
    data_dir: str | None = None  # None: the user's data directory (XDG / platformdirs)
    token: str | None = None  # None: generated (and kept 0600 in data_dir) when one is needed
    require_token: bool = False  # True: token on every route but health even on loopback
    workers: int = 0  # jobs run at once; 0: the CPU count
    dask_scheduler: str | None = None  # tcp://HOST:PORT of a Dask cluster for tile work
    models_dir: str | None = None  # directory whose sub-directories are model directories
    max_sync_concurrency: int = 2  # synchronous /score requests computed at once
    retry_after_s: int = 10  # Retry-After of a 429 (queue full)
    progress_write_interval_s: float = 0.25  # throttle of job-progress writes to SQLite
    purge_interval_s: float = 60.0  # how often expired results are removed
    shutdown_grace_s: float = 10.0  # wait for running jobs to stop on SIGTERM/SIGINT
    wsgi_threads: int = 8  # request threads of the WSGI server
