"""``hpsearch init``, ``run`` and ``resume``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._common import ARTIFACTS, STORAGE, fail, fmt, stdout_to_devnull, user_errors

__all__ = ["init", "resume", "run"]


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented starter study file to PATH."""
    from ._template import TEMPLATE

    if path.exists() and not force:
        fail(f"{path} exists; pass --force to overwrite it", 2)
    path.write_text(TEMPLATE.replace("NAME", path.stem), encoding="utf-8")
    click.echo(f"wrote {path}; run it with: hpsearch run {path}")


def _run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--address", default=None, metavar="RAY_ADDRESS",
                      help="Existing Ray cluster (else $RAY_ADDRESS, else a local Ray for this run).")(fn)
    fn = click.option("--allow-sqlite", is_flag=True,
                      help="Allow a SQLite storage with a remote Ray cluster (see docs/cluster.md).")(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(fn)
    fn = ARTIFACTS(fn)
    return STORAGE(fn)


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--study", "study_name", default=None, metavar="NAME", help="Study name (overrides the file).")
@click.option("--strategy", type=click.Choice(["grid", "random", "tpe"]), default=None,
              help="Strategy (overrides the file).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="Budget (overrides the file).")
@_run_options
@user_errors
def run(study_file: Path, study_name: str | None, strategy: str | None, n_trials: int | None,
        storage: str | None, artifacts: str | None, address: str | None, allow_sqlite: bool, quiet: bool) -> None:
    """Run the study in STUDY_FILE (an existing study of the same name and spec is resumed)."""
    from .._api import run_study
    from ._progress import ProgressCallbacks

    with ProgressCallbacks(enabled=not quiet) as cb:
        _run_and_print(lambda: run_study(study_file, storage=storage, address=address, study_name=study_name,
                                         strategy=strategy, n_trials=n_trials, callbacks=cb,
                                         allow_sqlite=allow_sqlite, artifacts=artifacts), cb)


@click.command()
@click.argument("name")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Set the study's total budget (n_trials): raise it to run more trials.")
@_run_options
@user_errors
def resume(name: str, n_trials: int | None, storage: str | None, artifacts: str | None, address: str | None,
           allow_sqlite: bool, quiet: bool) -> None:
    """Continue study NAME from what the storage holds; nothing finished runs again."""
    from .._api import resume_study
    from ._progress import ProgressCallbacks

    with ProgressCallbacks(enabled=not quiet) as cb:
        _run_and_print(lambda: resume_study(name, storage=storage, address=address, n_trials=n_trials,
                                            callbacks=cb, allow_sqlite=allow_sqlite, artifacts=artifacts), cb)


def _run_and_print(call: Callable[[], Any], progress: Any) -> None:
    """Run ``call`` (a run or a resume) and print what it ended with; exit 4 when no trial completed."""
    from .._errors import NoTrialCompleted

    try:
        result = call()
    except NoTrialCompleted as e:
        progress.close()
        _print_result(e.result)
        fail(str(e), 4)
    progress.close()
    _print_result(result)


def _print_result(result: Any) -> None:
    """Print the summary; a reader that went away (`hpsearch run X | head -1`) changes no exit code:
    the run's outcome, not its printing, decides it."""
    try:
        _write_result(result)
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_to_devnull()


def _write_result(result: Any) -> None:
    for m in result.messages:
        click.echo(m, err=True)
    if result.done <= result.budget:
        click.echo(f"study {result.study!r}: {result.done}/{result.budget} trials done ({result.storage})")
    else:  # the budget was lowered below what is done: nothing was left to run
        click.echo(f"study {result.study!r}: {result.done} trials done, more than its budget of {result.budget} "
                   f"({result.storage})")
    if result.best is None:
        click.echo("no trial completed")
        return
    b = result.best
    params = ", ".join(f"{k}={fmt(v)}" for k, v in b.params.items())
    std = f" ± {b.value_std:.4g}" if b.value_std is not None else ""
    click.echo(f"best trial {b.number}: {b.value:.4g}{std}  ({params})")
    if b.test_score is not None:
        metric = (result.test_result or {}).get("metric", "test score")
        click.echo(f"held-out {metric}: {b.test_score:.4g}")
    elif result.refit_error:
        click.echo(f"hpsearch: warning: no held-out test score: the final refit of trial {b.number} failed "
                   f"({result.refit_error})", err=True)
