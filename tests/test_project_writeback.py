"""Write-back into a project hierarchy: only this product's objects are ever replaced.

``FakeHierarchy`` implements exactly the paquo calls the write-back uses
(``annotations``/``detections`` proxies with ``discard``, ``add_annotation``,
``add_detection``, ``add_tile``, ``add_cell``, ``no_autoflush``), so the logic
is tested without QuPath; ``test_paquo_real`` repeats it with paquo.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from shapely.geometry import Polygon, box

from her2_qupath.config import HER2_COLORS
from her2_qupath.qupath._paquo import replace_product_objects
from her2_qupath.qupath.geojson import QuPathObject
from her2_qupath.qupath.project import mark_product_object


@dataclass(eq=False)
class FakeObject:
    kind: str
    roi: Any
    path_class: Any
    measurements: dict
    name: str | None = None
    locked: bool = False
    nucleus_roi: Any = None

    def snapshot(self) -> tuple:
        cls = None if self.path_class is None else tuple(self.path_class)
        return (self.kind, self.roi.wkb, cls, tuple(sorted(self.measurements.items())), self.name, self.locked)


class FakeProxy:
    def __init__(self) -> None:
        self.items: list[FakeObject] = []

    def __iter__(self) -> Iterator[FakeObject]:
        return iter(list(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def discard(self, obj: FakeObject) -> None:
        self.items.remove(obj)


@dataclass
class FakeHierarchy:
    annotations: FakeProxy = field(default_factory=FakeProxy)
    detections: FakeProxy = field(default_factory=FakeProxy)
    flushes: int = 0
    in_bulk: bool = False
    bulk_adds: int = 0

    @contextlib.contextmanager
    def no_autoflush(self) -> Iterator[FakeHierarchy]:
        self.in_bulk = True
        try:
            yield self
        finally:
            self.in_bulk = False
            self.flushes += 1

    def _add(self, proxy: FakeProxy, kind: str, roi: Any, path_class: Any, measurements: Any,
             nucleus_roi: Any = None) -> FakeObject:
        assert isinstance(roi, Polygon | type(box(0, 0, 1, 1)))
        self.bulk_adds += self.in_bulk
        obj = FakeObject(kind, roi, path_class, dict(measurements or {}), nucleus_roi=nucleus_roi)
        proxy.items.append(obj)
        return obj

    def add_annotation(self, roi: Any, path_class: Any = None, measurements: Any = None) -> FakeObject:
        return self._add(self.annotations, "annotation", roi, path_class, measurements)

    def add_detection(self, roi: Any, path_class: Any = None, measurements: Any = None) -> FakeObject:
        return self._add(self.detections, "detection", roi, path_class, measurements)

    def add_tile(self, roi: Any, path_class: Any = None, measurements: Any = None) -> FakeObject:
        return self._add(self.detections, "tile", roi, path_class, measurements)

    def add_cell(self, roi: Any, path_class: Any = None, measurements: Any = None, *, nucleus_roi: Any) -> FakeObject:
        return self._add(self.detections, "cell", roi, path_class, measurements, nucleus_roi)


def make_class(name: str, color: Any) -> tuple:
    return (name, tuple(color) if color else None)


def user_objects(h: FakeHierarchy) -> list[tuple]:
    return [o.snapshot() for o in h.annotations.items + h.detections.items
            if not (o.name or "").startswith("her2-qupath")]


def results(score: str) -> list[QuPathObject]:
    tiles = [QuPathObject(box(x, 0, x + 10, 10), "tile", f"HER2 {score}", name=f"NFW/{score}",
                          measurements={"HER2: 2+ %": 42.5}) for x in range(0, 50, 10)]
    cell = QuPathObject(box(0, 20, 8, 28), "cell", ("Tumor", "HER2 3+"), nucleus_geometry=box(2, 22, 5, 25))
    region = QuPathObject(box(0, 0, 100, 100), "annotation", f"HER2 {score}",
                          name=f"her2-qupath: Region 1 HER2 {score}", measurements={"H-score": 155.0})
    return [mark_product_object(o, run_id="r") for o in [*tiles, cell, region]]


def seeded() -> FakeHierarchy:
    h = FakeHierarchy()
    h.add_annotation(roi=box(0, 0, 100, 100), path_class=("Tumor", (200, 0, 0)), measurements={})
    h.annotations.items[-1].name = "Tumor 1"
    h.add_annotation(roi=box(200, 0, 300, 80), path_class=None, measurements={"Area": 8000.0})
    h.add_detection(roi=box(5, 5, 9, 9), path_class=("Positive", None), measurements={"DAB": 0.3})
    h.detections.items[-1].name = "my her2-qupath test cell"  # marker not at the start: the user's
    return h


def test_two_runs_leave_user_objects_byte_for_byte():
    h = seeded()
    before = user_objects(h)
    first = replace_product_objects(h, results("2+"), make_path_class=make_class, entry_id="1")
    assert (first.removed, first.added, first.user_objects) == (0, 7, 3)
    assert user_objects(h) == before
    second = replace_product_objects(h, results("3+"), make_path_class=make_class, entry_id="1")
    assert (second.removed, second.added) == (7, 7)
    assert user_objects(h) == before
    ours = [o for o in h.annotations.items + h.detections.items if (o.name or "").startswith("her2-qupath")]
    assert len(ours) == 7
    assert {o.kind for o in ours} == {"tile", "cell", "annotation"}
    tile = next(o for o in ours if o.kind == "tile")
    assert tile.name == "her2-qupath: NFW/3+" and tile.path_class == ("HER2 3+", HER2_COLORS["HER2 3+"])
    assert tile.measurements == {"HER2: 2+ %": 42.5}
    cell = next(o for o in ours if o.kind == "cell")
    assert cell.path_class[0] == "Tumor: HER2 3+" and cell.nucleus_roi.equals(box(2, 22, 5, 25))
    region = next(o for o in ours if o.kind == "annotation")
    assert region.name == "her2-qupath: Region 1 HER2 3+" and region.measurements == {"H-score": 155.0}
    assert h.flushes == 2 and h.bulk_adds == 14  # every add inside no_autoflush


def test_unknown_object_type_is_refused():
    from her2_qupath.errors import ProjectError
    from her2_qupath.qupath._paquo import object_kind

    class Odd:
        object_type = "root"

    with pytest.raises(ProjectError, match="root"):
        object_kind(Odd())


def _qupath_or_skip() -> None:
    from her2_qupath.qupath._paquo import qupath_status

    status = qupath_status()
    if not status.available:
        pytest.skip(f"needs QuPath for paquo: {status.message}")


@pytest.mark.qupath
def test_paquo_project_written_twice_keeps_user_objects(tmp_path):
    """With QuPath: two generated slides, user annotations, two write-backs, reopen, check all."""
    _qupath_or_skip()
    import numpy as np
    import tifffile
    from paquo.classes import QuPathPathClass
    from paquo.projects import QuPathProject

    from her2_qupath.qupath.project import open_project

    paths = []
    for i in range(2):
        p = tmp_path / "slides" / f"case{i}_HER2.tif"
        p.parent.mkdir(exist_ok=True)
        tifffile.imwrite(p, np.full((256, 256, 3), 200 + i, np.uint8), photometric="rgb",
                         resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
        paths.append(p)
    proj_dir = tmp_path / "proj"
    with QuPathProject(proj_dir, mode="x") as qp:
        for p in paths:
            entry = qp.add_image(p)
            entry.hierarchy.add_annotation(roi=box(10, 10, 120, 120), path_class=QuPathPathClass("Tumor"))
    with QuPathProject(proj_dir, mode="r") as qp:
        before = [[(a.roi.wkb, a.path_class.name, a.name) for a in img.hierarchy.annotations] for img in qp.images]
    for score in ("2+", "3+"):
        view = open_project(proj_dir, backend="paquo", mode="r+")
        for entry in view.images():
            report = view.write_objects(entry, results(score))
            assert report.added == 7
        view.close()
    with QuPathProject(proj_dir, mode="r") as qp:
        for img, user_before in zip(qp.images, before, strict=True):
            anns = list(img.hierarchy.annotations)
            user = [(a.roi.wkb, a.path_class.name, a.name) for a in anns if not (a.name or "").startswith("her2-qupath")]
            assert user == user_before
            ours = [o for o in [*anns, *img.hierarchy.detections] if (o.name or "").startswith("her2-qupath")]
            assert len(ours) == 7
            assert {o.path_class.name for o in ours if o.path_class} >= {"HER2 3+"}
            _check_objects_read_back(ours, results("3+"))


def _check_objects_read_back(ours: list[Any], expected: list[QuPathObject]) -> None:
    """Each object QuPath holds is the one written: QuPath type, shape, class and colour, values, name."""
    from her2_qupath.config import HER2_COLORS

    java_type = {"annotation": "PathAnnotationObject", "tile": "PathTileObject", "cell": "PathCellObject",
                 "detection": "PathDetectionObject"}
    left = list(ours)
    for exp in expected:
        want = exp.geometry.normalize()
        got = [o for o in left if o.name == exp.name and o.roi.normalize().equals_exact(want, 1e-9)]
        assert len(got) == 1, exp.name
        o = got[0]
        left.remove(o)
        assert str(o.java_object.getClass().getSimpleName()) == java_type[exp.object_type]
        names = list(exp.names)
        assert o.path_class.name == names[-1]
        assert (o.path_class.parent.name if o.path_class.parent else None) == (names[-2] if len(names) > 1 else None)
        assert o.path_class.color.to_rgb() == HER2_COLORS[names[-1]]
        assert dict(o.measurements) == pytest.approx(exp.measurements)
        if exp.object_type == "cell":
            from paquo.pathobjects import QuPathPathCellObject

            nucleus = QuPathPathCellObject(o.java_object).nucleus_roi
            assert nucleus.normalize().equals_exact(exp.nucleus_geometry.normalize(), 1e-9)
    assert not left


def test_qupath_java_logging_is_quiet_unless_verbose() -> None:
    """paquo sets QuPath's Java logging to DEBUG; a run without -v turns it back to WARN."""
    import logging

    from her2_qupath.qupath._paquo import quiet_java_logging

    class FakeLogManager:
        calls: list[str] = []

        @classmethod
        def setWarn(cls) -> None:  # noqa: N802 - QuPath's name
            cls.calls.append("warn")

    ours = logging.getLogger("her2_qupath")
    before = ours.level
    try:
        ours.setLevel(logging.WARNING)  # the CLI without -v
        assert quiet_java_logging(FakeLogManager) is True and FakeLogManager.calls == ["warn"]
        ours.setLevel(logging.INFO)  # -v: QuPath's messages stay
        assert quiet_java_logging(FakeLogManager) is False and FakeLogManager.calls == ["warn"]
    finally:
        ours.setLevel(before)


def test_write_back_sets_an_unset_image_type_to_brightfield_h_dab() -> None:
    import enum

    from her2_qupath.qupath._paquo import ensure_brightfield

    class ImageType(str, enum.Enum):  # paquo's QuPathImageType members used here
        BRIGHTFIELD_H_DAB = "Brightfield (H-DAB)"
        BRIGHTFIELD_H_E = "Brightfield (H&E)"
        UNSET = "Not set"

    class Image:
        def __init__(self, kind: ImageType) -> None:
            self.image_type = kind

    unset, chosen = Image(ImageType.UNSET), Image(ImageType.BRIGHTFIELD_H_E)
    assert ensure_brightfield(unset, ImageType) and unset.image_type is ImageType.BRIGHTFIELD_H_DAB
    assert not ensure_brightfield(chosen, ImageType) and chosen.image_type is ImageType.BRIGHTFIELD_H_E
