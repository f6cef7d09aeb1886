"""Model directories: the on-disk format of the models C, L and M, and loading them.

A model directory is what ``transformers``' ``save_pretrained`` writes
(``config.json`` + ``model.safetensors``) plus ``her2_qupath.json`` beside it,
which says what the network means:

* ``kind``: ``tumor`` (C, H&E tumour classifier), ``stain`` (L, IHC stain-intensity
  classifier) or ``segmenter`` (M, IHC stain segmenter);
* ``labels``: class names by output index, and for ``stain``/``segmenter`` the value
  each class takes in the stain map (0 background, 1 HER2 0, 2 1+, 3 2+, 4 3+);
* ``preprocessing``: working pixel size, tile size, network input size, mean/std;
* ``provenance``: training data hash, configuration and metrics, weight checksum.

Models load only from local directories (never from a hub).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._io import atomic_write_json, sha256_file
from ..errors import ModelError

__all__ = [
    "ModelKind",
    "SPEC_FILE",
    "FORMAT_VERSION",
    "STAIN_LABELS",
    "SEGMENTER_LABELS",
    "CLASSIFIER_ARCHS",
    "SEGMENTER_ARCHS",
    "SEGMENTER_TYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocessing",
    "ModelSpec",
    "LoadedModel",
    "stain_value",
    "make_spec",
    "build_network",
    "save_model",
    "load_model",
    "validate_model_dir",
    "model_fingerprint",
]

log = logging.getLogger(__name__)

ModelKind = Literal["tumor", "stain", "segmenter"]
KINDS: tuple[str, ...] = ("tumor", "stain", "segmenter")
SPEC_FILE = "her2_qupath.json"
FORMAT_VERSION = 1

#: Default classes of the stain classifier L (stain-map values 1..4).
STAIN_LABELS: tuple[str, ...] = ("no-stain", "faint", "weak", "strong")
#: Default classes of the segmenter M (stain-map values 0..4).
SEGMENTER_LABELS: tuple[str, ...] = ("background", "HER2 0", "HER2 1+", "HER2 2+", "HER2 3+")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: ViT presets: the configurations of google/vit-small-patch16-224 and vit-base-patch16-224,
#: and a tiny one for tests and quick experiments.
CLASSIFIER_ARCHS: dict[str, dict[str, Any]] = {
    "vit-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                      intermediate_size=1536, patch_size=16, image_size=224),
    "vit-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, patch_size=16, image_size=224),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, patch_size=8, image_size=64),
}
#: SegFormer presets: MiT-b0 (the smallest published encoder) and a tiny one for tests.
SEGMENTER_ARCHS: dict[str, dict[str, Any]] = {
    "segformer-b0": dict(depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256],
                         num_attention_heads=[1, 2, 5, 8], decoder_hidden_size=256,
                         image_size=512),
    "segformer-b1": dict(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 320, 512],
                         num_attention_heads=[1, 2, 5, 8], decoder_hidden_size=256,
                         image_size=512),
    "tiny": dict(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
                 num_attention_heads=[1, 1, 2, 4], decoder_hidden_size=64, image_size=64),
    # MaskFormer (Cheng et al. 2021) with a Swin backbone: the configuration of
    # facebook/maskformer-swin-tiny-ade, and a tiny one for tests.
    "maskformer-swin-tiny": dict(
        family="maskformer", image_size=512,
        backbone=dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
        fpn_feature_size=256, mask_feature_size=256, num_queries=100,
        decoder=dict(d_model=256, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                     decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048)),
    "maskformer-tiny": dict(
        family="maskformer", image_size=64,
        backbone=dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], window_size=4),
        fpn_feature_size=32, mask_feature_size=32, num_queries=10,
        decoder=dict(d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)),
}
#: transformers model types a segmenter directory may hold.
SEGMENTER_TYPES: tuple[str, ...] = ("segformer", "maskformer")

# Names accepted for each stain-map value (case- and space-insensitive).
_VALUE_NAMES: dict[int, tuple[str, ...]] = {
    0: ("background", "bg", "glass", "none", "ignore"),
    1: ("0", "her20", "her2-0", "no-stain", "nostain", "no", "n", "negative", "neg"),
    2: ("1+", "1", "her21+", "her2-1+", "faint", "f"),
    3: ("2+", "2", "her22+", "her2-2+", "weak", "w", "moderate"),
    4: ("3+", "3", "her23+", "her2-3+", "strong", "s"),
}


def stain_value(name: str) -> int | None:
    """The stain-map value (0 background, 1 HER2 0, 2 1+, 3 2+, 4 3+) a class name denotes."""
    key = name.strip().lower().replace(" ", "").replace("_", "-")
    for value, names in _VALUE_NAMES.items():
        if key in names or key.replace("-", "") in {n.replace("-", "") for n in names}:
            return value
    return None


@dataclass(frozen=True)
class Preprocessing:
    """How tiles are cut and fed: pixel size, tile size, network input, normalisation."""

    mpp: float
    tile_size: int
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ModelSpec:
    """The contents of ``her2_qupath.json``."""

    kind: ModelKind
    arch: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    values: tuple[int, ...] | None = None  # stain-map value per label (stain, segmenter)
    positive_label: str | None = None  # tumor: the class whose probability is "tumor"
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def positive_index(self) -> int | None:
        return None if self.positive_label is None else self.labels.index(self.positive_label)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["id2label"] = {str(i): name for i, name in enumerate(self.labels)}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], *, where: str = SPEC_FILE) -> ModelSpec:
        try:
            pre = d["preprocessing"]
            return cls(
                kind=d["kind"],
                arch=str(d.get("arch", "unknown")),
                labels=tuple(str(x) for x in d["labels"]),
                preprocessing=Preprocessing(
                    mpp=float(pre["mpp"]), tile_size=int(pre["tile_size"]),
                    input_size=int(pre["input_size"]),
                    mean=tuple(float(x) for x in pre.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
                    std=tuple(float(x) for x in pre.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
                ),
                values=None if d.get("values") is None else tuple(int(v) for v in d["values"]),
                positive_label=d.get("positive_label"),
                provenance=dict(d.get("provenance") or {}),
                format_version=int(d.get("format_version", FORMAT_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{where} is incomplete or malformed ({err!r})",
                             hint="re-save the model with her2-qupath train or see docs/models.md") from err


@dataclass
class LoadedModel:
    """A network ready for inference, with what it means."""

    spec: ModelSpec
    network: Any  # torch.nn.Module (ViTForImageClassification or SegformerForSemanticSegmentation)
    path: Path | None = None

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def num_labels(self) -> int:
        return len(self.spec.labels)

    @property
    def input_size(self) -> int:
        return self.spec.preprocessing.input_size

    @property
    def tumor_index(self) -> int:
        """Column of the tumor class in ``classify_tiles`` output (tumor models only)."""
        if self.spec.positive_index is None:
            raise ModelError(f"a {self.kind} model has no tumor class", hint="pass the tumor model (C)")
        return self.spec.positive_index

    @property
    def grade_of_class(self) -> tuple[int, ...]:
        """HER2 grade (0..3) of each output class of a stain classifier (class order may be any)."""
        if self.kind != "stain" or self.spec.values is None:
            raise ModelError(f"a {self.kind} model has no stain grades", hint="pass the stain model (L)")
        return tuple(v - 1 for v in self.spec.values)

    def network_as(self, dtype: Any) -> Any:
        """The network with weights in ``dtype`` (a cast copy is cached; the original is kept)."""
        import copy

        if next(self.network.parameters()).dtype == dtype:
            return self.network
        cache = self.__dict__.setdefault("_casts", {})
        if dtype not in cache:
            cache[dtype] = copy.deepcopy(self.network).to(dtype).eval()
        return cache[dtype]

    def weights_changed(self) -> None:
        """Drop cached casts after the fp32 weights were modified (training)."""
        self.__dict__.pop("_casts", None)
        self.__dict__.pop("_fast", None)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars (the product reports progress itself)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _check_labels(spec: ModelSpec, where: str) -> None:
    labels = spec.labels
    if len(set(labels)) != len(labels):
        raise ModelError(f"{where}: duplicate class names in {list(labels)}",
                         hint="give every class a distinct name")
    if spec.kind == "tumor":
        if len(labels) < 2:
            raise ModelError(f"{where}: a tumor classifier needs at least 2 classes, got {list(labels)}",
                             hint="train on tumor and non-tumor tiles")
        if spec.positive_label not in labels:
            raise ModelError(f"{where}: positive class {spec.positive_label!r} is not one of {list(labels)}",
                             hint="set positive_label to the tumor class")
        return
    expected = {1, 2, 3, 4} if spec.kind == "stain" else {0, 1, 2, 3, 4}
    values = spec.values
    if values is None or len(values) != len(labels) or set(values) != expected or len(labels) != len(expected):
        raise ModelError(
            f"{where}: a {spec.kind} model needs {len(expected)} classes mapping one-to-one onto the stain "
            f"values {sorted(expected)}, got labels {list(labels)} with values {values}",
            hint="use classes " + ", ".join(STAIN_LABELS if spec.kind == "stain" else SEGMENTER_LABELS))


def _check_network_config(spec: ModelSpec, config: Any, where: str) -> None:
    model_type = getattr(config, "model_type", None)
    allowed = SEGMENTER_TYPES if spec.kind == "segmenter" else ("vit",)
    if model_type not in allowed:
        raise ModelError(f"{where}: a {spec.kind} model must be a {' or '.join(allowed)} network, "
                         f"config.json says {model_type!r}",
                         hint="convert the weights as described in docs/models.md")
    want = model_type
    if int(config.num_labels) != len(spec.labels):
        raise ModelError(f"{where}: the network has {config.num_labels} outputs but {SPEC_FILE} lists "
                         f"{len(spec.labels)} classes", hint="the label map does not belong to these weights")
    size = spec.preprocessing.input_size
    if want == "vit":
        if int(config.image_size) != size or size % int(config.patch_size):
            raise ModelError(f"{where}: input size {size} does not match the network's image_size "
                             f"{config.image_size} (patch {config.patch_size})",
                             hint=f"set preprocessing.input_size to {config.image_size}")
    elif size <= 0 or size % 32:
        raise ModelError(f"{where}: segmenter input size {size} is not a positive multiple of 32",
                         hint="use 512 (the paper's tile size) or another multiple of 32")


def make_spec(kind: ModelKind, arch: str, labels: tuple[str, ...] | list[str] | None = None, *,
              mpp: float, tile_size: int, input_size: int,
              mean: tuple[float, float, float] = IMAGENET_MEAN,
              std: tuple[float, float, float] = IMAGENET_STD,
              positive_label: str | None = None,
              provenance: dict[str, Any] | None = None) -> ModelSpec:
    """A validated :class:`ModelSpec`; stain values are derived from the class names."""
    if kind not in KINDS:
        raise ModelError(f"unknown model kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if labels is None:
        if kind == "tumor":
            raise ModelError("a tumor classifier needs its class names", hint="e.g. ('Other', 'Tumor')")
        labels = STAIN_LABELS if kind == "stain" else SEGMENTER_LABELS
    labels = tuple(str(x) for x in labels)
    values: tuple[int, ...] | None = None
    if kind == "tumor":
        if positive_label is None:
            hits = [x for x in labels if x.strip().lower() in ("tumor", "tumour", "malignant", "tumor region")]
            if len(hits) != 1:
                raise ModelError(f"cannot tell which of {list(labels)} is the tumor class",
                                 hint="name it 'Tumor' or pass --positive CLASS")
            positive_label = hits[0]
    else:
        raw = [stain_value(x) for x in labels]
        if any(v is None for v in raw):
            bad = [x for x, v in zip(labels, raw) if v is None]
            raise ModelError(f"class names {bad} do not name a stain class",
                             hint="use 0/1+/2+/3+ (and background) or no-stain/faint/weak/strong")
        values = tuple(int(v) for v in raw)  # type: ignore[arg-type]
    spec = ModelSpec(kind=kind, arch=arch, labels=labels,
                     preprocessing=Preprocessing(float(mpp), int(tile_size), int(input_size),
                                                 tuple(mean), tuple(std)),  # type: ignore[arg-type]
                     values=values, positive_label=positive_label, provenance=dict(provenance or {}))
    _check_labels(spec, "model")
    return spec


def build_network(spec: ModelSpec, *, pretrained_dir: str | os.PathLike[str] | None = None,
                  arch_overrides: dict[str, Any] | None = None) -> Any:
    """A new network for ``spec``: from a local pretrained directory, else randomly initialised.

    With ``pretrained_dir`` the encoder weights are kept and the classification
    head is replaced when the class count differs.
    """
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        ViTConfig,
        ViTForImageClassification,
    )

    id2label = dict(enumerate(spec.labels))
    label2id = {v: k for k, v in id2label.items()}
    seg = spec.kind == "segmenter"
    cls: Any = SegformerForSemanticSegmentation if seg else ViTForImageClassification
    if seg and pretrained_dir is not None:
        cls = _segmenter_class(_model_type(Path(pretrained_dir)))
    elif seg and SEGMENTER_ARCHS.get(spec.arch, {}).get("family") == "maskformer":
        return _build_maskformer(spec, id2label, label2id, arch_overrides)
    if pretrained_dir is not None:
        path = Path(pretrained_dir)
        if not (path / "config.json").is_file():
            raise ModelError(f"pretrained directory {path} has no config.json",
                             hint="point --pretrained at a save_pretrained directory")
        try:
            with _quiet_transformers():
                return cls.from_pretrained(path, local_files_only=True, num_labels=len(spec.labels),
                                           id2label=id2label, label2id=label2id,
                                           ignore_mismatched_sizes=True)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"cannot load pretrained weights from {path}: {err}",
                             hint="use a local directory written by save_pretrained") from err
    presets = SEGMENTER_ARCHS if seg else CLASSIFIER_ARCHS
    if spec.arch not in presets:
        raise ModelError(f"unknown architecture {spec.arch!r} for a {spec.kind} model",
                         hint=f"use one of {', '.join(presets)} or --pretrained DIR")
    params = dict(presets[spec.arch])
    params.update(arch_overrides or {})
    params["image_size"] = spec.preprocessing.input_size
    config: Any
    if seg:
        config = SegformerConfig(num_labels=len(spec.labels), id2label=id2label,  # type: ignore[call-arg]
                                 label2id=label2id, **params)
    else:
        config = ViTConfig(num_labels=len(spec.labels), id2label=id2label,  # type: ignore[call-arg]
                           label2id=label2id, **params)
    return cls(config)


def _model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError):
        return None


def _segmenter_class(model_type: str | None) -> Any:
    from transformers import MaskFormerForInstanceSegmentation, SegformerForSemanticSegmentation

    return MaskFormerForInstanceSegmentation if model_type == "maskformer" else SegformerForSemanticSegmentation


def _build_maskformer(spec: ModelSpec, id2label: dict[int, str], label2id: dict[str, int],
                      overrides: dict[str, Any] | None) -> Any:
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, SwinConfig

    params = dict(SEGMENTER_ARCHS[spec.arch])
    params.update(overrides or {})
    backbone = SwinConfig(image_size=spec.preprocessing.input_size, patch_size=4,  # type: ignore[call-arg]
                          out_features=["stage1", "stage2", "stage3", "stage4"], **params["backbone"])
    decoder = dict(model_type="detr", num_queries=params["num_queries"], **params["decoder"])
    config = MaskFormerConfig(backbone_config=backbone, decoder_config=decoder,  # type: ignore[call-arg]
                              num_labels=len(spec.labels), id2label=id2label, label2id=label2id,
                              fpn_feature_size=params["fpn_feature_size"],
                              mask_feature_size=params["mask_feature_size"], num_queries=params["num_queries"])
    return MaskFormerForInstanceSegmentation(config)


def save_model(loaded: LoadedModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``loaded`` as a model directory (each file replaced atomically, the spec last)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} exists and is not a directory", hint="choose another output path")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".save-", suffix=".tmp"))
    try:
        with _quiet_transformers():
            loaded.network.save_pretrained(tmp, safe_serialization=True)
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        spec_json = loaded.spec.to_json()
        spec_json["provenance"] = dict(spec_json.get("provenance") or {})
        spec_json["provenance"]["weights_sha256"] = {
            n: sha256_file(tmp / n) for n in names if n.endswith(".safetensors")}
        for name in names:
            os.replace(tmp / name, out / name)
        atomic_write_json(out / SPEC_FILE, spec_json)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved %s model to %s", loaded.spec.kind, out)
    return out


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """A SHA-256 identifying a model directory's contents (label map, config and weights)."""
    import hashlib

    path = Path(path)
    validate_model_dir(path)
    h = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir()
                       if p.name in ("config.json", SPEC_FILE) or p.suffix == ".safetensors"):
        h.update(name.encode())
        h.update(sha256_file(path / name).encode())
    return h.hexdigest()


