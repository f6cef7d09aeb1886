"""``her2-qupath demo``: the whole pipeline on a built-in synthetic pair."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import progress

__all__ = ["command"]


@click.command("demo")
@click.option("-o", "--output", "outdir", default=Path("demo-output"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where inputs and results go.")
@click.option("--size", type=click.IntRange(512, 8192), default=2048, show_default=True,
              help="Side of the synthetic slides in pixels (0.5 µm/px).")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed of the tissue.")
def command(outdir: Path, size: int, seed: int) -> None:
    """Score a synthetic H&E/IHC pair whose answer is known, end to end.

    Renders an H&E and a HER2 IHC slide of the same tissue (the IHC section
    rotated and shifted), tumour annotations on the H&E slide, then registers
    the pair, maps every H&E tile to its IHC partner, measures each cell's
    membrane staining and scores the regions by the ASCO/CAP breast rule.
    Prints measured against true percentages; results land in OUTPUT/results
    (QuPath GeoJSON, summary.json, overlay.png). No data or weights needed.
    """
    from ..demo import run_demo
    from .score import print_summary

    click.echo(f"Rendering a synthetic H&E/IHC pair ({size}x{size} px) into {outdir}/inputs ...")
    with progress("Scoring tiles") as cb:
        result, rows = run_demo(outdir, size=size, seed=seed, progress=cb)
    print_summary(result.summary, outdir / "results")
    reg = result.summary.get("registration") or {}
    q = reg.get("quality", {})
    if q:
        shown = {k: round(v, 3) for k, v in q.items() if isinstance(v, float)}
        click.echo(f"Registration H&E -> IHC: {shown}")
    click.echo("Known truth vs measured (percent of tumour cells):")
    click.echo(f"  {'region':<16} {'expected':>8} {'measured':>8}  {'max |error|':>11}")
    for row in rows:
        err = "-" if row["max_percent_error"] is None else f"{row['max_percent_error']:.1f} pts"
        click.echo(f"  {row['region']:<16} {'HER2 ' + row['expected']:>8} "
                   f"{'HER2 ' + str(row['measured']):>8}  {err:>11}")
    click.echo(f"Open {outdir}/results/overlay.png, or import the GeoJSON files into QuPath "
               f"(File > Import objects) on {outdir}/inputs/ihc.svs and he.svs.")
