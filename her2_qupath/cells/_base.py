"""Argument checks shared by the cell modules (package-private)."""

from __future__ import annotations

import math

from ..config import CellConfig, StainConfig
from ..errors import UserInputError

__all__: list[str] = []


def _check_mpp(mpp: float) -> float:
    try:
        value = float(mpp)
    except (TypeError, ValueError) as err:
        raise UserInputError(
            f"pixel size must be a number, got {mpp!r}", hint="pass mpp in micrometres per pixel"
        ) from err
    if not math.isfinite(value) or value <= 0:
        raise UserInputError(
            f"pixel size must be a positive number of micrometres per pixel, got {mpp!r}",
            hint="pass the tile's mpp, e.g. 0.25 at 40x or 0.5 at 20x",
        )
    return value


def _check_config(config: CellConfig, stain: StainConfig) -> None:
    t1, t2, t3 = stain.thresholds
    if not 0 < t1 <= t2 <= t3:
        raise UserInputError(
            f"DAB thresholds must satisfy 0 < 1+ <= 2+ <= 3+, got {stain.thresholds}",
            hint="set StainConfig.thresholds to increasing OD values such as (0.2, 0.4, 0.6)",
        )
    fractions = {
        "complete_fraction": config.complete_fraction,
        "min_positive_fraction": config.min_positive_fraction,
        "strong_partial_fraction": config.strong_partial_fraction,
    }
    for name, value in fractions.items():
        if not 0 < value <= 1:
            raise UserInputError(
                f"CellConfig.{name} must lie in (0, 1], got {value}",
                hint="give a fraction of the membrane ring, e.g. 0.7",
            )
    if config.membrane_width_um <= 0 or config.membrane_layer_um <= 0:
        raise UserInputError(
            "CellConfig.membrane_width_um and membrane_layer_um must be positive, got "
            f"{config.membrane_width_um} and {config.membrane_layer_um}",
            hint="e.g. membrane_width_um=3, membrane_layer_um=0.5",
        )
    if config.completeness_sectors < 4:
        raise UserInputError(
            f"CellConfig.completeness_sectors must be at least 4, got {config.completeness_sectors}",
            hint="36 sectors (10 degrees each) is the default",
        )
    if not 0 <= config.split_min_dip < 1:
        raise UserInputError(
            f"CellConfig.split_min_dip must lie in [0, 1), got {config.split_min_dip}",
            hint="give the fraction of a seed's LoG peak its response must dip by, e.g. 0.25 "
            "(0 keeps every seed)",
        )
    if config.nucleus_min_area_um2 >= config.nucleus_max_area_um2:
        raise UserInputError(
            "CellConfig.nucleus_min_area_um2 must be below nucleus_max_area_um2, got "
            f"{config.nucleus_min_area_um2} and {config.nucleus_max_area_um2}",
            hint="typical nuclei are 10-400 µm^2",
        )
    if config.nucleus_channel not in ("hematoxylin", "hematoxylin+dab"):
        raise UserInputError(
            f"unknown CellConfig.nucleus_channel {config.nucleus_channel!r}",
            hint='use "hematoxylin" (membrane stains such as HER2) or "hematoxylin+dab" '
            "(nuclear stains such as Ki67)",
        )
