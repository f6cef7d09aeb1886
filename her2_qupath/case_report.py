"""The case report: one page a pathologist reads beside the slide (``report.png``, ``report.pdf``).

It shows the slide with the scored regions, the class overlay, the score with
its guideline, level and HER2 expression group, the class percentages as a bar
chart with the guideline's cut-off, H-score, cells and tiles, the QC warnings,
the calibration used and the product version. Every panel has a title, every
picture a scale bar, every colour a legend entry, and the class colours are
the colour-blind-safe set of :data:`her2_qupath.config.HER2_COLORS`.

Matplotlib draws it through its object API (no pyplot state), one report at a
time (Matplotlib is not thread-safe; the server writes results from several
threads); both files are written atomically.
"""

from __future__ import annotations

import io
import os
import textwrap
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import __version__
from ._io import atomic_write_bytes
from .config import GUIDELINES, HER2_CLASSES, HER2_COLORS
from .render import PNG_COMPRESS_LEVEL, REGION_COLOUR, UNCOUNTED_COLOUR
from .scoring import SCORE_NAMES

__all__ = ["Picture", "case_report_figure", "write_case_report", "REPORT_FILES", "rgb01", "DRAW_LOCK",
           "load_drawing_modules"]

#: The files :func:`write_case_report` writes into a result folder.
REPORT_FILES = ("report.png", "report.pdf")
#: A4 landscape, inches
_PAGE = (11.69, 8.27)
_PNG_DPI = 110
#: pictures are reduced to this longest side for the page
_MAX_SIDE = 1000
#: Matplotlib draws one figure at a time in this process
DRAW_LOCK = threading.Lock()


@dataclass(frozen=True)
class Picture:
    """One titled picture of the report (RGB uint8, its scale bar already drawn)."""

    rgb: np.ndarray
    title: str


def rgb01(c: Sequence[int]) -> tuple[float, float, float]:
    """An 8-bit RGB colour as Matplotlib takes it (0-1)."""
    return (c[0] / 255.0, c[1] / 255.0, c[2] / 255.0)


