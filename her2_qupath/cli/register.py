"""``her2-qupath register``: align an H&E slide to its IHC partner."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

from ._common import progress

__all__ = ["command"]

log = logging.getLogger(__name__)

_MPP = click.FloatRange(min=0, min_open=True)


def _read_landmarks(path: str | None):
    if path is None:
        return None
    from ..registration.files import read_points_csv

    return read_points_csv(path)[2]


@click.command("register")
@click.option("--fixed", "fixed", required=True, type=click.Path(exists=True, dir_okay=False),
              help="H&E slide (the fixed image; transforms map its coordinates).")
@click.option("--moving", "moving", required=True, type=click.Path(exists=True, dir_okay=False),
              help="IHC slide (the moving image).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Transform JSON to write.")
@click.option("--model", type=click.Choice(["rigid", "affine", "nonrigid"]), default=None,
              help="Transform model (default from the configuration: nonrigid; its affine part is "
                   "what QuPath's image alignment can apply).")
@click.option("--mpp", type=_MPP, default=None,
              help="Pixel size (µm/px) of both images, for images that carry none (JPEG, PNG). "
                   "Without any pixel size both images are taken to share one and the transform "
                   "is in pixels.")
@click.option("--fixed-mpp", type=_MPP, default=None, help="Pixel size of the H&E image (overrides --mpp).")
@click.option("--moving-mpp", type=_MPP, default=None, help="Pixel size of the IHC image (overrides --mpp).")
@click.option("--metric", type=click.Choice(["auto", "hema", "od", "mix"]), default="auto", show_default=True,
              help="Image aligned: hematoxylin (hema), optical density of all stains (od, for an IHC "
                   "without counterstain), their mean (mix); auto takes od when a hematoxylin is weak.")
@click.option("--allow-mirror/--no-mirror", default=None,
              help="Also try the mirrored IHC section (a slide mounted face down).")
@click.option("--overview", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG: H&E | aligned IHC | checkerboard.")
@click.option("--fixed-landmarks", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV (X, Y) of H&E landmarks: arrows on the overview and errors in the summary.")
@click.option("--moving-landmarks", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV (X, Y) of the matching IHC landmarks, row for row.")
@click.option("--truncate-landmarks", is_flag=True,
              help="Landmark files of different lengths: use the first pairs (refused otherwise).")
def command(fixed: str, moving: str, output: str, model: str | None, mpp: float | None,
            fixed_mpp: float | None, moving_mpp: float | None, metric: str, allow_mirror: bool | None,
            overview: str | None, fixed_landmarks: str | None, moving_landmarks: str | None,
            truncate_landmarks: bool) -> None:
    """Register an H&E slide (fixed) to its IHC slide (moving) and save the transform.

    The transform maps H&E level-0 pixel coordinates to IHC level-0 pixel
    coordinates; `her2-qupath warp` applies it to points and GeoJSON, and its
    "qupath_affine" is the matrix of QuPath's Interactive image alignment.
    """
    from ..config import RegistrationConfig
    from ..errors import UserInputError
    from ..registration.files import register_slides
    from ..registration.render import reliability_text

    cfg = RegistrationConfig()
    if model is not None:
        cfg = replace(cfg, model=model)
    if allow_mirror is not None:
        cfg = replace(cfg, allow_mirror=allow_mirror)
    fmpp = fixed_mpp if fixed_mpp is not None else mpp
    mmpp = moving_mpp if moving_mpp is not None else mpp
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise UserInputError("--fixed-landmarks and --moving-landmarks go together",
                             hint="give both CSV files or neither")
    lf, lm = _read_landmarks(fixed_landmarks), _read_landmarks(moving_landmarks)
    if lf is not None and lm is not None and len(lf) != len(lm) and not truncate_landmarks:
        raise UserInputError(
            f"the landmark files have {len(lf)} and {len(lm)} rows: row i of one must match row i "
            "of the other", hint=f"cut both to the rows that match, or pass --truncate-landmarks to "
                                 f"use the first {min(len(lf), len(lm))} pairs")
    with progress("registering", unit="step") as cb:
        transform = register_slides(fixed, moving, cfg, fixed_mpp=fmpp, moving_mpp=mmpp, progress=cb,
                                    metric=metric)
    quality = dict(transform.quality)
    if lf is not None and lm is not None:
        n = min(len(lf), len(lm))
        err = np.hypot(*(transform.apply(lf[:n]) - lm[:n]).T)
        diag = float(np.hypot(*transform.moving_size))
        quality["landmarks"] = {
            "n": int(n),
            "median_px": round(float(np.median(err)), 3),
            "p90_px": round(float(np.percentile(err, 90)), 3),
            "median_rtre": round(float(np.median(err)) / diag, 6),
            "p90_rtre": round(float(np.percentile(err, 90)) / diag, 6),
        }
        transform = transform.with_metadata(quality=quality)
    transform.to_json(output)
    if overview is not None:
        _write_overview(fixed, moving, transform, overview, fmpp, mmpp, lf, lm)
    a = transform.to_qupath_affine()
    click.echo(f"wrote {output}  (model {transform.model}, units {quality.get('unit')})")
    click.echo(f"{reliability_text(quality)} (minimum score {quality['min_quality']}; "
               f"aligned on {quality.get('metric')}, start from {quality.get('start')})")
    if "landmarks" in quality:
        lmq = quality["landmarks"]
        click.echo(f"landmarks: median error {lmq['median_px']:.2f} px ({100 * lmq['median_rtre']:.3f} % of "
                   f"the IHC diagonal), 90th percentile {lmq['p90_px']:.2f} px")
    click.echo("QuPath affine (H&E open, IHC as overlay): "
               f"[[{a[0][0]:.6f}, {a[0][1]:.6f}, {a[0][2]:.3f}], [{a[1][0]:.6f}, {a[1][1]:.6f}, {a[1][2]:.3f}]]")
    if not transform.reliable:
        click.echo("Warning: the registration is unreliable (the images may show different tissue, or "
                   "be mirrored: try --allow-mirror; for an IHC without counterstain try --metric od); "
                   "results mapped through it are flagged.", err=True)


def _write_overview(fixed: str, moving: str, transform, path: str, fmpp, mmpp, lf, lm) -> None:
    from .._io import atomic_write_bytes
    from ..registration.render import render_registration
    from ..slide import open_slide

    with open_slide(fixed, mpp=fmpp) as fs, open_slide(moving, mpp=mmpp) as ms:
        frgb = np.asarray(fs.thumbnail(max_size=1024))[..., :3]
        mrgb = np.asarray(ms.thumbnail(max_size=1024))[..., :3]
    img = render_registration(frgb, mrgb, transform, landmarks=None if lf is None else (lf, lm))
    atomic_write_bytes(path, _png_bytes(img))
    log.info("wrote %s", Path(path))


def _png_bytes(rgb) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()

