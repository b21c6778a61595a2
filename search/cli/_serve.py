"""``hpsearch serve``, ``token create`` and the client commands ``submit``, ``cancel``, ``watch``
(``ls --server`` is in ``_views.py``): thin layers over :mod:`search.service`."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from ._common import ARTIFACTS, OUTPUT, STORAGE, echo_json, fail, fmt, user_errors

__all__ = ["SERVER", "TOKEN", "cancel", "client_errors", "make_client", "serve", "submit", "token", "watch"]

SERVER = click.option("--server", envvar="HPSEARCH_SERVER", default=None, metavar="URL",
                      help="URL of a `hpsearch serve` (else $HPSEARCH_SERVER).")
TOKEN = click.option("--token", envvar="HPSEARCH_TOKEN", default=None, metavar="TOKEN", show_envvar=False,
                     help="API token (else $HPSEARCH_TOKEN; not needed on a loopback server without tokens).")


def client_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A refused request as one ``hpsearch: error:`` line: exit 2 for the request's fault (4xx but
    409), 3 when the server or its database is the problem (409 busy, 5xx, unreachable)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..service import Refused, Unreachable

        try:
            return fn(*args, **kwargs)
        except Refused as e:
            fail(e.detail, 3 if e.status == 409 or e.status >= 500 else 2)
        except Unreachable as e:
            fail(str(e), 3)

    return wrapper


def make_client(server: str | None, token: str | None) -> Any:
    from ..service import Client

    try:
        return Client(server, token)
    except ValueError as e:
        fail(str(e), 2)


@click.command()
@STORAGE
@click.option("--address", default=None, metavar="RAY_ADDRESS",
              help="Existing Ray cluster (else $RAY_ADDRESS, else a local Ray for the server's lifetime).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; beyond loopback every request needs a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--slots", type=click.IntRange(min=1), default=None,
              help="Trials at once, shared by the running studies (default: the cluster's CPUs).")
@ARTIFACTS
@user_errors
def serve(storage: str | None, address: str | None, host: str, port: int, slots: int | None,
          artifacts: str | None) -> None:
    """Run the study service: a queue in the storage, studies run several at once, an HTTP API."""
    import storage as st

    from ..service import Server
    from ..service import serve as serve_

    server = Server(storage, address=address, slots=slots, artifacts=artifacts)
    serve_(server, host=host, port=port,
           on_ready=lambda url: click.echo(f"hpsearch serve: {url} ({st.redact(server.url)}, {server.slots} slots); "
                                           f"API spec at {url}/openapi.json", err=True))


@click.group()
def token() -> None:
    """API tokens of `hpsearch serve`."""


@token.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May cancel every user's studies.")
@STORAGE
@user_errors
def token_create(name: str, admin: bool, storage: str | None) -> None:
    """Create token NAME and print it (once: only its hash is stored)."""
    import storage as st

    engine = st.create_engine(st.resolve_url(storage))
    try:
        secret = st.create_token(engine, name, admin=admin)
    except st.TokenExists as e:
        fail(str(e), 2)
    except ValueError as e:
        fail(str(e), 2)
    finally:
        engine.dispose()
    click.echo(secret)
    click.echo(f"token {name!r}{' (admin)' if admin else ''} created; it is shown only now: keep it, e.g. "
               "in $HPSEARCH_TOKEN", err=True)


def _print_entry(s: dict[str, Any]) -> None:
    budget = s.get("budget")
    click.echo(f"study {s['name']!r}: {s.get('state') or 'not submitted'}, {s.get('done', 0)}/{fmt(budget)} trials "
               f"done, best {fmt(s.get('best_value'))}" + (f" ({s['message']})" if s.get("message") else ""))


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--priority", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Weight in the share of the server's slots (2 gets twice what 1 gets).")
@SERVER
@TOKEN
@OUTPUT
@client_errors
def submit(study_file: Path, priority: int, server: str | None, token: str | None, output: str) -> None:
    """Queue STUDY_FILE on a server (validated as `hpsearch run` does; a cancelled study resumes)."""
    from .._spec import SpecError

    try:
        text = study_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(str(SpecError([f"{study_file}: no such file; create one with `hpsearch init {study_file}`"])), 2)
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{study_file}: cannot read ({getattr(e, 'strerror', None) or e})", 2)
    out = make_client(server, token).submit(text, priority=priority, filename=str(study_file))
    if output == "json":
        echo_json(out)
        return
    _print_entry(out)
    click.echo(f"watch it with `hpsearch watch {out['name']}`", err=True)


@click.command()
@click.argument("name")
@SERVER
@TOKEN
@OUTPUT
@client_errors
def cancel(name: str, server: str | None, token: str | None, output: str) -> None:
    """Cancel study NAME on a server; in-flight trials are recorded, and submitting it again resumes it."""
    out = make_client(server, token).cancel(name)
    if output == "json":
        echo_json(out)
        return
    _print_entry(out)


@click.command()
@click.argument("name")
@SERVER
@TOKEN
@OUTPUT
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@client_errors
def watch(name: str, server: str | None, token: str | None, output: str, quiet: bool) -> None:
    """Follow study NAME on a server until it stops running; then print it as `submit` does."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    client = make_client(server, token)
    last: dict[str, Any] | None = None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[info]}"), disable=quiet or output == "json", transient=False)
    with progress:
        task = progress.add_task(name, total=None, info="")
        for _event, study in client.events(name):
            last = study
            progress.update(task, completed=study.get("done", 0), total=study.get("budget"),
                            info=f"{study.get('state') or '-'}  best {fmt(study.get('best_value'))}")
    if last is None:
        fail(f"the server sent nothing about study {name!r}", 3)
    if output == "json":
        echo_json(last)
        return
    _print_entry(last)
    best = last.get("best")
    if best:
        params = ", ".join(f"{k}={fmt(v)}" for k, v in best["params"].items())
        click.echo(f"best trial {best['number']}: {fmt(best['value'])}  ({params})")
