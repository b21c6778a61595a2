"""What every command shares: the error mapping (one ``hpsearch: error:`` line and an exit code),
common options, one-line warnings, JSON and table output."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn

import click

STORAGE_HELP = "Database URL (else $HPSEARCH_STORAGE, else sqlite:///hpsearch.db in the current directory)."
OUTPUT = click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
                      show_default=True, help="table for people, json for programs (a stable contract).")
STORAGE = click.option("--storage", envvar=None, default=None, metavar="URL", help=STORAGE_HELP)
ARTIFACTS = click.option("--artifacts", default=None, metavar="DIR|s3://BUCKET[/PREFIX]",
                         help="Artifact store of the best model and the checkpoints: a directory (a path or "
                              "file://PATH) or an S3 bucket (boto3's AWS settings: credentials, region, "
                              "AWS_ENDPOINT_URL_S3); else $HPSEARCH_ARTIFACTS, else <sqlite file>.artifacts beside "
                              "a SQLite storage.")


def fail(message: str, code: int) -> NoReturn:
    first, *rest = message.strip().splitlines() or [""]
    click.echo(f"hpsearch: error: {first}", err=True)
    for line in rest:
        click.echo(f"  {line.strip()}" if not line.startswith("  ") else line, err=True)
    sys.exit(code)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the library's exceptions to one clear message on stderr and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("name") or kwargs.get("study_name")
        resume = f"`hpsearch resume {shlex.quote(name)}`" if name else "`hpsearch resume` with the study's name"
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:  # before the API could say more (it turns the rest into Interrupted)
            fail(f"interrupted (Ctrl-C); finished trials are saved and {resume} continues the study", 130)
        except BrokenPipeError:
            if _stdout_closed():  # the reader went away (`hpsearch show X | head`): click stops quietly
                raise
            fail("unexpected BrokenPipeError (a connection closed by its other end)\n"
                  "(set HPSEARCH_DEBUG=1 to see the traceback)", 1)
        except Exception as e:
            # Error classes are looked up only in modules already imported, so that `ls`, `show` and
            # `best` never import torch (a DataError cannot come from a module that is not loaded).
            user = (_loaded("search._spec", "SpecError") + _loaded("search._errors", "UsageError")
                    + _loaded("trials", "DataError") + _loaded("trials", "ModelError")
                    + _loaded("trials._trainable", "TrainableError")
                    + _loaded("search.backends._ray", "ResourceError")
                    + _loaded("storage", "StudyNotFound") + _loaded("storage", "BadStorageURL"))
            if isinstance(e, user):
                fail(str(e), 2)
            if isinstance(e, _loaded("storage", "StorageError") + _loaded("search.service._runner", "RunnerDied")):
                fail(str(e), 3)
            if isinstance(e, _loaded("search._orchestrator", "Interrupted")):
                fail(str(e), 130)
            if os.environ.get("HPSEARCH_DEBUG"):
                raise
            if _is_database_error(e):
                fail(f"database error: {_database_message(e, kwargs.get('storage'))}; finished trials are "
                      f"saved; fix the database, then {resume} continues the study", 3)
            first = (str(e).strip().splitlines() or [""])[0]
            fail(f"unexpected {type(e).__name__}: {first}\n(set HPSEARCH_DEBUG=1 to see the traceback)", 1)

    return wrapper


def _stdout_closed() -> bool:
    """Whether stdout's reader is gone (a flush fails with EPIPE)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    return False


def stdout_to_devnull() -> None:
    """Point stdout at /dev/null once its reader is gone, so that later writes and Python's flush at
    exit do not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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


def log_warnings_one_line() -> None:
    for name in ("storage", "search"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _OneLineHandler) for h in logger.handlers):
            handler = _OneLineHandler(logging.WARNING)
            logger.addHandler(handler)
        logger.propagate = False


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str, allow_nan=False))


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(header: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*header, box=None, pad_edge=False)
    for r in rows:  # cells are data (study names, params, failure reasons), never rich markup
        table.add_row(*(Text(fmt(c)) for c in r))
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
