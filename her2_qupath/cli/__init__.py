"""The ``her2-qupath`` command: a thin layer over the library.

Each command lives in its own module of this package and is loaded only
when it runs, so ``her2-qupath --help`` stays fast (no torch import). User
errors (:class:`~her2_qupath.errors.Her2Error`) print one line and exit
with code 2; ``-v`` shows the traceback and debug logging.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from .. import __version__
from ..errors import Her2Error

__all__ = ["main", "cli"]

#: command name -> (module inside her2_qupath.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "Run the whole pipeline on a built-in synthetic H&E/IHC pair."),
    "batch": ("batch", "Score every IHC image (or H&E + IHC pair) of a QuPath project."),
    "info": ("info", "Describe a slide: format, levels, pixel size, associated images."),
    "serve": ("serve", "Run the scoring server for QuPath scripts, with a status page."),
    "register": ("register", "Register an H&E slide to its IHC slide; write the transform JSON."),
    "warp": ("warp", "Map points or QuPath GeoJSON between H&E and IHC with a transform."),
    "score": ("score", "Score HER2 on an IHC slide (and its H&E partner); write QuPath GeoJSON."),
    "train": ("train", "Train the tumor/stain classifiers or the stain segmenter on your data."),
    "evaluate": ("evaluate", "Evaluate a model on a labelled set: metrics JSON and plots."),
    "calibrate": ("calibrate", "Fit the membrane grading to your cases; write a calibration file."),
    "validate": ("validate", "Agreement with your pathologists on your own cases: report.json."),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
        cmd: click.Command = module.command
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="her2-qupath")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: debug); show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """HER2 scoring of whole-slide images, for QuPath."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: run the CLI, turning product errors into one-line messages."""
    verbose = any(a in ("-v", "-vv", "-vvv", "--verbose") for a in (argv or sys.argv[1:]))
    try:
        return cli.main(args=argv, prog_name="her2-qupath", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Her2Error as exc:
        if verbose:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except MemoryError as exc:
        if verbose:
            raise
        click.echo(f"Error: out of memory: {exc or 'the run needed more memory than this machine has'} "
                   "(score smaller regions, a larger --working-mpp, or on a machine with more memory)",
                   err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
