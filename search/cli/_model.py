"""``hpsearch export-model`` and ``predict``: thin commands over :mod:`search._model`."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import ARTIFACTS, STORAGE, user_errors

__all__ = ["export_model", "predict"]


@click.command("export-model")
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to write; read it with search.load_model_file(PATH).")
@STORAGE
@ARTIFACTS
@user_errors
def export_model(name: str, out: Path, storage: str | None, artifacts: str | None) -> None:
    """Write the saved best model of study NAME (weights, spec, params, scaling, labels) to a file."""
    from .._model import export_model as export

    path = export(name, out, storage=storage, artifacts=artifacts)
    click.echo(f"wrote {path}; load it with search.load_model_file({str(path)!r})", err=True)


@click.command()
@click.argument("name")
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="Rows to predict on, in the study's data format (the label column, if present, is ignored).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV to write (default: stdout): row, prediction, p_<class>...")
@STORAGE
@ARTIFACTS
@user_errors
def predict(name: str, data_path: Path, out: Path | None, storage: str | None, artifacts: str | None) -> None:
    """Predict with the saved best model of study NAME: one CSV row per input row."""
    from .._model import predict as run_predict
    from .._model import write_predictions

    pred = run_predict(name, data_path, storage=storage, artifacts=artifacts)
    write_predictions(pred, out)
    if out is not None:
        click.echo(f"wrote {len(pred.labels)} predictions to {out}", err=True)
