"""Stain optical-density vectors: :class:`StainVectors`, and QuPath's stain strings."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import StainConfig
from ..errors import UserInputError

__all__ = ["StainVectors", "Vec3"]

log = logging.getLogger(__name__)

Vec3 = tuple[float, float, float]


def _three_numbers(raw: Any, field: str, hint: str) -> list[float]:
    """Three numbers from a QuPath stain field such as ``"0.65111 0.70119 0.29049"``."""
    try:
        nums = [float(x) for x in re.split(r"[\s,]+", str(raw).strip()) if x]
    except ValueError as err:
        raise UserInputError(f"QuPath '{field}' is not numeric: {raw!r}",
                             hint="it must hold three numbers separated by spaces") from err
    if len(nums) != 3:
        raise UserInputError(f"QuPath '{field}' must hold three numbers, got {raw!r}", hint=hint)
    return nums


def _unit(v: Any, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise UserInputError(
            f"{what} stain vector must be three finite numbers, got {v!r}",
            hint="give the optical density of the stain in R, G and B, e.g. '0.65 0.70 0.29'",
        )
    n = float(np.linalg.norm(a))
    if n <= 1e-12:
        raise UserInputError(f"{what} stain vector is zero", hint="give a non-zero OD vector")
    return a / n


@dataclass(frozen=True)
class StainVectors:
    """Unit optical-density vectors of hematoxylin, DAB and a residual (third) stain.

    Vectors are normalised on construction. When ``residual`` is ``None`` it is
    the normalised cross product ``hematoxylin x dab`` (as scikit-image's
    ``hdx_from_rgb`` and QuPath do for two-stain images), oriented so that its
    components sum to a non-negative value.
    ``background`` optionally carries the white point that came with the
    vectors (QuPath stain strings have one); ``name`` is informative.
    """

    hematoxylin: Vec3
    dab: Vec3
    residual: Vec3 | None = None
    background: Vec3 | None = None
    name: str = "H-DAB"

    def __post_init__(self) -> None:
        h = _unit(self.hematoxylin, "hematoxylin")
        d = _unit(self.dab, "DAB")
        if abs(float(h @ d)) > 0.999:
            raise UserInputError(
                "hematoxylin and DAB stain vectors are (nearly) parallel",
                hint="give two distinct stain vectors",
            )
        if self.residual is None:
            r = np.cross(h, d)
            if r.sum() < 0:
                r = -r
            r = r / np.linalg.norm(r)
        else:
            r = _unit(self.residual, "residual")
        object.__setattr__(self, "hematoxylin", tuple(float(x) for x in h))
        object.__setattr__(self, "dab", tuple(float(x) for x in d))
        object.__setattr__(self, "residual", tuple(float(x) for x in r))
        m = np.array([h, d, r])
        if abs(np.linalg.det(m)) < 1e-6:
            raise UserInputError(
                "the three stain vectors are linearly dependent",
                hint="leave the residual out so that it is derived as the cross product",
            )
        if self.background is not None:
            bg = np.asarray(self.background, dtype=np.float64).reshape(-1)
            if bg.shape != (3,) or np.any(bg <= 0) or np.any(bg > 255):
                raise UserInputError(
                    f"background must be three values in (0, 255], got {self.background!r}",
                    hint="give the RGB of empty glass, e.g. '242 240 245'",
                )
            object.__setattr__(self, "background", tuple(float(x) for x in bg))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def default(cls, config: StainConfig | None = None) -> StainVectors:
        """The vectors of a :class:`StainConfig` (by default Ruifrok & Johnston's H-DAB)."""
        config = config or StainConfig()
        return cls(config.hematoxylin, config.dab, config.residual, config.background)

    @classmethod
    def from_qupath(cls, text_or_dict: str | Mapping[str, Any]) -> StainVectors:
        """Parse QuPath's colour-deconvolution stains.

        Accepts the JSON object QuPath writes in workflow scripts, with or without
        the surrounding call, e.g.
        ``setColorDeconvolutionStains('{"Name" : "H-DAB default", "Stain 1" : "Hematoxylin",
        "Values 1" : "0.65111 0.70119 0.29049", "Stain 2" : "DAB", "Values 2" : "0.26917
        0.56824 0.77759", "Background" : " 255 255 255"}')``, or the same as a dict.
        ``Stain 3``/``Values 3`` are optional. The stain named DAB (case-insensitive)
        is the chromogen; otherwise stain 2 is taken as the chromogen and a warning
        is logged.
        """
        if isinstance(text_or_dict, Mapping):
            data: Mapping[str, Any] = text_or_dict
        else:
            text = str(text_or_dict)
            start, end = text.find("{"), text.rfind("}")
            if start < 0 or end <= start:
                raise UserInputError(
                    "no stain definition found in the QuPath stain text",
                    hint="paste the JSON object from setColorDeconvolutionStains('{...}')",
                )
            try:
                data = json.loads(text[start : end + 1])
            except json.JSONDecodeError as err:
                raise UserInputError(
                    f"QuPath stain text is not valid JSON: {err.msg} at character {err.pos}",
                    hint="copy the whole setColorDeconvolutionStains('...') line from QuPath",
                ) from err
            if not isinstance(data, Mapping):
                raise UserInputError(
                    "QuPath stain text must be a JSON object", hint='it starts with {"Name" : ...'
                )

        def values(i: int) -> np.ndarray | None:
            raw = data.get(f"Values {i}")
            if raw is None:
                return None
            return np.array(_three_numbers(
                raw, f"Values {i}", "give the R, G and B optical densities separated by spaces"))

        v1, v2, v3 = values(1), values(2), values(3)
        if v1 is None or v2 is None:
            raise UserInputError(
                "QuPath stain text needs 'Values 1' and 'Values 2'",
                hint="copy the whole setColorDeconvolutionStains('...') line from QuPath",
            )
        n1 = str(data.get("Stain 1", "")).strip().lower()
        n2 = str(data.get("Stain 2", "")).strip().lower()
        if "dab" in n1 and "dab" not in n2:
            v1, v2 = v2, v1
        elif "dab" not in n2:
            log.warning(
                "QuPath stains %r/%r name no DAB stain; taking stain 2 as the chromogen",
                data.get("Stain 1"),
                data.get("Stain 2"),
            )
        background: Vec3 | None = None
        raw_bg = data.get("Background")
        if raw_bg is not None:
            bg = _three_numbers(raw_bg, "Background", "e.g. ' 242 240 245'")
            background = (bg[0], bg[1], bg[2])
        return cls(
            tuple(v1),  # type: ignore[arg-type]
            tuple(v2),  # type: ignore[arg-type]
            None if v3 is None else tuple(v3),  # type: ignore[arg-type]
            background,
            str(data.get("Name", "QuPath stains")),
        )

    def to_qupath(self, background: Vec3 | None = None) -> str:
        """The QuPath ``setColorDeconvolutionStains`` JSON for these vectors."""
        bg = background or self.background or (255.0, 255.0, 255.0)

        def fmt(v: Vec3) -> str:
            return " ".join(f"{x:.5f}" for x in v)

        assert self.residual is not None
        obj = {
            "Name": self.name,
            "Stain 1": "Hematoxylin",
            "Values 1": fmt(self.hematoxylin),
            "Stain 2": "DAB",
            "Values 2": fmt(self.dab),
            "Stain 3": "Residual",
            "Values 3": fmt(self.residual),
            "Background": " " + " ".join(str(int(round(x))) for x in bg),
        }
        return json.dumps(obj, separators=(", ", " : "))

    # ------------------------------------------------------------------ matrices
    @property
    def matrix(self) -> np.ndarray:
        """3 x 3 float64 matrix whose rows are the H, DAB and residual OD vectors (``OD = c @ M``)."""
        return np.array([self.hematoxylin, self.dab, self.residual], dtype=np.float64)

    @property
    def inverse(self) -> np.ndarray:
        """``inv(matrix)``: stain amounts ``c = OD @ inverse``."""
        return np.linalg.inv(self.matrix)