def validate_model_dir(path: str | os.PathLike[str], *, expected_kind: str | None = None) -> ModelSpec:
    """Check a model directory without loading its weights; return its spec."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model directory {path} does not exist", hint="check the path")
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory", hint="pass the model directory, not a file in it")
    missing = [n for n in ("config.json", SPEC_FILE) if not (path / n).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("model.safetensors")
    if missing:
        raise ModelError(f"model directory {path} lacks {', '.join(missing)}",
                         hint="train with her2-qupath train or convert weights as in docs/models.md")
    try:
        raw = json.loads((path / SPEC_FILE).read_text(encoding="utf-8"))
        config_raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read {path}: {err}", hint="the directory is damaged; re-save it") from err
    where = str(path / SPEC_FILE)
    spec = ModelSpec.from_json(raw, where=where)
    if spec.format_version > FORMAT_VERSION:
        raise ModelError(f"{where} has format version {spec.format_version}, newer than {FORMAT_VERSION}",
                         hint="upgrade her2-qupath")
    if spec.kind not in KINDS:
        raise ModelError(f"{where}: unknown kind {spec.kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if expected_kind is not None and spec.kind != expected_kind:
        raise ModelError(f"{path} holds a {spec.kind} model where a {expected_kind} model is needed",
                         hint="pass the right directory to each model option")
    _check_labels(spec, where)

    class _Cfg:  # the fields _check_network_config reads
        pass

    cfg = _Cfg()
    for key in ("model_type", "num_labels", "image_size", "patch_size"):
        setattr(cfg, key, config_raw.get(key))
    if cfg.num_labels is None:  # type: ignore[attr-defined]
        cfg.num_labels = len(config_raw.get("id2label") or {}) or 2  # type: ignore[attr-defined]
    _check_network_config(spec, cfg, where)
    return spec


#: A run's tile may show at most this much more or less tissue (µm across) than the model's.
FIELD_OF_VIEW_TOLERANCE = 0.10


def check_tiling(spec: ModelSpec, tile_size: int, mpp: float, *, where: str = "the model") -> None:
    """Refuse a run whose tiles show a different field of view than the model was trained on.

    A tile of ``tile_size`` pixels at ``mpp`` µm/px is resized to the network's input;
    the network only recognises what it learnt when the tile spans the same tissue
    (``preprocessing.tile_size`` × ``preprocessing.mpp`` µm) within
    :data:`FIELD_OF_VIEW_TOLERANCE`.
    """
    pre = spec.preprocessing
    trained = pre.tile_size * pre.mpp
    run = tile_size * mpp
    if abs(run / trained - 1.0) > FIELD_OF_VIEW_TOLERANCE:
        raise ModelError(
            f"{where} was trained on {pre.tile_size}-px tiles at {pre.mpp:g} µm/px ({trained:g} µm "
            f"across); this run cuts {tile_size}-px tiles at {mpp:g} µm/px ({run:g} µm)",
            hint=f"pass --tile-size {pre.tile_size} --working-mpp {pre.mpp:g} (server: options "
                 f"tile_size and mpp), or use a model trained at this tile size")


def load_model(path: str | os.PathLike[str], *, expected_kind: str | None = None,
               verify: bool = True, device: str = "cpu") -> LoadedModel:
    """Load a model directory (local files only) for inference.

    Raises :class:`~her2_qupath.errors.ModelError` when the directory is missing,
    incomplete, of another kind than ``expected_kind``, has a label set that does
    not fit its kind, an input size that does not fit the network, or weights whose
    checksum differs from the one recorded at saving (``verify``).
    """
    from transformers import ViTForImageClassification

    path = Path(path)
    spec = validate_model_dir(path, expected_kind=expected_kind)
    if verify:
        for name, digest in (spec.provenance.get("weights_sha256") or {}).items():
            f = path / name
            if not f.is_file() or sha256_file(f) != digest:
                raise ModelError(f"{f} does not match the checksum recorded in {SPEC_FILE}",
                                 hint="the weights were replaced or damaged; re-save the model")
    cls = _segmenter_class(_model_type(path)) if spec.kind == "segmenter" else ViTForImageClassification
    try:
        with _quiet_transformers():
            network = cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelError(f"cannot load the weights in {path}: {err}",
                         hint="the directory is damaged or not a save_pretrained output") from err
    _check_network_config(spec, network.config, str(path))
    network.eval()
    network.to(device)  # type: ignore[arg-type]
    return LoadedModel(spec=spec, network=network, path=path)