def _reduced(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    f = _MAX_SIDE / max(h, w)
    if f >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _headline(summary: Mapping[str, Any]) -> tuple[str, tuple[float, float, float]]:
    score = summary.get("her2_score")
    if score in SCORE_NAMES:
        colour = rgb01(HER2_COLORS[f"HER2 {score}"])
        group = summary.get("her2_expression")
        return f"HER2 {score}" + (f"  ·  {group}" if group else ""), colour
    return "HER2 not evaluable", rgb01(HER2_COLORS["HER2 not evaluable"])


def _fmt(v: Any, spec: str = ".1f", unit: str = "") -> str:
    if v is None:
        return "–"
    try:
        return f"{float(v):{spec}}{unit}"
    except (TypeError, ValueError):
        return str(v)


def _measurements(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    level = summary.get("level", "pixel")
    rows = [
        ("H-score", _fmt(summary.get("h_score"), ".0f")),
        ("Positive (2+/3+)", _fmt(summary.get("percent_positive"), ".1f", " %")),
        ("Tiles counted", f"{summary.get('n_tiles_counted', 0)} of {summary.get('n_tiles', 0)}"),
    ]
    if summary.get("n_cells") is not None:
        rows.append(("Cells detected", f"{summary['n_cells']:,}"))
    elif summary.get("n_nuclei") is not None:
        rows.append(("Nuclei counted", f"{summary['n_nuclei']:,}"))
    if summary.get("tissue_mm2") is not None:
        rows.append(("Tissue analysed", _fmt(summary["tissue_mm2"], ".3f", " mm²")))
    intensity = summary.get("intensity")
    t = summary.get("thresholds")
    if intensity and t:
        unit = "OD·µm" if intensity == "membrane" else "DAB OD"
        what = "membrane line density" if intensity == "membrane" else "DAB optical density"
        rows.append(("Graded by", f"{what} ({level} level)"))
        rows.append(("1+ / 2+ / 3+ from", " / ".join(f"{x:.3g}" for x in t) + f" {unit}"))
    white = summary.get("white_point") or {}
    if white.get("rgb"):
        rows.append(("White point", ", ".join(f"{x:.0f}" for x in white["rgb"])
                     + f" ({white.get('source', '?')}" + ("" if white.get("reliable", True)
                                                          else ", doubtful") + ")"))
    if summary.get("registration"):
        rows.append(("Registration", "reliable" if summary.get("reliable", True) else "UNRELIABLE"))
    rows.append(("Calibration", Path(str(summary["calibration"]).split(" (sha256")[0]).name
                 if summary.get("calibration") else "none (default grading)"))
    return rows


def _cut_offs(summary: Mapping[str, Any]) -> list[float]:
    rule = GUIDELINES.get(str(summary.get("guideline")))
    if rule is None:
        return []
    return sorted({float(rule.t1), float(rule.t2), float(rule.t3)})


def _bar_chart(ax: Any, summary: Mapping[str, Any]) -> None:
    pct = summary.get("class_percentages") or {}
    values = [float(pct.get(k, 0.0)) for k in SCORE_NAMES]
    colours = [rgb01(HER2_COLORS[name]) for name in HER2_CLASSES]
    bars = ax.bar(range(4), values, color=colours, edgecolor="black", linewidth=0.8)
    for b, v in zip(bars, values, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v + 1.5, f"{v:.1f} %", ha="center", va="bottom",
                fontsize=9)
    for cut in _cut_offs(summary):
        ax.axhline(cut, color="black", linestyle="--", linewidth=0.8)
        ax.text(-0.45, cut + 1, f"{cut:g} %", ha="left", va="bottom", fontsize=8)
    ax.set_xticks(range(4), list(HER2_CLASSES))
    ax.set_ylim(0, max(105.0, max(values) + 12))
    unit = {"cell": "tumour cells", "pixel": "scored tumour"}.get(str(summary.get("level")),
                                                                  "scored tumour")
    ax.set_ylabel(f"% of {unit}")
    ax.set_title("Staining classes (dashed: the guideline's cut-offs)", fontsize=10, loc="left")
    ax.spines[["top", "right"]].set_visible(False)


def _text_panel(ax: Any, summary: Mapping[str, Any]) -> None:
    ax.axis("off")
    ax.set_title("Measurements and quality control", fontsize=10, loc="left")
    y = 0.97
    for label, value in _measurements(summary):
        ax.text(0.0, y, label, fontsize=8.5, va="top", transform=ax.transAxes, color="0.25")
        ax.text(0.36, y, value, fontsize=8.5, va="top", transform=ax.transAxes)
        y -= 0.068
    notes = [f"Not evaluable: {r}" for r in summary.get("not_evaluable_reasons") or []]
    notes += [w for w in summary.get("warnings") or [] if not w.startswith("not evaluable")]
    y -= 0.03
    ax.text(0.0, y, "QC warnings" if notes else "QC: no warnings", fontsize=8.5, va="top",
            fontweight="bold", transform=ax.transAxes)
    y -= 0.068
    for note in notes:
        for k, line in enumerate(textwrap.wrap(note, 78)[:4]):
            ax.text(0.0, y, ("• " if k == 0 else "  ") + line, fontsize=8, va="top",
                    transform=ax.transAxes)
            y -= 0.055
        if y < 0.0:
            break


def _legend_handles() -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(facecolor=rgb01(HER2_COLORS[n]), edgecolor="black", label=n)
                          for n in HER2_CLASSES]
    handles.append(Line2D([], [], color=rgb01(REGION_COLOUR), linewidth=2, label="scored region"))
    handles.append(Line2D([], [], color=rgb01(UNCOUNTED_COLOUR), linewidth=2,
                          label="tile not counted"))
    return handles


def case_report_figure(summary: Mapping[str, Any], pictures: Sequence[Picture]) -> Any:
    """The report page as a Matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=_PAGE)
    headline, colour = _headline(summary)
    fig.patches.append(_swatch(fig, colour))
    fig.text(0.075, 0.955, headline, fontsize=20, fontweight="bold", va="center")
    slide = summary.get("slide")
    slide_name = Path(str(slide.get("path", "")) if isinstance(slide, Mapping) else str(slide or "")).name
    rule = f"{summary.get('guideline', '?')} guideline, {summary.get('level', '?')} level, " \
           f"{summary.get('aggregation', '?')} aggregation"
    fig.text(0.075, 0.915, f"{slide_name}   ·   {rule}" if slide_name else rule, fontsize=10,
             color="0.2", va="center")
    n = max(1, len(pictures))
    top = fig.add_gridspec(1, n, left=0.03, right=0.97, top=0.88, bottom=0.43, wspace=0.05)
    for k, pic in enumerate(pictures):
        ax = fig.add_subplot(top[0, k])
        ax.imshow(_reduced(pic.rgb), interpolation="antialiased")
        ax.set_title(pic.title, fontsize=10, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
    if pictures:
        fig.legend(handles=_legend_handles(), loc="upper center", ncol=6, fontsize=8.5,
                   frameon=False, bbox_to_anchor=(0.5, 0.425))
    bottom = fig.add_gridspec(1, 2, left=0.07, right=0.97, top=0.36, bottom=0.07, wspace=0.22,
                              width_ratios=(1.0, 1.25))
    _bar_chart(fig.add_subplot(bottom[0, 0]), summary)
    _text_panel(fig.add_subplot(bottom[0, 1]), summary)
    prov = summary.get("provenance") or {}
    foot = f"her2-qupath {__version__}"
    if prov.get("created"):
        foot += f"  ·  {prov['created']}"
    if prov.get("run_id"):
        foot += f"  ·  run {prov['run_id']}"
    foot += ("  ·  An image-analysis aid: validate it on your laboratory's cases "
             "(her2-qupath validate) before reporting from it.")
    fig.text(0.03, 0.02, foot, fontsize=7.5, color="0.35")
    return fig


def _swatch(fig: Any, colour: tuple[float, float, float]) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((0.03, 0.935), 0.035, 0.04, transform=fig.transFigure, facecolor=colour,
                     edgecolor="black", linewidth=0.8)


def load_drawing_modules() -> None:
    """Import what drawing and saving the report needs: Matplotlib's figure, its PNG and PDF
    backends and the font subsetter of the PDF (about 0.3 s). A run whose tiles go to worker
    processes does it in a background thread while they start (:mod:`her2_qupath.pipeline.work`),
    off the serial end of the run; nothing is drawn."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.backends.backend_pdf  # noqa: F401
        import matplotlib.figure  # noqa: F401
        from fontTools import subset  # noqa: F401
        from matplotlib import font_manager  # noqa: F401
    except ImportError:  # pragma: no cover - the report imports them itself, and says so
        pass


def write_case_report(folder: str | os.PathLike[str], summary: Mapping[str, Any],
                      pictures: Sequence[Picture]) -> list[Path]:
    """Write ``report.png`` and ``report.pdf`` into ``folder`` (atomically); their paths."""
    encoded = []
    with DRAW_LOCK:
        fig = case_report_figure(summary, pictures)
        for kw in ({"format": "png", "dpi": _PNG_DPI,
                    "pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}}, {"format": "pdf"}):
            buf = io.BytesIO()
            fig.savefig(buf, **kw)
            encoded.append(buf.getvalue())
    out = []
    for name, data in zip(REPORT_FILES, encoded, strict=True):
        path = Path(folder) / name
        atomic_write_bytes(path, data)
        out.append(path)
    return out
