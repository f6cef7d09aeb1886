"""The one source of defaults.

Every tunable number of the product lives in a frozen dataclass here. The
CLI, the server and the library API all read these defaults; a run writes
the instances it used into its provenance file (``dataclasses.asdict``).
Change a default here and it changes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
    "SlideConfig",
    "ProjectConfig",
    "PreflightConfig",
    "TILE_SIZE_RANGE",
    "ScoreOptions",
]

#: QuPath classification names of the four HER2 classes, in order 0, 1+, 2+, 3+.
HER2_CLASSES: tuple[str, str, str, str] = ("HER2 0", "HER2 1+", "HER2 2+", "HER2 3+")
#: Their colours (RGB): blue, yellow, vermilion, dark crimson (the first three from Okabe &
#: Ito's colour-blind-safe set). Under simulated protan-, deutan- and tritanopia (Machado et
#: al. 2009, full severity) every pair stays at least 30 CIELAB units apart
#: (tests/test_case_report.py); QuPath's red-orange-yellow ramp falls to 20.
HER2_COLORS: dict[str, tuple[int, int, int]] = {
    "HER2 0": (0, 114, 178),
    "HER2 1+": (240, 228, 66),
    "HER2 2+": (213, 94, 0),
    "HER2 3+": (120, 0, 40),
    "HER2 not evaluable": (150, 150, 150),
}
#: The paper's stain letters for classes 0, 1+, 2+, 3+ (no-stain, faint, weak, strong).
STAIN_LETTERS: tuple[str, str, str, str] = ("N", "F", "W", "S")
#: Marks every object this product writes (name prefix and metadata key), so a
#: re-run replaces only our objects and never the user's.
PRODUCT_MARKER = "her2-qupath"

Guideline = Literal["breast", "gastric", "endometrial"]
Level = Literal["pixel", "cell"]
Aggregation = Literal["guideline", "paper", "paper-adapted"]
Precision = Literal["bf16", "fp32"]


#: Tile sizes f (pixels at the working MPP) the CLI and the server accept: smaller tiles hold
#: too few membranes for a stain class; larger ones do not fit a model's input.
TILE_SIZE_RANGE: tuple[int, int] = (64, 4096)


@dataclass(frozen=True)
class TilingConfig:
    """The tile grid P_R(S): f x f tiles at a working pixel size."""

    tile_size: int = 512  # f, pixels at the working MPP (paper default)
    mpp: float = 0.5  # working resolution, micrometres per pixel
    overlap: int = 0  # pixels at the working MPP shared by neighbours
    min_tissue_fraction: float = 0.05  # keep a tile if >= this fraction is tissue
    min_roi_overlap: float = 0.01  # keep a tile if >= this fraction lies in the ROIs (pixels and
    # cells outside the ROI are masked out of the analysis, so partly covered tiles count only
    # their inside part)
    pad_value: int = 255  # edge tiles are padded with white (glass)


@dataclass(frozen=True)
class TissueConfig:
    """Tissue detection on a low-resolution thumbnail (parameters in micrometres)."""

    thumbnail_mpp: float = 8.0  # resolution of the image the mask is computed on (coarsest)
    thumbnail_min_size: int = 1024  # ... but at least this many pixels on the long side
    closing_um: float = 40.0  # morphological closing radius
    min_object_um2: float = 20_000.0  # drop tissue islands smaller than this
    min_hole_um2: float = 10_000.0  # fill holes smaller than this
    smoothing_um: float = 2.0  # Gaussian sigma of the OD sum before thresholding
    # -- tissue threshold on the OD sum (R+G+B), adapted to the noise of the glass --
    min_od_sum: float = 0.04  # never below: faint haze and JPEG noise on glass
    max_od_sum: float = 0.15  # never above: pale hematoxylin and faint DAB stay tissue
    tissue_noise_quantile: float = 0.99  # of the OD sum on glass ...
    tissue_noise_factor: float = 1.5  # ... times this is the threshold
    # -- glass and white point (see her2_qupath/optics.py) --
    glass_work_um: float = 2.0  # glass is looked for at this pixel size (or coarser)
    glass_window_um: float = 10.0  # window of the local standard deviation
    glass_max_std: float = 2.5  # glass is smooth: brightness std (grey levels) at most this
    glass_max_saturation: float = 0.12  # and grey: (max - min) / max of RGB at most this
    glass_min_brightness: float = 100.0  # and not dark (mean RGB); grey-balanced scans pass
    glass_level_quantile: float = 0.95  # the glass level: this quantile of smooth grey brightness
    glass_tolerance_od: float = 0.012  # glass lies within this OD (mean over RGB) of that level
    glass_min_fraction: float = 0.01  # less glass than this share of the image: doubtful
    glass_min_pixels: int = 50
    fallback_percentile: float = 0.995  # no glass: this per-channel quantile of the image


@dataclass(frozen=True)
class StainConfig:
    """Colour deconvolution and DAB pixel classes (QuPath's positive-cell thresholds)."""

    # Ruifrok & Johnston H-DAB optical-density vectors (same as QuPath's "H-DAB" default
    # and skimage.color.hdx_from_rgb's first two rows).
    hematoxylin: tuple[float, float, float] = (0.650, 0.704, 0.286)
    dab: tuple[float, float, float] = (0.268, 0.570, 0.776)
    residual: tuple[float, float, float] | None = None  # derived as the cross product
    background: tuple[float, float, float] | None = None  # None: estimated per slide
    # What the stain classes measure (docs/stain.md): "membrane" (default) grades the DAB line
    # density of the membranes (her2_qupath/membrane.py, OD·µm, independent of pixel size);
    # "od" classes each pixel by its DAB OD with QuPath's thresholds (literal, for comparison).
    intensity: Literal["membrane", "od"] = "membrane"
    thresholds: tuple[float, float, float] = (0.2, 0.4, 0.6)  # "od": DAB OD for 1+, 2+, 3+
    tissue_od: float = 0.15  # "od": total OD above which a pixel counts as tissue
    # "membrane": line density (OD·µm) a block's membrane reaches for 1+, 2+, 3+; fitted on the
    # real HER2 IHC of the development set with leave-one-out cross-validation
    # (benchmarks/real_her2.py; docs/stain.md says how)
    membrane_thresholds: tuple[float, float, float] = (0.044, 0.136, 0.312)
    # a membrane block is scored when its mean OD sum (R+G+B, against the white point)
    # reaches this: glass, fat, lumina and loose pale stroma stay below, cellular tumour
    # above (the tumour restriction on IHC alone; fitted with the thresholds, docs/stain.md)
    membrane_tissue_od_sum: float = 0.12
    # nuclei are counted for the "too few cells" check in blocks with any tissue (OD sum)
    cell_count_od_sum: float = 0.04
    membrane_work_um: float = 1.0  # the line measure runs at this pixel size (or finer)
    membrane_gain: float = 1.38  # block intensity per OD·µm of membrane (1 / 0.725, measured)
    membrane_sigma_um: float = 1.0  # Gaussian sigma before the line measure (wider than a membrane)
    membrane_max_width_um: float = 4.0  # staining wider than this is not membrane (opening)
    membrane_block_um: float = 8.0  # neighbourhood (about one cell) that gets one class
    membrane_block_quantile: float = 0.9  # a block's intensity: this quantile of its line density
    membrane_block_min_tissue: float = 0.5  # blocks less inside an ROI than this are left out
    # nucleus count for the "too few cells" check at pixel level (membrane.count_nuclei)
    nucleus_count_um: float = 1.0  # the hematoxylin plane is reduced to this pixel size
    nucleus_sigma_um: float = 2.5  # LoG scale (nuclei of about 7 µm)
    nucleus_spacing_um: float = 5.0  # two blobs closer than this count once
    nucleus_log_min: float = 0.02  # minimal scale-normalised LoG response (hematoxylin OD)
    # tumour restriction on IHC alone (membrane grading): blocks among fewer nuclei per
    # 1000 µm² than this are left out (stroma, fat); 0 = off, the default (docs/stain.md)
    min_cell_density: float = 0.0
    cellularity_window_um: float = 24.0  # the density is counted over this square
    estimate_vectors: bool = False  # Macenko-style estimation from the slide
    # Macenko-style stain vector estimation (Macenko et al., ISBI 2009).
    macenko_min_od: float = 0.3  # OD sum (R+G+B) for a pixel to enter the estimate
    macenko_alpha: float = 1.0  # angle percentiles alpha and 100 - alpha
    macenko_min_pixels: int = 500
    macenko_max_cos: float = 0.99  # the two directions must differ more than this
    macenko_min_ref_cos: float = 0.8  # each must lie this close to its reference vector
    # Stain check: H&E or DAB IHC? Tissue OD is unmixed into hematoxylin, eosin and DAB
    # (Ruifrok & Johnston's eosin vector); measured eosin shares: H&E slides 0.23-0.68,
    # DAB IHC 0.00-0.05 (docs/stain.md).
    eosin: tuple[float, float, float] = (0.072, 0.990, 0.105)
    max_ihc_eosin_share: float = 0.12  # above this, an "IHC" slide looks like H&E


@dataclass(frozen=True)
class CellConfig:
    """Nucleus detection and membrane analysis (micrometres, so it holds across magnifications)."""

    smoothing_um: float = 1.0  # Gaussian sigma on the hematoxylin channel
    nucleus_min_area_um2: float = 10.0
    nucleus_max_area_um2: float = 400.0
    expansion_um: float = 5.0  # bounded nucleus-to-cell expansion (QuPath's default)
    membrane_width_um: float = 3.0  # width of the band inside the cell boundary searched for membrane
    complete_fraction: float = 0.7  # ring fraction above the 1+ threshold for "complete"
    # stain.intensity == "membrane": line density (OD·µm) of the stained ring sectors for
    # 1+, 2+, 3+ (benchmarks/real_her2.py, docs/cells.md)
    membrane_thresholds: tuple[float, float, float] = (0.027, 0.077, 0.2)
    # Nucleus detection (see docs/cells.md). "hematoxylin" suits membrane stains (HER2):
    # membranes are DAB, so DAB must not count as nucleus. "hematoxylin+dab" (pixelwise
    # maximum of the two ODs) suits nuclear stains (Ki67, ER, PR) whose positive nuclei are brown.
    nucleus_channel: Literal["hematoxylin", "hematoxylin+dab"] = "hematoxylin"
    nucleus_max_od: float = 1.5  # channel OD clipped here (saturated nuclei do not dominate)
    background_radius_um: float = 8.0  # local background: grey opening (QuPath's default)
    nucleus_threshold_od: float = 0.05  # channel OD above the local background for a nucleus
    opening_um: float = 1.5  # binary opening radius, removes specks and thin bridges
    split_sigma_um: float = 2.0  # Laplacian-of-Gaussian scale of the watershed seeds
    split_min_distance_um: float = 2.5  # minimum distance between two nucleus seeds
    boundary_fraction: float = 0.5  # nucleus edge at this fraction of its peak contrast (0: off)
    completeness_sectors: int = 36  # angular sectors of the membrane ring (10 degrees each)
    membrane_layer_um: float = 0.5  # depth layers of a ring sector; its OD = the darkest layer
    min_positive_fraction: float = 0.1  # ring fraction above the 1+ threshold for any 1+
    strong_partial_fraction: float = 0.5  # strong (>= 3+ OD) but incomplete rings: 2+ from here
    polygon_tolerance_px: float = 0.5  # Douglas-Peucker tolerance of the exported outlines
    # Cells are detected on the tile plus this margin and kept when their centroid lies in
    # the tile itself, so a cell cut by a tile border is counted exactly once.
    tile_margin_um: float = 15.0
    # A LoG seed is kept only when its response dips by at least this fraction of its peak on
    # every path to a higher seed (relative h-maxima): one large pale nucleus gives one seed.
    # 0 keeps every LoG maximum.
    split_min_dip: float = 0.25


@dataclass(frozen=True)
class GuidelineRule:
    """A cumulative tumor-cell percentage rule: 3+ if >t3 %, else 2+ if >t2 %, ...

    Comparisons are strict (``>``) unless the rule's wording says "at least"
    (``>=``); ``inclusive`` flags that per threshold, in the order (t3, t2, t1).
    ``t2_strong`` (endometrial) also scores 2+ when the percentage at 3+ exceeds
    it although it does not exceed ``t3`` ("intense staining in <=30 %").
    See docs/scoring.md for the wording of each guideline.
    """

    name: str
    reference: str
    t3: float  # percent of tumor cells at 3+ for a 3+ score
    t2: float  # percent at >= 2+ for a 2+ score
    t1: float  # percent at >= 1+ for a 1+ score
    inclusive: tuple[bool, bool, bool] = (False, False, False)  # ">=" for (t3, t2, t1)
    t2_strong: float | None = None  # 2+ also when percent at 3+ > this (endometrial)
    wording: str = ""  # the criteria as published, for reports


GUIDELINES: dict[str, GuidelineRule] = {
    "breast": GuidelineRule(
        "breast",
        "Wolff AC et al., Human Epidermal Growth Factor Receptor 2 Testing in Breast Cancer: "
        "ASCO/CAP Clinical Practice Guideline Focused Update, J Clin Oncol 2018;36:2105-22 "
        "(affirmed in the 2023 update, Wolff AC et al., J Clin Oncol 2023;41:3867-72)",
        10.0,
        10.0,
        10.0,
        wording=(
            "3+: circumferential membrane staining that is complete, intense, in >10% of tumor "
            "cells; 2+: weak to moderate complete membrane staining in >10% of tumor cells; "
            "1+: incomplete membrane staining that is faint/barely perceptible in >10% of tumor "
            "cells; 0: no staining, or incomplete faint/barely perceptible staining in <=10%"
        ),
    ),
    "gastric": GuidelineRule(
        "gastric",
        "Bartley AN et al., HER2 Testing and Clinical Decision Making in Gastroesophageal "
        "Adenocarcinoma: Guideline From CAP, ASCP, and ASCO, J Clin Oncol 2017;35:446-64 "
        "(surgical-specimen criteria of Hofmann M et al., Histopathology 2008;52:797-805)",
        10.0,
        10.0,
        10.0,
        inclusive=(True, True, True),
        wording=(
            "surgical specimen: 3+: strong complete, basolateral or lateral membranous "
            "reactivity in >=10% of tumor cells; 2+: weak to moderate complete, basolateral or "
            "lateral membranous reactivity in >=10%; 1+: faint/barely perceptible membranous "
            "reactivity in >=10%, cells reactive only in part of their membrane; 0: no "
            "reactivity or membranous reactivity in <10% of tumor cells"
        ),
    ),
    "endometrial": GuidelineRule(
        "endometrial",
        "Buza N et al., Reproducibility of scoring criteria for HER2 immunohistochemistry in "
        "endometrial serous carcinoma: a multi-institutional interobserver agreement study, "
        "Mod Pathol 2021;34:1194-1202 (criteria proposed in Buza N, Arch Pathol Lab Med "
        "2021;145:687-91, from the trial of Fader AN et al., J Clin Oncol 2018;36:2044-51)",
        30.0,
        10.0,
        1.0,
        inclusive=(False, True, False),
        t2_strong=1.0,
        wording=(
            "3+: intense complete or basolateral/lateral membranous staining in >30% of tumor "
            "cells; 2+: complete or basolateral/lateral membranous staining that is weak to "
            "moderate in >=10% of tumor cells, or intense in <=30%; 1+: faint/barely "
            "perceptible incomplete membranous staining in any proportion, or weak complete "
            "staining in <10%; 0: no staining. 'Any proportion' is read as >1% (t1, "
            "t2_strong) so that isolated stained pixels do not decide the score; set 0 "
            "for the literal rule"
        ),
    ),
}


@dataclass(frozen=True)
class ScoringConfig:
    guideline: Guideline = "breast"
    level: Level = "pixel"
    aggregation: Aggregation = "guideline"
    # A stain letter (N, F, W, S) is "present" in a tile when its class holds at
    # least this fraction of the tile's analysed (non-background) pixels.
    min_letter_fraction: float = 0.01
    # Tiles whose H&E partner the tumor classifier calls non-tumor do not count.
    exclude_non_tumor: bool = True
    # "Not evaluable" rather than a score (no evidence is not a negative; docs/scoring.md):
    min_tissue_mm2: float = 0.01  # less analysed tissue than this (about 100 tumour cells)
    min_cells: int = 400  # fewer nuclei found (cells detected at cell level) than this


@dataclass(frozen=True)
class ModelConfig:
    """Inference settings of the transformer models C, L and M."""

    precision: Precision = "bf16"
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
    weight_decay: float = 0.05  # AdamW
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warm-up
    warmup_fraction: float = 0.05  # share of all steps spent warming the learning rate up
    augment: bool = True  # flips, 90-degree rotations, HED stain and brightness jitter
    hed_jitter: float = 0.05  # sigma of the per-channel HED scale/shift (Tellez et al. 2018)
    brightness_jitter: float = 0.1  # maximal relative brightness/contrast change
    max_tiles_per_annotation: int = 64  # cap when cutting tiles from QuPath annotations
    min_annotation_overlap: float = 0.5  # a tile is cut if this share lies inside the annotation
    num_threads: int | None = None  # torch threads; None: all CPUs this process may use
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast mixed precision where the CPU has it


@dataclass(frozen=True)
class RegistrationConfig:
    model: Literal["rigid", "affine", "nonrigid"] = "nonrigid"  # the most accurate; affine part for QuPath
    work_mpp: float = 2.0  # the affine stage never works finer than this (µm/px)
    rotation_step_deg: float = 5.0
    allow_mirror: bool = False
    min_quality: float = 0.5  # below this the mapping is flagged unreliable
    # -- resolutions: set by pixel counts over the larger image, bounded below by the MPPs --
    coarse_size: int = 256  # longest side (px) of the images of the rotation search
    max_work_size: int = 768  # longest side (px) of the finest affine level
    nonrigid_mpp: float = 1.0  # the non-rigid stage never works finer than this (µm/px)
    max_nonrigid_size: int = 2048  # longest side (px) of the non-rigid level
    # -- tissue masks on the working images --
    min_od: float = 0.06  # OD (sum over RGB) below which a pixel is always glass
    mask_closing_px: int = 2  # closing radius, working pixels
    mask_min_area_fraction: float = 0.0005  # drop specks smaller than this image fraction
    min_tissue_fraction: float = 0.002  # less tissue than this: RegistrationError
    # -- search and optimisation --
    coarse_candidates: int = 3  # best rotations refined with ECC before choosing
    ecc_iterations: int = 200
    ecc_eps: float = 1e-6
    ecc_gauss: int = 5  # Gaussian filter size inside ECC (odd)
    # -- non-rigid refinement --
    nonrigid_patch_px: int = 48  # block-matching patch side (non-rigid px)
    nonrigid_step_px: int = 8  # spacing of the patches (non-rigid px)
    nonrigid_radius_px: int = 8  # search radius around the affine position (non-rigid px)
    nonrigid_max_patches: int = 20_000  # more tissue than this many patches: wider spacing
    nonrigid_min_ncc: float = 0.3  # weaker local matches are ignored
    nonrigid_outlier_px: float = 3.0  # matches this far from the smoothed field are dropped (0: keep all)
    nonrigid_smoothing_px: float = 20.0  # Gaussian sigma of the displacement field (non-rigid px)
    nonrigid_grid_px: int = 10  # spacing of the stored field's grid (non-rigid px)
    quality_smoothing_px: float = 2.0  # Gaussian sigma before the correlation (working px)
    quality_ncc_floor: float = 0.3  # correlation at or below this: quality 0
    quality_ncc_full: float = 0.6  # correlation at or above this: quality = tissue Dice


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
    dask_timeout_s: float = 10.0  # connecting to the Dask scheduler (checked at start)
    models_dir: str | None = None  # directory whose sub-directories are model directories
    calibration: str | None = None  # calibration file applied to every request (calibrate)
    max_sync_concurrency: int = 2  # synchronous /score requests computed at once
    retry_after_s: int = 10  # Retry-After of a 429 (queue full)
    progress_write_interval_s: float = 0.25  # throttle of job-progress writes to SQLite
    purge_interval_s: float = 60.0  # how often expired results are removed
    shutdown_grace_s: float = 10.0  # wait for running jobs to stop on SIGTERM/SIGINT
    wsgi_threads: int = 8  # request threads of the WSGI server
    # the WSGI server (waitress): bodies above max_request_bytes are refused before they are read
    wsgi_connection_limit: int = 256  # open connections; more wait in the listen backlog
    wsgi_channel_timeout_s: int = 20  # an idle connection (or a half-sent request) is closed after this
    max_crash_retries: int = 2  # a job running at a crash is retried this often, then failed
    max_stored_request_bytes: int = 256 * 1024**2  # requests (ROIs) of unfinished jobs held at once
    # work budget, checked before any pixel is read: pixels per tile are those read from the
    # slide's pyramid level or those analysed at the working resolution, whichever is more
    max_sync_pixels: int = 64 * 1024**2  # a synchronous /score (more: 413, submit a job)
    max_job_pixels: int = 32 * 1024**3  # one job
    max_sync_seconds: float = 60.0  # a synchronous /score still running then is stopped (413)
    min_mpp: float = 0.05  # pixel sizes (ihc_mpp, he_mpp, options.mpp) outside this range: 400
    max_mpp: float = 50.0
    worker_retry_s: float = 1.0  # pause of a job worker after an error outside a job
    repair_db: bool = False  # a damaged jobs database is moved aside and an empty one started


@dataclass(frozen=True)
class SlideConfig:
    """Slide reading: tile cache, thumbnails and which pixel sizes are believable."""

    tile_cache_mb: float = 128.0  # decoded tiles kept per open slide (LRU)
    thumbnail_max_size: int = 1024  # default longest side of Slide.thumbnail()
    min_plausible_mpp: float = 0.01  # TIFF/PNG resolution tags outside this range
    max_plausible_mpp: float = 50.0  # (e.g. 72 dpi = 353 µm/px) are ignored
    whole_image_max_pixels: int = 200_000_000  # PNG/JPEG are decoded whole; refuse larger


@dataclass(frozen=True)
class ProjectConfig:
    """QuPath project batch runs: pairing, locking heuristics and file naming."""

    output_dirname: str = "her2_qupath"  # PROJECT/<this>/<entryID>/ holds per-image results
    roi_filename: str = "rois.geojson"  # written by export_annotations.groovy per entry
    detections_filename: str = "detections.geojson"
    annotations_filename: str = "annotations.geojson"
    summary_filename: str = "summary.json"
    he_stains: tuple[str, ...] = ("HE", "H&E", "H-E", "H_E")  # stain names meaning H&E (case-insensitive)
    case_metadata_key: str = "case"  # image metadata naming the case (pairing by metadata)
    stain_metadata_key: str = "stain"  # image metadata naming the stain
    recent_write_seconds: float = 120.0  # a project saved this recently looks open in QuPath
    backup_dirname: str = "backups"  # under output_dirname
    lock_filename: str = ".her2-qupath.lock"  # our own lock while writing the project


@dataclass(frozen=True)
class PreflightConfig:
    """Input sanity checked before any pixel is analysed (:mod:`her2_qupath.preflight`).

    A pixel size outside ``min_mpp``..``max_mpp`` (brightfield scans: 0.1 to 2 µm/px;
    thumbnails and macro images up to ~20) or one that would enlarge the image's pixels more
    than ``max_upsample`` times at the working resolution is refused unless forced; a run whose
    tile grid or memory estimate exceeds the budget is refused (give a larger tile or working
    pixel size, or an ROI).
    """

    min_mpp: float = 0.05  # µm/px of the image (--mpp, the file's, the project's)
    max_mpp: float = 20.0
    max_upsample: float = 8.0  # working MPP finer than the image's pixels by more than this
    max_tiles: int = 200_000  # tiles of the grid over the slide (or the ROIs' bounding boxes)
    bytes_per_tile: int = 64 * 1024  # grid, tile objects and measurements held per tile
    bytes_per_cell_tile: int = 256 * 1024  # --level cell: the tile's cells as well
    max_memory_gb: float = 16.0  # estimate of the run's memory for its tiles


@dataclass(frozen=True)
class ScoreOptions:
    """Everything that shapes a scoring run; every default comes from the configs above."""

    tiling: TilingConfig = field(default_factory=TilingConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    stain: StainConfig = field(default_factory=StainConfig)
    cells: CellConfig = field(default_factory=CellConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    tumor_model: Path | None = None
    stain_model: Path | None = None
    seg_model: Path | None = None
    stain_vectors: str | None = None  # QuPath stain string; None = defaults / estimate
    calibration: str | None = None  # the calibration file applied (recorded in the provenance)
    record_blocks: bool = False  # keep every membrane block's measures (for calibrate)
    clip_tiles: bool = False  # tile outlines cut to the scored regions (their numbers unchanged)
