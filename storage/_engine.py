"""Engine and Optuna ``RDBStorage`` set-up, with errors translated into actionable messages.

SQLite files are switched to WAL (persistent, done once with :mod:`sqlite3` before SQLAlchemy or
Optuna open them) and get a 30 s busy timeout; PostgreSQL goes through psycopg 3 with
``pool_pre_ping`` and a connect timeout. Every message names the storage only in redacted form.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import Engine, make_url

from storage._errors import StorageError
from storage._url import redact, resolve_url, scrub

_logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 30
"""Seconds a SQLite connection waits for a lock before failing with ``database is locked``."""

PG_CONNECT_TIMEOUT_S = 10
"""Seconds psycopg waits for a PostgreSQL connection before giving up."""

_UNREACHABLE_MARKERS = (
    "connection refused",
    "timeout expired",
    "timed out",
    "failed to resolve host",
    "could not translate host name",
    "name or service not known",
    "network is unreachable",
    "no route to host",
    "server closed the connection",
    "connection reset",
    "could not connect",
    "connection failed",
)


def engine_kwargs(url: str) -> dict[str, Any]:
    """Keyword arguments for :func:`sqlalchemy.create_engine` used for every hpsearch engine.

    Parameters
    ----------
    url : str
        A URL returned by :func:`storage.resolve_url`.

    Returns
    -------
    dict
        Picklable settings (Optuna re-creates the engine from them when a storage is pickled).
    """
    if make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "hpsearch"},
    }


def create_storage(url: str | None, *, create: bool = True) -> optuna.storages.RDBStorage:
    """Open (and by default create) the Optuna storage behind ``url``.

    Parameters
    ----------
    url : str or None
        Storage URL; ``None`` resolves via :func:`storage.resolve_url`.
    create : bool, default True
        Create the SQLite file and Optuna's tables when missing. With ``False`` a missing file or
        a database without Optuna's tables is an error (for read-only commands).

    Returns
    -------
    optuna.storages.RDBStorage
        The storage; its ``engine`` attribute is the engine to use for hpsearch's own tables and
        queries (one pool per process).

    Raises
    ------
    StorageError
        With a message naming the redacted URL and the fix: missing directory, corrupt SQLite
        file, unreachable server, missing database, failed authentication, outdated schema.
    """
    url = resolve_url(url)
    _prepare(url, create=create)
    try:
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs(url), skip_table_creation=not create
        )
    except Exception as e:
        raise translate_error(e, url) from e
    if make_url(url).get_backend_name() == "sqlite":
        _sqlite_synchronous_normal(storage.engine)
    _logger.debug("opened storage %s", redact(url))
    return storage


def _sqlite_synchronous_normal(engine: Engine) -> None:
    """``PRAGMA synchronous=NORMAL`` on every connection of a WAL-mode SQLite engine.

    In WAL mode this keeps the database consistent after a crash or power loss (SQLite's own
    guarantee) and skips an fsync per commit; the last commits before a power loss may be lost,
    which a resume repairs (a trial not recorded as finished is run again).
    """

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened before the listener existed


def create_engine(url: str | None, *, create: bool = True) -> Engine:
    """Create a SQLAlchemy engine with the same settings as :func:`create_storage`.

    Prefer ``create_storage(url).engine`` when an ``RDBStorage`` exists anyway; this is for
    callers that only run hpsearch's own queries (``ls``, ``show``, ``best``).

    Parameters
    ----------
    url : str or None
        Storage URL; ``None`` resolves via :func:`storage.resolve_url`.
    create : bool, default True
        Create a missing SQLite file. With ``False`` a missing file, or a database that holds no
        Optuna study tables, is an error.

    Returns
    -------
    sqlalchemy.engine.Engine
        A connected-once (so connection problems surface here) engine.

    Raises
    ------
    StorageError
        As for :func:`create_storage`.
    """
    url = resolve_url(url)
    _prepare(url, create=create)
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url))
    try:
        with engine.connect() as conn:
            if not create and not sqlalchemy.inspect(conn).has_table("studies"):
                raise _no_studies(url)
    except StorageError:
        engine.dispose()
        raise
    except Exception as e:
        engine.dispose()
        raise translate_error(e, url) from e
    return engine


def _no_studies(url: str) -> StorageError:
    return StorageError(
        f"storage {redact(url)} holds no studies (Optuna's tables are missing); check --storage / "
        "HPSEARCH_STORAGE, or start a search there first"
    )


def _sqlite_path(url: str) -> str | None:
    """Return the file path of a SQLite URL, or ``None`` for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _prepare(url: str, *, create: bool) -> None:
    """Check a SQLite file's directory and existence and switch the file to WAL (persistent)."""
    if make_url(url).get_backend_name() != "sqlite":
        return
    path = _sqlite_path(url)
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise StorageError(
            f"cannot open storage {redact(url)}: directory {parent} does not exist; "
            f"create it (mkdir -p {parent}) or choose another path"
        )
    if os.path.isdir(path):
        raise StorageError(f"cannot open storage {redact(url)}: {path} is a directory, not a file")
    if not os.path.exists(path) and not create:
        raise StorageError(
            f"no storage at {redact(url)}: {os.path.abspath(path)} does not exist; "
            "check --storage / HPSEARCH_STORAGE"
        )
    try:
        con = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            (mode,) = con.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.Error as e:
        raise translate_error(e, url) from e


