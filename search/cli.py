"""``hpsearch`` command line: a thin layer over the Python API.

Exit codes: 0 success; 2 bad input (study file, arguments, unknown study, spec change); 3 storage
problem (unreachable, corrupt, disk full, lease held by another run); 4 the budget is used up and no
trial completed (every one failed or was pruned); 1 an unexpected failure; 130 interrupted (Ctrl-C
or SIGTERM).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn

import click

__all__ = ["main"]

STORAGE_HELP = "Database URL (else $HPSEARCH_STORAGE, else sqlite:///hpsearch.db in the current directory)."
OUTPUT = click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
                      show_default=True, help="table for people, json for programs (a stable contract).")
STORAGE = click.option("--storage", envvar=None, default=None, metavar="URL", help=STORAGE_HELP)


def _fail(message: str, code: int) -> NoReturn:
    first, *rest = message.strip().splitlines() or [""]
    click.echo(f"hpsearch: error: {first}", err=True)
    for line in rest:
        click.echo(f"  {line.strip()}" if not line.startswith("  ") else line, err=True)
    sys.exit(code)


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the library's exceptions to one clear message on stderr and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("name") or kwargs.get("study_name")
        resume = f"`hpsearch resume {shlex.quote(name)}`" if name else "`hpsearch resume` with the study's name"
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:  # before the API could say more (it turns the rest into Interrupted)
            _fail(f"interrupted (Ctrl-C); finished trials are saved and {resume} continues the study", 130)
        except BrokenPipeError:
            if _stdout_closed():  # the reader went away (`hpsearch show X | head`): click stops quietly
                raise
            _fail("unexpected BrokenPipeError (a connection closed by its other end)\n"
                  "(set HPSEARCH_DEBUG=1 to see the traceback)", 1)
        except Exception as e:
            # Error classes are looked up only in modules already imported, so that `ls`, `show` and
            # `best` never import torch (a DataError cannot come from a module that is not loaded).
            user = (_loaded("search._spec", "SpecError") + _loaded("search._errors", "UsageError")
                    + _loaded("trials", "DataError") + _loaded("search._ray", "ResourceError")
                    + _loaded("storage", "StudyNotFound") + _loaded("storage", "BadStorageURL"))
            if isinstance(e, user):
                _fail(str(e), 2)
            if isinstance(e, _loaded("storage", "StorageError")):
                _fail(str(e), 3)
            if isinstance(e, _loaded("search._orchestrator", "Interrupted")):
                _fail(str(e), 130)
            if os.environ.get("HPSEARCH_DEBUG"):
                raise
            if _is_database_error(e):
                _fail(f"database error: {_database_message(e, kwargs.get('storage'))}; finished trials are "
                      f"saved; fix the database, then {resume} continues the study", 3)
            first = (str(e).strip().splitlines() or [""])[0]
            _fail(f"unexpected {type(e).__name__}: {first}\n(set HPSEARCH_DEBUG=1 to see the traceback)", 1)

    return wrapper


def _stdout_closed() -> bool:
    """Whether stdout's reader is gone (a flush fails with EPIPE)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    return False


def _loaded(module: str, name: str) -> tuple[type[BaseException], ...]:
    """``(module.name,)`` if ``module`` is imported already, else ``()``."""
    mod = sys.modules.get(module)
    return (getattr(mod, name),) if mod is not None else ()


def _is_database_error(e: BaseException) -> bool:
    import sqlite3

    import optuna
    import sqlalchemy.exc

    return isinstance(e, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, sqlite3.Error))


def _database_message(e: BaseException, storage: str | None) -> str:
    import storage as st

    inner: BaseException = e
    while getattr(inner, "orig", None) is not None or inner.__cause__ is not None:
        inner = getattr(inner, "orig", None) or inner.__cause__  # type: ignore[assignment]
    text = next((ln.strip() for ln in str(inner).splitlines() if ln.strip()), type(inner).__name__)
    try:
        return st.scrub(text, st.resolve_url(storage))
    except Exception:
        return text


