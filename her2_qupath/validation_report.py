"""``report.html`` of ``her2-qupath validate``: one self-contained page a pathologist can read.

The page holds the agreement figures of ``report.json`` with their 95 % intervals,
the confusion matrix as a picture (and as a table), the per-class sensitivity
and positive predictive value, agreement on the clinical groupings, a strip
plot of the stained percentages by the pathologist's score with the guideline's
cut-off drawn, and for each discordant case its case report (thumbnail and
overlay). Pictures are embedded as ``data:`` URIs, so the file can be mailed
or archived alone. Matplotlib draws through its object API (no pyplot state).
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_bytes
from .case_report import DRAW_LOCK, rgb01
from .config import GUIDELINES, HER2_CLASSES, HER2_COLORS
from .scoring import NOT_EVALUABLE, SCORE_NAMES

__all__ = ["write_html_report", "render_html", "fmt_ci"]

#: longest side of an embedded case report
_CASE_PX = 1000

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;
color:#111;line-height:1.4;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #bbb;padding:.25rem .6rem;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.muted{color:#555}.figure img{max-width:100%;border:1px solid #ddd}
.case{margin:1rem 0 2rem}.case img{max-width:100%;border:1px solid #ddd}
.warn{color:#8a0000}
"""


def fmt_ci(entry: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(value, "lo–hi")`` of a ``{"value", "ci95"}`` entry, two decimals ("n/a" if missing)."""
    if not entry or entry.get("value") is None:
        return "n/a", ""
    lo, hi = entry.get("ci95") or (None, None)
    ci = f"{lo:.2f}–{hi:.2f}" if lo is not None and hi is not None else ""
    return f"{entry['value']:.2f}", ci


def _png(figure: Any, report: Mapping[str, Any]) -> str:
    """``figure(report)`` drawn as a PNG data URI (under the case report's drawing lock)."""
    buf = io.BytesIO()
    with DRAW_LOCK:
        figure(report).savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_uri(path: Path) -> str | None:
    """A case report (or overlay) PNG reduced for the page, as a JPEG data URI."""
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as source:
        im = source.convert("RGB")
        im.thumbnail((_CASE_PX, _CASE_PX))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def confusion_figure(report: Mapping[str, Any]) -> Any:
    """The confusion matrix (pathologist rows, her2-qupath columns, plus not evaluable)."""
    from matplotlib.figure import Figure

    counts = np.asarray(report["confusion_matrix"]["counts"], float)
    ne = np.zeros((4, 1))
    for row in report.get("cases", []):
        if row["her2_qupath"] == NOT_EVALUABLE:
            ne[SCORE_NAMES.index(row["pathologist"]), 0] += 1
    full = np.hstack([counts, ne])
    fig = Figure(figsize=(5.6, 4.4))
    ax = fig.add_subplot()
    share = full / np.maximum(full.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(4):
        for j in range(5):
            ax.text(j, i, f"{int(full[i, j])}", ha="center", va="center", fontsize=12,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(5), [*SCORE_NAMES, "n.e."])
    ax.set_yticks(range(4), SCORE_NAMES)
    ax.set_xlabel("her2-qupath")
    ax.set_ylabel("pathologist")
    ax.set_title("Confusion matrix (cases; shade: share of the row)", fontsize=10, loc="left")
    fig.tight_layout()
    return fig


def strip_figure(report: Mapping[str, Any]) -> Any:
    """% at 3+ and % at 2+ or 3+ per case, by the pathologist's score, with the cut-off drawn."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    guideline = (report.get("settings") or {}).get("guideline", "breast")
    rule = GUIDELINES.get(guideline)
    fig = Figure(figsize=(10, 4))
    rng = np.random.default_rng(0)
    panels = (("% of tumour at 3+", ("3+",), rule.t3 if rule else None),
              ("% of tumour at 2+ or 3+", ("2+", "3+"), rule.t2 if rule else None))
    for k, (title, classes, cut) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        for row in report.get("cases", []):
            pct = row.get("class_percentages") or {}
            y = sum(float(pct.get(c, 0.0)) for c in classes)
            x = SCORE_NAMES.index(row["pathologist"]) + rng.uniform(-0.18, 0.18)
            called = row["her2_qupath"]
            if called == NOT_EVALUABLE:
                ax.scatter(x, y, s=40, facecolors="none", edgecolors="0.4", linewidths=1.2)
            else:
                ax.scatter(x, y, s=40, color=rgb01(HER2_COLORS[f"HER2 {called}"]), edgecolors="black",
                           linewidths=0.6)
        if cut is not None:
            ax.axhline(cut, color="black", linestyle="--", linewidth=0.9)
            ax.text(3.45, cut, f" {cut:g} % ({guideline} cut-off)", va="bottom", ha="right",
                    fontsize=8)
        ax.set_xticks(range(4), SCORE_NAMES)
        ax.set_xlim(-0.5, 3.5)
        ax.set_ylim(-3, 103)
        ax.set_xlabel("pathologist's score")
        ax.set_ylabel(title)
        ax.set_title(title + " by the pathologist's score", fontsize=10, loc="left")
        ax.spines[["top", "right"]].set_visible(False)
    handles = [Line2D([], [], marker="o", linestyle="", markerfacecolor=rgb01(HER2_COLORS[n]),
                      markeredgecolor="black", label=f"her2-qupath {n.split()[1]}")
               for n in HER2_CLASSES]
    handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                          markeredgecolor="0.4", label="not evaluable"))
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _row(cells: Sequence[str], *, head: bool = False, key: str | None = None) -> str:
    tag = "th" if head else "td"
    attr = f' data-key="{html.escape(key)}"' if key else ""
    return f"<tr{attr}>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _agreement_table(report: Mapping[str, Any]) -> str:
    rows = [_row(["Measure", "Value", "95 % interval"], head=True)]
    for key, label in (("exact", "Exact agreement"), ("within_one", "Within one step"),
                       ("kappa", "Cohen's kappa (unweighted)"),
                       ("quadratic_kappa", "Cohen's kappa (quadratic weights)"),
                       ("spearman_h_score", "Spearman: H-score vs score"),
                       ("spearman_percent_positive", "Spearman: % positive vs score")):
        if key in report:
            v, ci = fmt_ci(report[key])
            rows.append(_row([label, v, ci], key=key))
    rows.append(_row(["Errors of two or more steps", str(report["two_step_errors"]), ""],
                     key="two_step_errors"))
    rows.append(_row(["Pathologist 0 called 2+ or 3+", str(report["negative_called_positive"]), ""],
                     key="negative_called_positive"))
    rows.append(_row(["Not evaluable", str(report["unscored"]), ""], key="unscored"))
    return '<table id="agreement">' + "".join(rows) + "</table>"


def _confusion_table(report: Mapping[str, Any]) -> str:
    counts = report["confusion_matrix"]["counts"]
    ne = [sum(1 for r in report.get("cases", []) if r["pathologist"] == s and r["her2_qupath"] == NOT_EVALUABLE)
          for s in SCORE_NAMES]
    rows = [_row(["pathologist \\ her2-qupath", *SCORE_NAMES, NOT_EVALUABLE], head=True)]
    rows += [_row([s, *[str(int(c)) for c in counts[i]], str(ne[i])], key=s)
             for i, s in enumerate(SCORE_NAMES)]
    return '<table id="confusion">' + "".join(rows) + "</table>"


def _per_class_table(report: Mapping[str, Any]) -> str:
    rows = [_row(["Score", "Cases (pathologist)", "Called", "Sensitivity", "95 %",
                  "Positive predictive value", "95 %"], head=True)]
    for name, e in report["per_class"].items():
        sv, sci = fmt_ci(e["sensitivity"])
        pv, pci = fmt_ci(e["ppv"])
        rows.append(_row([name, str(e["n_truth"]), str(e["n_called"]), sv, sci, pv, pci], key=name))
    return '<table id="per-class">' + "".join(rows) + "</table>"


def _groups_table(report: Mapping[str, Any]) -> str:
    rows = [_row(["Grouping", "Groups", "Exact", "95 %", "Kappa", "95 %"], head=True)]
    for key, g in report["clinical_groups"].items():
        ev, eci = fmt_ci(g["exact"])
        kv, kci = fmt_ci(g["kappa"])
        rows.append(_row([key, " | ".join(html.escape(x) for x in g["groups"]), ev, eci, kv, kci],
                         key=key))
    return '<table id="groups">' + "".join(rows) + "</table>"


def _cases_table(report: Mapping[str, Any]) -> str:
    rows = [_row(["Case", "Pathologist", "her2-qupath", "H-score", "% positive (2+/3+)", "Note"],
                 head=True)]
    for r in report.get("cases", []):
        note = "; ".join(r.get("not_evaluable_reasons") or [])
        rows.append(_row([html.escape(r["case"]), r["pathologist"], r["her2_qupath"],
                          f"{r['h_score']:.0f}", f"{r['percent_positive']:.1f}", html.escape(note)],
                         key=r["case"]))
    return '<table id="cases">' + "".join(rows) + "</table>"


def _discordant(report: Mapping[str, Any], outdir: Path) -> str:
    folders = {r["case"]: r.get("folder") for r in report.get("cases", [])}
    parts = []
    for d in report.get("discordant", []):
        folder = folders.get(d["case"])
        uri = None
        if folder:
            uri = _file_uri(outdir / folder / "report.png") or _file_uri(outdir / folder / "overlay.png")
        img = (f'<img alt="case report of {html.escape(d["case"])}" src="{uri}">' if uri
               else '<p class="muted">no picture (the case folder is missing)</p>')
        parts.append(f'<div class="case" data-case="{html.escape(d["case"])}"><h3>'
                     f'{html.escape(d["case"])}: pathologist {d["pathologist"]}, her2-qupath '
                     f'{d["her2_qupath"]}</h3>{img}</div>')
    return "".join(parts) or "<p>No discordant case.</p>"


def render_html(report: Mapping[str, Any], outdir: str | Path) -> str:
    """The page's HTML text."""
    outdir = Path(outdir)
    st = report.get("settings") or {}
    thresholds = ", ".join(f"{t:g}" for t in st.get("thresholds", []))
    unit = "OD·µm" if st.get("intensity") == "membrane" else "DAB OD"
    settings = (f"{html.escape(str(st.get('guideline', '?')))} guideline, "
                f"{html.escape(str(st.get('level', '?')))} level, "
                f"{html.escape(str(st.get('aggregation', '?')))} aggregation; "
                f"{html.escape(str(st.get('intensity', '?')))} grading at {thresholds} {unit}; "
                f"calibration: {html.escape(str(st.get('calibration') or 'none (default grading)'))}")
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>her2-qupath validation report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>her2-qupath validation report</h1>
<p class="muted">her2-qupath {html.escape(str(st.get('her2_qupath', '')))} · {created}</p>
<p id="summary"><strong><span id="n">{report['n']}</span> cases scored</strong>,
<span id="unscored">{report['unscored']}</span> not evaluable. {settings}.</p>
<h2>Agreement with the pathologists</h2>
{_agreement_table(report)}
<p class="muted">Intervals: 95 % percentile bootstrap over cases ({report.get('bootstrap_resamples', '?')} resamples).
Cases "not evaluable" are left out of every figure and counted above.</p>
<h2>Confusion matrix</h2>
<div class="figure"><img id="confusion-figure" alt="confusion matrix" src="{_png(confusion_figure, report)}"></div>
{_confusion_table(report)}
<h2>Per score</h2>
{_per_class_table(report)}
<h2>Clinical groupings</h2>
{_groups_table(report)}
<h2>Stained tumour by the pathologist's score</h2>
<div class="figure"><img id="strip-figure" alt="strip plot" src="{_png(strip_figure, report)}"></div>
<p class="muted">Each dot is a case, coloured by the her2-qupath score; the dashed line is the
guideline's percentage cut-off (the intensity thresholds decide which class a cell or block is in).</p>
<h2>Discordant cases ({len(report.get('discordant', []))})</h2>
{_discordant(report, outdir)}
<h2>All cases</h2>
{_cases_table(report)}
</body></html>
"""


def write_html_report(report: Mapping[str, Any], outdir: str | Path) -> Path:
    """Write ``outdir/report.html`` (atomically) and return its path."""
    path = Path(outdir) / "report.html"
    atomic_write_bytes(path, render_html(report, outdir).encode("utf-8"))
    return path
