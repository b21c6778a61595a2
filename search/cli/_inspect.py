"""``hpsearch dashboard``, ``report`` and ``export``: thin commands over :mod:`search.inspect`."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import ARTIFACTS, STORAGE, user_errors

__all__ = ["dashboard", "export", "report"]

@click.command()
@STORAGE
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but 127.0.0.1/localhost exposes an unauthenticated dashboard "
                   "that can modify and delete studies.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port to bind.")
@click.option("--log-requests", is_flag=True, help="Log every HTTP request on stderr.")
@ARTIFACTS
@user_errors
def dashboard(storage: str | None, host: str, port: int, log_requests: bool, artifacts: str | None) -> None:
    """Serve optuna-dashboard on the storage until Ctrl-C (http://127.0.0.1:8080/dashboard)."""
    from ..inspect import serve_dashboard

    serve_dashboard(storage, host=host, port=port, log_requests=log_requests, artifacts=artifacts)


@click.command()
@click.argument("name")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("report"),
              show_default=True, help="Directory for report.html and the PNG plots (created if missing).")
@STORAGE
@user_errors
def report(name: str, out_dir: Path, storage: str | None) -> None:
    """Write an HTML report (images embedded) and PNG plots of study NAME."""
    from ..inspect import write_report

    path = write_report(name, out_dir, storage_url=storage)
    click.echo(f"wrote {path} (self-contained) and its PNG plots in {path.parent}")


@click.command()
@click.argument("name")
@click.option("--format", "-f", "fmt", type=click.Choice(["csv", "json", "parquet"]), default="csv",
              show_default=True, help="csv/parquet: params as param_<name>, fold scores as fold_<i> columns; "
                                      "json: the rows of `show -o json`.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: stdout; required for parquet).")
@STORAGE
@user_errors
def export(name: str, fmt: str, out: Path | None, storage: str | None) -> None:
    """One row per trial of study NAME: number, state, value, value_std, params, fold scores, ..."""
    from ..inspect import write_export

    path = write_export(name, fmt, out, storage_url=storage)
    if path is not None:
        click.echo(f"wrote {path}", err=True)