class _OneLineHandler(logging.Handler):
    """hpsearch's own warnings (database retries, lease heartbeat) as ``hpsearch: warning: ...`` lines
    on the current stderr, without the drivers' multi-line explanations."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = next((ln.strip() for ln in record.getMessage().splitlines() if ln.strip()), "")
            click.echo(f"hpsearch: warning: {text}", err=True)
        except Exception:  # a log line must never break a run
            self.handleError(record)


def _log_warnings_one_line() -> None:
    for name in ("storage", "search"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _OneLineHandler) for h in logger.handlers):
            handler = _OneLineHandler(logging.WARNING)
            logger.addHandler(handler)
        logger.propagate = False


class _Main(click.Group):
    """Click's own usage errors (bad option, missing argument) in the same one-line form."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
            sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
        except BrokenPipeError:
            # `hpsearch show X | head -1`: the reader went away; stop quietly with 1, as click does for
            # a closed pipe inside a command (stdout goes to /dev/null: Python's flush at exit would fail)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except click.exceptions.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `hpsearch`: the help, as click shows it
                e.show()
                sys.exit(e.exit_code)
            where = e.ctx.command_path if e.ctx is not None else "hpsearch"
            _fail(f"{e.format_message()} (see `{where} --help`)", e.exit_code)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            _fail("interrupted (Ctrl-C)", 130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str, allow_nan=False))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpsearch")
def main() -> None:
    """Hyperparameter search for PyTorch models: grid, random and TPE on Ray, stored in SQL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress output instead
    _log_warnings_one_line()


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented starter study file to PATH."""
    from ._template import TEMPLATE

    if path.exists() and not force:
        _fail(f"{path} exists; pass --force to overwrite it", 2)
    path.write_text(TEMPLATE.replace("NAME", path.stem), encoding="utf-8")
    click.echo(f"wrote {path}; run it with: hpsearch run {path}")


