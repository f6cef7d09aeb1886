"""``her2-qupath warp``: carry points or QuPath annotations between H&E and IHC."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["command"]


@click.command("warp")
@click.argument("transform_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--points", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV with columns X and Y (other columns, e.g. an unnamed index, are kept).")
@click.option("--geojson", type=click.Path(exists=True, dir_okay=False), default=None,
              help="GeoJSON exported from QuPath (FeatureCollection, Feature list or Feature).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="File to write (same format as the input).")
@click.option("--inverse", is_flag=True,
              help="Map IHC (moving) coordinates back to H&E (fixed) coordinates.")
def command(transform_json: str, points: str | None, geojson: str | None, output: str,
            inverse: bool) -> None:
    """Map points or GeoJSON from H&E to IHC level-0 pixels (or back with --inverse).

    This moves e.g. tumour annotations drawn on the H&E slide onto the IHC slide:
    import the output GeoJSON into the IHC image in QuPath. Every geometry type
    is mapped; properties (classification, name, measurements) are unchanged.
    """
    from .._io import atomic_write_json
    from ..errors import GeoJSONError, UserInputError
    from ..registration import Transform
    from ..registration.files import warp_geojson, warp_points_csv

    if (points is None) == (geojson is None):
        raise UserInputError("give exactly one of --points and --geojson", hint="see `her2-qupath warp -h`")
    for src in (points, geojson, transform_json):
        if src is not None and Path(src).resolve() == Path(output).resolve():
            raise UserInputError(f"output {output} would overwrite an input", hint="choose another -o")
    transform = Transform.from_json(transform_json)
    direction = "IHC -> H&E" if inverse else "H&E -> IHC"
    if not transform.reliable:
        click.echo("Warning: this transform was flagged unreliable when it was made; check the result.",
                   err=True)
    if points is not None:
        n = warp_points_csv(transform, points, output, inverse=inverse)
        click.echo(f"mapped {n} points ({direction}) to {output}")
        return
    try:
        data = json.loads(Path(geojson).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GeoJSONError(f"{geojson} is not valid JSON: {err}",
                           hint="export the objects from QuPath with File > Export objects as GeoJSON") from err
    out = warp_geojson(transform, data, inverse=inverse)
    atomic_write_json(output, out, indent=None)
    n = len(out.get("features", [])) if isinstance(out, dict) and "features" in out else (
        len(out) if isinstance(out, list) else 1)
    click.echo(f"mapped {n} objects ({direction}) to {output}")
