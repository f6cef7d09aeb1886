"""Write-back sets an unset image type to Brightfield (H-DAB) with the stain vectors the run used.

Without QuPath: stand-in image entries (paquo's ``image_type`` attribute) and a stand-in
paquo module, as in ``test_project_writeback``. ``test_qupath_real`` checks the same in a
real QuPath project.
"""

from __future__ import annotations

import enum
import sys
import types
from typing import Any

import pytest
from shapely.geometry import box
from test_project_batch import FakeResult, invoke, project_with_images
from test_project_writeback import FakeHierarchy

from her2_qupath.qupath import _paquo
from her2_qupath.qupath import batch as batch_mod
from her2_qupath.qupath._paquo import PaquoProject, ensure_brightfield
from her2_qupath.qupath.geojson import QuPathObject
from her2_qupath.qupath.project import JsonProject

STAINS = ('{"Name" : "her2-qupath", "Stain 1" : "Hematoxylin", "Values 1" : "0.65111 0.70119 0.29049", '
          '"Stain 2" : "DAB", "Values 2" : "0.26917 0.56824 0.77759", "Stain 3" : "Residual", '
          '"Values 3" : "0.63330 -0.71030 0.30720", "Background" : " 240 238 236"}')


class ImageType(str, enum.Enum):  # the members of paquo's QuPathImageType used here
    BRIGHTFIELD_H_DAB = "Brightfield (H-DAB)"
    BRIGHTFIELD_H_E = "Brightfield (H&E)"
    UNSET = "Not set"


class Image:
    """A paquo image entry: its type, its stains (set through ``set_stains``), hierarchy, metadata."""

    def __init__(self, kind: ImageType | None) -> None:
        self.image_type = kind
        self.stains: str | None = None
        self.hierarchy = FakeHierarchy()
        self.metadata: dict[str, str] = {}


def record_stains(image: Image, stains: str) -> None:
    image.stains = stains


@pytest.mark.parametrize("kind", [ImageType.UNSET, None])
def test_an_unset_type_gets_brightfield_and_the_stains_used(kind: ImageType | None) -> None:
    image = Image(kind)
    assert ensure_brightfield(image, ImageType, STAINS, set_stains=record_stains)
    assert image.image_type is ImageType.BRIGHTFIELD_H_DAB and image.stains == STAINS


def test_a_type_the_user_chose_keeps_its_stains() -> None:
    image = Image(ImageType.BRIGHTFIELD_H_E)
    assert not ensure_brightfield(image, ImageType, STAINS, set_stains=record_stains)
    assert image.image_type is ImageType.BRIGHTFIELD_H_E and image.stains is None


@pytest.mark.parametrize("stains", [None, ""])
def test_without_a_stain_string_only_the_type_is_set(stains: str | None) -> None:
    """A summary without ``stain_vectors_qupath``: QuPath's default H-DAB stains stay."""
    image = Image(ImageType.UNSET)
    assert ensure_brightfield(image, ImageType, stains, set_stains=record_stains)
    assert image.image_type is ImageType.BRIGHTFIELD_H_DAB and image.stains is None


def test_an_unset_he_partner_becomes_brightfield_he() -> None:
    """The H&E slide of a pair is not an H-DAB image: an unset partner becomes Brightfield (H&E)."""
    image = Image(ImageType.UNSET)
    assert ensure_brightfield(image, ImageType, None, stain_type="H&E", set_stains=record_stains)
    assert image.image_type is ImageType.BRIGHTFIELD_H_E and image.stains is None


class FakeQuPathProject:
    path_classes: list[Any] = []


@pytest.fixture()
def paquo_project(monkeypatch: pytest.MonkeyPatch) -> PaquoProject:
    """A PaquoProject over stand-ins: no JVM (paquo.images is a stand-in module)."""
    fake_images = types.ModuleType("paquo.images")
    fake_images.QuPathImageType = ImageType  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "paquo.images", fake_images)
    monkeypatch.setattr(_paquo, "set_stain_vectors", record_stains)
    project = object.__new__(PaquoProject)
    project.mode = "r+"
    project._qp = FakeQuPathProject()
    project._by_id = {"1": Image(ImageType.UNSET), "2": Image(ImageType.BRIGHTFIELD_H_E)}
    return project


def _entry(eid: str) -> Any:
    return types.SimpleNamespace(entry_id=eid, name=f"case{eid}_HER2.tif")


def test_paquo_write_back_passes_the_stains_to_an_unset_entry(paquo_project: PaquoProject) -> None:
    objects = [QuPathObject(box(0, 0, 10, 10), "tile", None, name="her2-qupath: NFW")]
    for eid in ("1", "2"):
        paquo_project.write_objects(_entry(eid), objects, metadata={"her2-qupath run": "r"}, stains=STAINS)
    unset, chosen = paquo_project._by_id["1"], paquo_project._by_id["2"]
    assert unset.image_type is ImageType.BRIGHTFIELD_H_DAB and unset.stains == STAINS
    assert chosen.image_type is ImageType.BRIGHTFIELD_H_E and chosen.stains is None
    assert len(unset.hierarchy.detections) == 1 and unset.metadata == {"her2-qupath run": "r"}


class StainsRecorded(JsonProject):
    """A project that pretends to be paquo and records what each write-back was given."""

    backend = "paquo"
    writes: list[tuple[str, str | None, str]] = []

    def user_annotations(self, entry: Any) -> list[Any]:
        return [QuPathObject(box(0, 0, 50, 50), classification="Tumor", name="T")]

    def write_objects(self, entry: Any, objects: Any, *, metadata: Any = None,
                      stains: str | None = None, stain_type: str = "H-DAB") -> Any:
        StainsRecorded.writes.append((entry.entry_id, stains, stain_type))
        return _paquo.WriteReport(entry_id=entry.entry_id, removed=0, added=len(objects), user_objects=1)

    def save(self) -> None:
        return None


def test_batch_gives_the_write_back_the_summarys_stain_string(tmp_path, monkeypatch) -> None:
    """The IHC entry gets ``provenance.stain_vectors_qupath`` (H-DAB); the H&E entry of a pair gets
    no stain string and the H&E type."""
    import her2_qupath.pipeline as pipeline

    def run_score(request, *, progress=None, cancel=None, executor=None):
        result = FakeResult(request)
        result.summary["provenance"] = {"stain_vectors_qupath": STAINS}
        return result

    monkeypatch.setattr(pipeline, "run_score", run_score)
    monkeypatch.setattr(_paquo, "qupath_status", lambda: _paquo.QuPathStatus(True, "stand-in"))
    monkeypatch.setattr(batch_mod, "open_project",
                        lambda path, backend, mode, image_roots: StainsRecorded(path, image_roots=image_roots))
    StainsRecorded.writes = []
    proj = project_with_images(tmp_path)
    res = invoke(str(proj), "--pair-pattern", r"(?P<case>c1)_(?P<stain>HE|HER2)", "--roi-class", "Tumor")
    assert res.exit_code == 0, res.output
    assert StainsRecorded.writes == [("1", STAINS, "H-DAB"), ("2", None, "H&E")]