def _run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--address", default=None, metavar="RAY_ADDRESS",
                      help="Existing Ray cluster (else $RAY_ADDRESS, else a local Ray for this run).")(fn)
    fn = click.option("--allow-sqlite", is_flag=True,
                      help="Allow a SQLite storage with a remote Ray cluster (see docs/cluster.md).")(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")(fn)
    return STORAGE(fn)


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--study", "study_name", default=None, metavar="NAME", help="Study name (overrides the file).")
@click.option("--strategy", type=click.Choice(["grid", "random", "tpe"]), default=None,
              help="Strategy (overrides the file).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="Budget (overrides the file).")
@_run_options
@_user_errors
def run(study_file: Path, study_name: str | None, strategy: str | None, n_trials: int | None,
        storage: str | None, address: str | None, allow_sqlite: bool, quiet: bool) -> None:
    """Run the study in STUDY_FILE (an existing study of the same name and spec is resumed)."""
    from ._api import run_study
    from ._progress import ProgressCallbacks

    with ProgressCallbacks(enabled=not quiet) as cb:
        result = run_study(study_file, storage=storage, address=address, study_name=study_name,
                           strategy=strategy, n_trials=n_trials, callbacks=cb, allow_sqlite=allow_sqlite)
    _print_result(result)


@main.command()
@click.argument("name")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Set the study's total budget (n_trials): raise it to run more trials.")
@_run_options
@_user_errors
def resume(name: str, n_trials: int | None, storage: str | None, address: str | None,
           allow_sqlite: bool, quiet: bool) -> None:
    """Continue study NAME from what the storage holds; nothing finished runs again."""
    from ._api import resume_study
    from ._progress import ProgressCallbacks

    with ProgressCallbacks(enabled=not quiet) as cb:
        result = resume_study(name, storage=storage, address=address, n_trials=n_trials, callbacks=cb,
                              allow_sqlite=allow_sqlite)
    _print_result(result)


def _print_result(result: Any) -> None:
    for m in result.messages:
        click.echo(m, err=True)
    click.echo(f"study {result.study!r}: {result.done}/{result.budget} trials done ({result.storage})")
    if result.best is None:
        click.echo("no trial completed")
        if result.done >= result.budget:  # the budget is spent on failures: a script must notice
            _fail(f"no trial of study {result.study!r} completed; `hpsearch show {shlex.quote(result.study)}` "
                  "lists why each one failed", 4)
        return
    b = result.best
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in b.params.items())
    std = f" ± {b.value_std:.4g}" if b.value_std is not None else ""
    click.echo(f"best trial {b.number}: {b.value:.4g}{std}  ({params})")
    if b.test_score is not None:
        metric = (result.test_result or {}).get("metric", "test score")
        click.echo(f"held-out {metric}: {b.test_score:.4g}")


# -- read-only views ---------------------------------------------------------------------------------

def _row_dict(row: Any) -> dict[str, Any]:
    return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(row)


@main.command("ls")
@STORAGE
@OUTPUT
@_user_errors
def ls_(storage: str | None, output: str) -> None:
    """List the studies in the storage."""
    from ._views import list_studies

    studies = list_studies(storage)
    if output == "json":
        _echo_json({"studies": studies})
        return
    if not studies:
        click.echo("no studies")
        return
    _table(["study", "strategy", "direction", "done", "running", "failed", "best"],
           [[s["name"], s.get("strategy"), s["direction"], s["n_complete"] + s["n_pruned"],
             s["n_running"], s["n_fail"], s["best_value"]] for s in studies])


@main.command()
@click.argument("name")
@STORAGE
@OUTPUT
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N trials.")
@click.option("--sort", type=click.Choice(["number", "best"]), default="number", show_default=True)
@_user_errors
def show(name: str, storage: str | None, output: str, limit: int | None, sort: str) -> None:
    """Table of the trials of study NAME."""
    from ._views import show_study

    out = show_study(name, storage, limit=limit, order=sort)
    if output == "json":
        _echo_json(out)
        return
    rows = []
    for t in out["trials"]:
        value = _fmt(t["value"]) + (f" ± {t['value_std']:.3g}" if t.get("value_std") is not None else "")
        params = " ".join(f"{k}={_fmt(v)}" for k, v in t["params"].items())
        rows.append([t["number"], t["state"], value, params, _fmt(t.get("epochs")),
                     _fmt(t.get("duration_s")), t.get("fail_reason") or ""])
    click.echo(f"study {out['study']!r} ({out['direction']}, metric {out.get('metric')})")
    _table(["#", "state", "value", "params", "epochs", "seconds", "note"], rows)


@main.command()
@click.argument("name")
@STORAGE
@OUTPUT
@_user_errors
def best(name: str, storage: str | None, output: str) -> None:
    """The best trial of study NAME: params, CV score, per-fold scores, held-out test score."""
    from ._views import best_of

    out = best_of(name, storage)
    if output == "json":
        _echo_json(out)
        return
    click.echo(f"study {out['study']!r}: best trial {out['number']}")
    click.echo(f"  {out['metric']}: {out['value']:.4g} ± {out['value_std'] or 0:.3g} over folds")
    click.echo("  fold scores: " + ", ".join(f"{s:.4g}" for s in out["fold_scores"]))
    for k, v in out["params"].items():
        click.echo(f"  {k}: {_fmt(v)}")
    ts = out.get("test_score")
    click.echo(f"  held-out test score: {_fmt(ts)}" + ("" if ts is not None else " (not refit yet)"))


def _table(header: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*header, box=None, pad_edge=False)
    for r in rows:  # cells are data (study names, params, failure reasons), never rich markup
        table.add_row(*(Text(_fmt(c)) for c in r))
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


from . import _cli_inspect  # noqa: E402 - registers dashboard, report, export

_cli_inspect.register(main)

if __name__ == "__main__":  # pragma: no cover
    main()
