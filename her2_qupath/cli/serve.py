"""``her2-qupath serve``: the scoring server for QuPath scripts and the status page."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..config import ServerConfig

__all__ = ["command"]

_D = ServerConfig()


@click.command("serve")
@click.option(
    "--host",
    default=_D.host,
    show_default=True,
    help="Address to bind. Anything but loopback requires a token on every route but health.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=_D.port, show_default=True)
@click.option(
    "--token",
    default=None,
    help="Token clients send as 'Authorization: Bearer TOKEN'. Default: generated once, kept 0600 in "
    "the data directory, printed at start (only needed off loopback or with --require-token).",
)
@click.option("--require-token", is_flag=True, help="Require the token even on loopback.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Jobs database and results (a relative path is taken from the working directory at start). "
    "Default: the user's data directory (~/.local/share/her2-qupath).",
)
@click.option(
    "--image-root",
    "image_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder the server may read slides from (repeatable). Nothing outside is readable.",
)
@click.option(
    "--models-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder whose sub-folders are model directories, offered by GET /api/v1/models.",
)
@click.option(
    "--dask-scheduler",
    default=None,
    metavar="tcp://HOST:PORT",
    help="Send tile work to this Dask distributed cluster instead of the local pool.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=_D.workers,
    show_default=True,
    help="Jobs run at once (0: the CPU count).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=1),
    default=_D.max_queue,
    show_default=True,
    help="Queued jobs beyond this are refused with 429 and Retry-After.",
)
@click.option(
    "--requeue-interrupted/--fail-interrupted",
    default=_D.requeue_interrupted,
    show_default=True,
    help="What happens to jobs a restart or shutdown interrupted.",
)
@click.option(
    "--result-ttl-hours",
    type=click.FloatRange(min=0, min_open=True),
    default=_D.result_ttl_hours,
    show_default=True,
    help="Results older than this are deleted.",
)
@click.option(
    "--max-results-gb",
    type=click.FloatRange(min=0, min_open=True),
    default=_D.max_results_bytes / 1024**3,
    show_default=True,
    help="Disk the results may use; the oldest go first.",
)
@click.option(
    "--max-crash-retries",
    type=click.IntRange(min=0),
    default=_D.max_crash_retries,
    show_default=True,
    help="A job running when the server crashed is retried this often, then failed.",
)
@click.option(
    "--repair-db",
    is_flag=True,
    help="If the jobs database is damaged, move it aside (jobs.sqlite3.damaged-TIME) and start "
    "with an empty job list.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A calibration file from `her2-qupath calibrate`, applied to every request.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=_D.wsgi_threads,
    show_default=True,
    help="Request threads of the WSGI server.",
)
def command(
    host: str,
    port: int,
    token: str | None,
    require_token: bool,
    data_dir: Path | None,
    image_roots: tuple[Path, ...],
    models_dir: Path | None,
    dask_scheduler: str | None,
    workers: int,
    max_queue: int,
    requeue_interrupted: bool,
    result_ttl_hours: float,
    max_results_gb: float,
    max_crash_retries: int,
    repair_db: bool,
    calibration: Path | None,
    threads: int,
) -> None:
    """Run the scoring server (waitress) until SIGTERM or Ctrl-C.

    Interrupted jobs are re-queued at the next start; finished results stay.
    """
    from ..server import create_app
    from ..server.jobs import default_data_dir
    from ..server.security import is_loopback
    from ..server.wsgi import serve

    config = dataclasses.replace(
        _D,
        host=host,
        port=port,
        token=token,
        require_token=require_token,
        # resolved against the working directory now, whatever happens to it later
        data_dir=str((data_dir or default_data_dir()).expanduser().resolve()),
        image_roots=tuple(str(p.expanduser().resolve()) for p in image_roots),
        models_dir=str(models_dir.expanduser().resolve()) if models_dir else None,
        calibration=str(calibration.expanduser().resolve()) if calibration else None,
        dask_scheduler=dask_scheduler,
        workers=workers,
        max_queue=max_queue,
        requeue_interrupted=requeue_interrupted,
        result_ttl_hours=result_ttl_hours,
        max_results_bytes=int(max_results_gb * 1024**3),
        max_crash_retries=max_crash_retries,
        repair_db=repair_db,
        wsgi_threads=threads,
    )
    if not image_roots:
        click.echo(
            "warning: no --image-root given; the server will refuse every image path", err=True
        )
    app = create_app(config)
    state = app.extensions["her2_qupath"]
    moved = state.manager.store.moved_aside
    if moved is not None:
        click.echo(
            f"warning: the jobs database was damaged; it was moved to {moved} and the server "
            "starts with no jobs",
            err=True,
        )

    def ready(bound_host: str, bound_port: int) -> None:
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{shown}:{bound_port}"
        click.echo(
            f"her2-qupath server on {url}/  (data: {state.data_dir}; executor: "
            f"{state.manager.backend.kind}; {state.manager.workers} worker(s))"
        )
        if state.token is not None and state.token_source != "option":
            # generated by the server (now or at an earlier start, kept in <data-dir>/token)
            click.echo(f"token: {state.token}")
            click.echo(f"status page: {url}/?token={state.token}")
        elif state.token is not None:
            click.echo("token: the one given with --token")
            click.echo(f"status page: {url}/?token=<token>")
        click.echo("image roots: " + (", ".join(state.config.image_roots) or "none"), err=True)
        if not is_loopback(host):
            click.echo(
                "note: reachable from other machines; use TLS in front (a reverse proxy) on untrusted networks",
                err=True,
            )

    serve(app, host=host, port=port, threads=threads, on_ready=ready)
