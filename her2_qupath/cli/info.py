"""``her2-qupath info SLIDE``: describe a slide image."""

from __future__ import annotations

import json
from typing import Any

import click

from ._common import mpp_option

__all__ = ["command", "format_info"]


def _fmt_mpp(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4g}"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable text for :meth:`her2_qupath.slide.Slide.info`."""
    w, h = info["dimensions"]
    mpp = info["mpp"]
    if mpp is None:
        mpp_line = "unknown (none in the file; give it with --mpp)"
    else:
        mpp_line = f"{mpp:.4g} µm/px ({info['mpp_source']})"
    mag = info["magnification"]
    tile = info["tile_size"]
    lines = [
        f"file           {info['path']}",
        f"format         {info['format']}",
        f"dimensions     {w} × {h} px",
        f"pixel size     {mpp_line}",
        f"magnification  {'unknown' if mag is None else f'{mag:g}×'}",
        f"tile size      {'none (stripped or whole image)' if tile is None else f'{tile[0]} × {tile[1]}'}",
        f"compression    {info['compression']}",
        f"levels         {info['level_count']}",
        "  level       width      height  downsample     µm/px",
    ]
    for lv in info["levels"]:
        lines.append(f"  {lv['level']:>5} {lv['width']:>11} {lv['height']:>11} "
                     f"{lv['downsample']:>11.4g} {_fmt_mpp(lv['mpp']):>9}")
    assoc = info["associated_images"]
    if assoc:
        listed = ", ".join(f"{name} ({aw} × {ah})" for name, (aw, ah) in assoc.items())
    else:
        listed = "none"
    lines.append(f"associated     {listed}")
    return "\n".join(lines)


@click.command("info")
@click.argument("slide", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@mpp_option()
def command(slide: str, as_json: bool, mpp: float | None) -> None:
    """Describe SLIDE: format, levels (size, downsample), pixel size, magnification,
    tile size, compression and associated images (thumbnail, label, macro)."""
    from ..slide import open_slide

    with open_slide(slide, mpp=mpp) as s:
        info = s.info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(format_info(info))