def _driver_message(exc: BaseException, url: str) -> str:
    """First meaningful line of the innermost driver error, with the password scrubbed."""
    inner: BaseException = getattr(exc, "orig", None) or exc
    cause = exc.__cause__
    if inner is exc and cause is not None:
        inner = getattr(cause, "orig", None) or cause
    text = str(inner).strip() or type(inner).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    return scrub(line, url)


def _full_text(exc: BaseException) -> str:
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(str(cur))
        orig = getattr(cur, "orig", None)
        if isinstance(orig, BaseException):
            parts.append(str(orig))
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts).lower()


def translate_error(exc: BaseException, url: str) -> StorageError:
    """Turn an exception raised while opening ``url`` into a :class:`StorageError`.

    Parameters
    ----------
    exc : BaseException
        What SQLAlchemy, the driver or Optuna raised.
    url : str
        The storage URL (only its redacted form appears in the message).

    Returns
    -------
    StorageError
        An error whose message names the redacted URL and says what to do.
    """
    if isinstance(exc, StorageError):
        return exc
    shown = redact(url)
    text = _full_text(exc)
    said = _driver_message(exc, url)
    parsed = make_url(url)

    if "optuna storage upgrade" in text:
        return StorageError(
            f"storage {shown} was written by an older Optuna and its schema is too old for "
            f"Optuna {optuna.__version__}; back it up, then run "
            f"`optuna storage upgrade --storage '{shown}'` (with the real password)"
        )
    if "pip install -u optuna" in text:
        return StorageError(
            f"storage {shown} was written by a newer Optuna than {optuna.__version__}; "
            "upgrade optuna (pip install -U optuna) to use it"
        )

    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_path(url) or ":memory:"
        if "file is not a database" in text or "malformed" in text:
            return StorageError(
                f"storage {shown}: {path} is not a usable SQLite database (file is not a database "
                "or is corrupt); move it aside or point --storage at another file"
            )
        if "readonly" in text or "read-only" in text:
            return StorageError(
                f"storage {shown}: {path} is read-only; make the file and its directory writable"
            )
        if "unable to open database file" in text:
            return StorageError(
                f"storage {shown}: cannot open {path}; check that its directory exists and is writable"
            )
        if "no such table" in text:
            return _no_studies(url)
        return StorageError(f"cannot open storage {shown}: {said}")

    host = parsed.host or "localhost"
    port = parsed.port or 5432
    where = f"{host}:{port}"
    if re.search(r'database "[^"]*" does not exist', text):
        db = parsed.database
        return StorageError(
            f"storage {shown}: database {db!r} does not exist on the PostgreSQL server at {where}; "
            f"create it (createdb -h {host} -p {port} -U {parsed.username or 'postgres'} {db}) "
            "or fix the database name"
        )
    if "password authentication failed" in text or ("role" in text and "does not exist" in text):
        return StorageError(
            f"storage {shown}: PostgreSQL at {where} refused user {parsed.username!r} ({said}); "
            "check the user name and password in the URL"
        )
    if "relation" in text and "does not exist" in text:
        return _no_studies(url)
    if any(marker in text for marker in _UNREACHABLE_MARKERS):
        return StorageError(
            f"cannot reach PostgreSQL at {where} for storage {shown}: {said}; "
            f"is the server running and accepting TCP/IP connections on {where}?"
        )
    return StorageError(f"cannot open storage {shown}: {said}")
