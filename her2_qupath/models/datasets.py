"""Labelled data for training and evaluation, and the split by slide.

Three sources:

(a) a folder of class folders of tiles, ``ROOT/<class>/<tile>.png`` (any
    image the reader opens: png, jpg, tif);
(b) QuPath GeoJSON exports whose annotations are classified, beside their slide
    (``ROOT/<name>.geojson`` + ``ROOT/<name>.<slide ext>``): tiles are cut from the
    slide inside each annotation and take its class;
(c) for the segmenter, image/mask pairs ``x.png`` + ``x_mask.png`` with mask values
    0 background, 1 HER2 0, 2 1+, 3 2+, 4 3+.

Every sample belongs to a slide (its *group*): the validation split holds out
whole slides, never single tiles, so neighbouring tiles of one slide cannot
leak between training and validation. The slide of a tile file is read from
``ROOT/slides.csv`` (columns ``file,slide``; ``file`` relative to ``ROOT``) when
present, else from the file name: the part before the first double underscore
(``slideA__x1024_y512.png`` belongs to ``slideA``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "SLIDE_SEPARATOR",
    "TileDataset",
    "MaskDataset",
    "load_tile_folders",
    "load_mask_pairs",
    "load_qupath_annotations",
    "discover_dataset",
    "split_by_group",
    "read_image",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SLIDE_SEPARATOR = "__"
_MASK_SUFFIX = "_mask"
Source = np.ndarray | Path | Callable[[], np.ndarray]


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as uint8 RGB (H x W x 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise UserInputError(f"cannot read image {path}: {err}", hint="remove or replace the file") from err


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        mask = np.asarray(im)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.max(initial=0) > 4:
        raise UserInputError(f"mask {path} has values above 4",
                             hint="masks hold 0 background, 1 HER2 0, 2 1+, 3 2+, 4 3+")
    return mask.astype(np.uint8)


def _load(source: Source) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, Path):
        return read_image(source)
    return np.asarray(source())


def _fingerprint(sources: Sequence[Any], extra: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for s, e in zip(sources, extra):
        if isinstance(s, np.ndarray):
            h.update(np.ascontiguousarray(s).tobytes())
        elif isinstance(s, Path):
            st = s.stat()
            h.update(f"{s.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            h.update(repr(getattr(s, "key", id(s))).encode())
        h.update(repr(e if not isinstance(e, np.ndarray) else e.tobytes()).encode())
    return h.hexdigest()


@dataclass
class TileDataset:
    """Tiles with a class index and a slide id each (images load lazily)."""

    label_names: tuple[str, ...]
    sources: list[Source]
    labels: np.ndarray  # int64 class index per sample
    groups: list[str]
    description: str = ""
    _resources: list[Any] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not (len(self.sources) == len(self.labels) == len(self.groups)):
            raise UserInputError("sources, labels and groups differ in length", hint="one of each per tile")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.label_names)):
            raise UserInputError("a label index lies outside the class list", hint="check label_names")

    @classmethod
    def from_arrays(cls, images: np.ndarray | Sequence[np.ndarray], labels: Sequence[int],
                    groups: Sequence[str], label_names: Sequence[str]) -> TileDataset:
        return cls(tuple(label_names), list(images), np.asarray(labels), [str(g) for g in groups],
                   description="arrays")

    def __len__(self) -> int:
        return len(self.sources)

    def image(self, i: int) -> np.ndarray:
        return _load(self.sources[i])

    def target(self, i: int) -> int:
        return int(self.labels[i])

    def subset(self, indices: Sequence[int]) -> TileDataset:
        idx = list(indices)
        return TileDataset(self.label_names, [self.sources[i] for i in idx], self.labels[idx],
                           [self.groups[i] for i in idx], self.description, self._resources)

    def fingerprint(self) -> str:
        return _fingerprint(self.sources, [int(x) for x in self.labels])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {n: int(c) for n, c in zip(self.label_names, counts)}

    def close(self) -> None:
        for r in self._resources:
            close = getattr(r, "close", None)
            if close is not None:
                close()
        self._resources.clear()


@dataclass
class MaskDataset:
    """Image tiles with pixel masks in stain-map values (0 background .. 4 HER2 3+)."""

    images: list[Source]
    masks: list[np.ndarray | Path]
    groups: list[str]
    description: str = ""
    label_names: tuple[str, ...] = ("background", "HER2 0", "HER2 1+", "HER2 2+", "HER2 3+")

    def __post_init__(self) -> None:
        if not (len(self.images) == len(self.masks) == len(self.groups)):
            raise UserInputError("images, masks and groups differ in length", hint="one mask per image")

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    groups: Sequence[str]) -> MaskDataset:
        return cls(list(images), [np.asarray(m, np.uint8) for m in masks], [str(g) for g in groups], "arrays")

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> np.ndarray:
        return _load(self.images[i])

    def target(self, i: int) -> np.ndarray:
        m = self.masks[i]
        return _read_mask(m) if isinstance(m, Path) else np.asarray(m, np.uint8)

    @property
    def labels(self) -> np.ndarray:
        """Majority class per mask (used to stratify the split)."""
        return np.array([int(np.bincount(self.target(i).ravel(), minlength=5).argmax())
                         for i in range(len(self))], dtype=np.int64)

    def subset(self, indices: Sequence[int]) -> MaskDataset:
        idx = list(indices)
        return MaskDataset([self.images[i] for i in idx], [self.masks[i] for i in idx],
                           [self.groups[i] for i in idx], self.description, self.label_names)

    def fingerprint(self) -> str:
        return _fingerprint(self.images, self.masks)

    def close(self) -> None:
        return None


def _slide_of(root: Path, path: Path, table: dict[str, str] | None, pattern: re.Pattern[str]) -> str:
    rel = path.relative_to(root).as_posix()
    if table is not None:
        if rel not in table:
            raise UserInputError(f"{rel} is not listed in {root / 'slides.csv'}",
                                 hint="add a 'file,slide' row for every tile")
        return table[rel]
    m = pattern.match(path.stem)
    if not m:
        raise UserInputError(
            f"cannot tell which slide {rel} comes from",
            hint=f"name tiles <slide>{SLIDE_SEPARATOR}<anything>.png or add ROOT/slides.csv (file,slide)")
    return m.group(1)


def _slides_table(root: Path) -> dict[str, str] | None:
    path = root / "slides.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"file", "slide"} <= set(reader.fieldnames):
            raise UserInputError(f"{path} needs the columns file,slide", hint="one row per tile")
        return {row["file"].replace("\\", "/"): row["slide"] for row in reader}


def _pattern(slide_pattern: str | None) -> re.Pattern[str]:
    return re.compile(slide_pattern or rf"^(.+?){SLIDE_SEPARATOR}")


def load_tile_folders(root: str | os.PathLike[str], *, classes: Sequence[str] | None = None,
                      slide_pattern: str | None = None) -> TileDataset:
    """Source (a): ``ROOT/<class>/*.png``; slide ids from ``slides.csv`` or the file names."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"data folder {root} does not exist", hint="check the path")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is not None:
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise UserInputError(f"class folders {missing} are missing in {root}",
                                 hint="create one folder per class")
        folders = [root / c for c in classes]
    if len(folders) < 2:
        raise UserInputError(f"{root} holds {len(folders)} class folder(s); at least 2 are needed",
                             hint="put the tiles of each class in a folder named after it")
    table = _slides_table(root)
    pattern = _pattern(slide_pattern)
    sources: list[Source] = []
    labels: list[int] = []
    groups: list[str] = []
    for k, folder in enumerate(folders):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserInputError(f"class folder {folder} holds no images", hint="remove it or add tiles")
        for f in files:
            sources.append(f)
            labels.append(k)
            groups.append(_slide_of(root, f, table, pattern))
    return TileDataset(tuple(f.name for f in folders), sources, np.asarray(labels), groups,
                       description=f"class folders in {root}")


def load_mask_pairs(root: str | os.PathLike[str], *, slide_pattern: str | None = None) -> MaskDataset:
    """Source (c): ``x.png`` + ``x_mask.png`` pairs anywhere under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"data folder {root} does not exist", hint="check the path")
    masks = sorted(p for p in root.rglob(f"*{_MASK_SUFFIX}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not masks:
        raise UserInputError(f"no *{_MASK_SUFFIX}.png files in {root}",
                             hint="save each mask as <image name>_mask.png beside the image")
    table = _slides_table(root)
    pattern = _pattern(slide_pattern)
    images: list[Source] = []
    mask_paths: list[np.ndarray | Path] = []
    groups: list[str] = []
    for m in masks:
        stem = m.stem[: -len(_MASK_SUFFIX)]
        partners = [p for p in m.parent.glob(f"{_glob_escape(stem)}.*")
                    if p.suffix.lower() in IMAGE_SUFFIXES and p != m]
        if not partners:
            raise UserInputError(f"mask {m} has no image {stem}.png beside it", hint="add the image")
        images.append(partners[0])
        mask_paths.append(m)
        groups.append(_slide_of(root, partners[0], table, pattern))
    return MaskDataset(images, mask_paths, groups, description=f"image/mask pairs in {root}")


def _glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


class _RegionReader:
    """A lazy tile: reads ``size`` px at ``mpp`` from an open slide."""

    def __init__(self, slide: Any, location: tuple[int, int], size: int, mpp: float, key: str) -> None:
        self.slide, self.location, self.size, self.mpp, self.key = slide, location, size, mpp, key

    def __call__(self) -> np.ndarray:
        return np.asarray(self.slide.read_region_mpp(self.location, (self.size, self.size), self.mpp))


def _annotation_tiles(geom: Any, side: float, min_overlap: float, cap: int) -> list[tuple[int, int]]:
    from shapely.geometry import box

    minx, miny, maxx, maxy = geom.bounds
    nx = max(1, int(np.ceil((maxx - minx) / side)))
    ny = max(1, int(np.ceil((maxy - miny) / side)))
    # centre the grid on the annotation's bounding box
    x0 = minx + ((maxx - minx) - nx * side) / 2
    y0 = miny + ((maxy - miny) - ny * side) / 2
    out = []
    for j in range(ny):
        for i in range(nx):
            b = box(x0 + i * side, y0 + j * side, x0 + (i + 1) * side, y0 + (j + 1) * side)
            if geom.intersection(b).area >= min_overlap * b.area:
                out.append((int(round(x0 + i * side)), int(round(y0 + j * side))))
    if len(out) > cap:
        keep = np.linspace(0, len(out) - 1, cap).round().astype(int)
        out = [out[k] for k in keep]
    return out


def load_qupath_annotations(pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]], *,
                            tile_size: int, mpp: float, classes: Sequence[str] | None = None,
                            class_filter: Callable[[str], bool] | None = None,
                            max_tiles_per_annotation: int = 64, min_overlap: float = 0.5,
                            slide_mpp: float | None = None) -> TileDataset:
    """Source (b): tiles cut inside each classified annotation of QuPath GeoJSON exports.

    ``pairs`` lists ``(slide path, geojson path)``; a tile (``tile_size`` px at ``mpp``)
    is taken where at least ``min_overlap`` of it lies inside an annotation, and
    labelled with the annotation's class. ``classes`` fixes the class list (others
    are skipped); otherwise every class found (passing ``class_filter``) is used.
    The slide id of each tile is the slide's file name.
    """
    from ..qupath.geojson import read_geojson
    from ..slide import open_slide

    found: list[tuple[Any, str, tuple[int, int], str]] = []
    slides: list[Any] = []
    try:
        for slide_path, geojson_path in pairs:
            slide = open_slide(slide_path, mpp=slide_mpp)
            slides.append(slide)
            side = tile_size * mpp / slide.mpp
            n_before = len(found)
            for obj in read_geojson(geojson_path):
                cls_name = _class_name(getattr(obj, "classification", None))
                if getattr(obj, "object_type", "annotation") != "annotation" or not cls_name:
                    continue
                if classes is not None and cls_name not in classes:
                    continue
                if class_filter is not None and not class_filter(cls_name):
                    continue
                geom = obj.geometry
                if geom is None or geom.is_empty or geom.area <= 0:
                    continue
                for loc in _annotation_tiles(geom, side, min_overlap, max_tiles_per_annotation):
                    found.append((slide, cls_name, loc, Path(slide_path).stem))
            log.info("%s: %d tiles from classified annotations", geojson_path, len(found) - n_before)
    except BaseException:
        for s in slides:
            s.close()
        raise
    names = tuple(classes) if classes is not None else tuple(sorted({f[1] for f in found}))
    if len(names) < 2 or not found:
        for s in slides:
            s.close()
        raise UserInputError(f"the annotations give {len(found)} tiles of {len(names)} class(es) {list(names)}",
                             hint="classify annotations of at least two classes in QuPath and export them")
    index = {n: k for k, n in enumerate(names)}
    sources: list[Source] = [
        _RegionReader(s, loc, tile_size, mpp, f"{g}:{loc}") for s, _, loc, g in found]
    return TileDataset(names, sources, np.asarray([index[c] for _, c, _, _ in found]),
                       [g for *_, g in found], description=f"QuPath annotations of {len(pairs)} slide(s)",
                       _resources=slides)


def _class_name(classification: Any) -> str | None:
    if classification is None:
        return None
    if isinstance(classification, str):
        return classification
    if isinstance(classification, (tuple, list)):  # a derived class, shown "Tumor: HER2 2+" in QuPath
        return ": ".join(str(c) for c in classification) or None
    if isinstance(classification, dict):
        return classification.get("name") or ":".join(classification.get("names") or []) or None
    return getattr(classification, "name", None) or str(classification)


def discover_dataset(path: str | os.PathLike[str], *, task: str, tile_size: int, mpp: float,
                     classes: Sequence[str] | None = None,
                     class_filter: Callable[[str], bool] | None = None,
                     max_tiles_per_annotation: int = 64, min_overlap: float = 0.5,
                     slide_mpp: float | None = None) -> TileDataset | MaskDataset:
    """Pick the source from what ``path`` holds: GeoJSON + slides (b), masks (c) or class folders (a)."""
    root = Path(path)
    if not root.exists():
        raise UserInputError(f"data {root} does not exist", hint="check the path")
    if not root.is_dir():
        raise UserInputError(f"data {root} is not a folder", hint="see docs/models.md for the layouts")
    if task == "segmenter":
        return load_mask_pairs(root)
    geojsons = sorted(p for p in root.iterdir() if p.suffix.lower() == ".geojson")
    if geojsons:
        pairs = []
        for g in geojsons:
            partners = [p for p in root.iterdir() if p.stem == g.stem and p != g and p.is_file()
                        and p.suffix.lower() not in (".geojson", ".json", ".csv", ".txt")]
            if not partners:
                raise UserInputError(f"{g.name} has no slide of the same name beside it",
                                     hint=f"put {g.stem}.svs (or .tif, .ndpi, ...) in {root}")
            pairs.append((partners[0], g))
        return load_qupath_annotations(pairs, tile_size=tile_size, mpp=mpp, classes=classes,
                                       class_filter=class_filter,
                                       max_tiles_per_annotation=max_tiles_per_annotation,
                                       min_overlap=min_overlap, slide_mpp=slide_mpp)
    return load_tile_folders(root, classes=classes)


def split_by_group(groups: Sequence[str], labels: Sequence[int] | np.ndarray, val_fraction: float, *,
                   seed: int = 0, tries: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices, holding out whole groups (slides).

    Among ``tries`` random orders of the groups, the split whose validation share is
    closest to ``val_fraction`` and whose validation set covers the most classes
    (with every class still present in training) wins. Needs at least two groups.
    """
    groups_arr = np.asarray([str(g) for g in groups])
    labels_arr = np.asarray(labels)
    uniq = np.unique(groups_arr)
    if len(uniq) < 2:
        raise UserInputError(
            f"all {len(groups_arr)} samples come from one slide; a validation split by slide needs at least 2",
            hint="add tiles from more slides or name their slides (slides.csv)")
    if not 0 < val_fraction < 1:
        raise UserInputError(f"validation fraction {val_fraction} is not in (0, 1)", hint="use e.g. 0.2")
    rng = np.random.default_rng(seed)
    n = len(groups_arr)
    all_classes = set(labels_arr.tolist())
    best: tuple[float, np.ndarray] | None = None
    for _ in range(tries):
        order = rng.permutation(uniq)
        val_groups: list[str] = []
        count = 0
        for g in order[:-1]:  # keep at least one group for training
            if count >= val_fraction * n:
                break
            val_groups.append(g)
            count += int((groups_arr == g).sum())
        is_val = np.isin(groups_arr, val_groups)
        train_classes = set(labels_arr[~is_val].tolist())
        val_classes = set(labels_arr[is_val].tolist())
        cost = abs(count / n - val_fraction) + (len(all_classes) - len(val_classes)) \
            + 10 * (len(all_classes) - len(train_classes))
        if best is None or cost < best[0]:
            best = (cost, is_val)
    assert best is not None
    is_val = best[1]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
