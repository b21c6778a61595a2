"""Retry of database operations on transient errors (server restart, dropped connection, lock).

Use :func:`retrying` around a single call (``retrying(lambda: study.tell(t, v))``) or
:func:`retryable` as a decorator. Only errors that :func:`is_transient` accepts are retried;
anything else propagates at once. When the budget is spent, :class:`StorageUnavailable` says how
long the database stayed unreachable and that ``hpsearch resume NAME`` continues later.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc

from storage._errors import StorageError, StorageUnavailable
from storage._url import redact, scrub

_logger = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

OnRetry = Callable[[int, BaseException, float], None]
"""``on_retry(attempt, error, delay_s)``: called before sleeping; ``attempt`` is 1-based."""

DEFAULT_ATTEMPTS = 8
DEFAULT_BASE_DELAY_S = 0.5
DEFAULT_MAX_DELAY_S = 30.0

SQLSTATE_DISK_FULL = "53100"

# Errors of the transient classes whose message shows they will not go away by waiting (for errors
# that carry no error code: psycopg's connection failures, SQLAlchemy wrappers without ``orig``).
_PERMANENT_MARKERS = (
    "no such table",
    "no such column",
    "syntax error",
    "readonly database",
    "file is not a database",
    "password authentication failed",
    "does not exist",
)

# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_SQLSTATE_TRANSIENT = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown (pg_terminate_backend, a server shutting down)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, in recovery)
        "53300",  # too_many_connections
        SQLSTATE_DISK_FULL,  # disk_full: space may be freed (see disk_full_reason)
    }
)
_SQLSTATE_TRANSIENT_CLASSES = ("08",)  # connection_exception
_SQLSTATE_PERMANENT = frozenset({"3D000"})  # invalid_catalog_name: no such database
_SQLSTATE_PERMANENT_CLASSES = (
    "28",  # invalid_authorization_specification: bad user or password
    "42",  # syntax_error_or_access_rule_violation: missing table or column, no privilege, ...
)

# SQLite primary result codes (https://www.sqlite.org/rescode.html); extended codes are folded in
# with ``code & 0xFF``.
_SQLITE_ERROR, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 1, 5, 6, 8
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26
_SQLITE_TRANSIENT = frozenset({_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL})
_SQLITE_PERMANENT = frozenset({_SQLITE_ERROR, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_CANTOPEN, _SQLITE_NOTADB})

# Messages of a full disk, for errors without a code.
_DISK_FULL_MARKERS = ("database or disk is full", "no space left on device", "disk full", "could not extend file")


_ErrorCode = tuple[str, str | int]
"""``("sqlstate", "57P01")`` or ``("sqlite", 5)``: see :func:`_error_code`."""


def _error_code(exc: BaseException) -> _ErrorCode | None:
    """The database error code ``exc`` carries, or that the driver error it wraps (``orig``) carries.

    Parameters
    ----------
    exc : BaseException
        A driver error, or a SQLAlchemy error wrapping one. Causes are not followed.

    Returns
    -------
    tuple or None
        ``("sqlstate", "57P01")`` for psycopg's ``sqlstate`` (PostgreSQL), ``("sqlite", 5)`` for
        ``sqlite3``'s ``sqlite_errorcode`` (Python >= 3.11; the primary code, extended code &
        0xFF); ``None`` when neither carries one (psycopg's connection failures have no SQLSTATE).
    """
    for err in (exc, getattr(exc, "orig", None)):
        if err is None:
            continue
        sqlstate = getattr(err, "sqlstate", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            return ("sqlstate", sqlstate.upper())
        code = getattr(err, "sqlite_errorcode", None)
        if isinstance(code, int) and not isinstance(code, bool):
            return ("sqlite", code & 0xFF)
    return None


def _code_verdict(code: _ErrorCode) -> bool | None:
    """True: transient, False: permanent, None: the code does not decide."""
    kind, value = code
    if kind == "sqlstate":
        state = str(value)
        if state in _SQLSTATE_TRANSIENT or state.startswith(_SQLSTATE_TRANSIENT_CLASSES):
            return True
        if state in _SQLSTATE_PERMANENT or state.startswith(_SQLSTATE_PERMANENT_CLASSES):
            return False
        return None
    if value in _SQLITE_TRANSIENT:
        return True
    if value in _SQLITE_PERMANENT:
        return False
    return None


def _psycopg_operational_error() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return ()
    return (psycopg.OperationalError, psycopg.InterfaceError)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error worth retrying.

    The database's error code decides when there is one. Transient:
    SQLSTATE class 08 (connection exception), 40001 (serialization failure), 40P01 (deadlock),
    55P03 (lock not available), 57P01/57P02/57P03 (server shut down or not ready), 53300 (too
    many connections), 53100 (disk full); SQLITE_BUSY, SQLITE_LOCKED, SQLITE_FULL. Permanent:
    SQLSTATE class 28 (authorization), 3D000 (no such database), class 42 (missing table,
    syntax, privilege); SQLITE_ERROR, SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_CANTOPEN,
    SQLITE_NOTADB. A disk full is retried because space may be freed meanwhile;
    :func:`disk_full_reason` tells it apart once the retries are spent.

    Errors without a code, or with another one, are judged by their type and message as before:
    SQLAlchemy's ``OperationalError`` / ``InterfaceError`` (and disconnects SQLAlchemy flagged as
    such), psycopg's ``OperationalError`` and SQLite "database is locked" are transient unless
    their message says the problem is permanent (missing table, bad credentials, ...).
    ``optuna.exceptions.StorageInternalError`` is judged by the error that caused it.

    Parameters
    ----------
    exc : BaseException
        The error raised by SQLAlchemy, a driver or Optuna.

    Returns
    -------
    bool
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = _error_code(cur)
        verdict = _code_verdict(code) if code is not None else None
        if verdict is not None:
            return verdict
        if _is_transient_one(cur):
            # Only the driver's own message: SQLAlchemy's text also quotes the SQL parameters.
            text = str(getattr(cur, "orig", None) or cur).lower()
            return not any(marker in text for marker in _PERMANENT_MARKERS)
        if not isinstance(cur, optuna.exceptions.StorageInternalError):
            return False
        cur = cur.__cause__ or cur.__context__
    return False


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, _psycopg_operational_error()):
        return True
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc).lower() or "busy" in str(exc).lower()
    )


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), text.strip())


def _own_text(exc: BaseException) -> str:
    """The message of ``exc`` without the SQL and parameters SQLAlchemy appends to it."""
    if isinstance(exc, sqlalchemy.exc.StatementError):
        return str(exc.args[0]) if exc.args else ""
    return str(exc)


def disk_full_reason(exc: BaseException) -> str | None:
    """The driver's words if ``exc``, or an error in its chain, says the disk is full.

    Found by code (SQLSTATE 53100 ``disk_full``, ``SQLITE_FULL``, ``OSError`` ``ENOSPC``);
    errors without a code (SQLAlchemy wrappers without ``orig``, SQLite on Python < 3.11) by
    their message. The chain is followed through ``__cause__`` / ``__context__``, so the
    :class:`StorageUnavailable` of :func:`retrying` works (its own summary is not read).

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    str or None
        The first line of the driver's message (``database or disk is full``, ``could not extend
        file "base/16384/2619": No space left on device``), or ``None``.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = _error_code(cur)
        driver: BaseException = getattr(cur, "orig", None) or cur
        if code is not None:
            if code in (("sqlstate", SQLSTATE_DISK_FULL), ("sqlite", _SQLITE_FULL)):
                return _first_line(str(driver)) or type(driver).__name__
        elif isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
            return _first_line(str(cur)) or os.strerror(errno.ENOSPC)
        elif not isinstance(cur, StorageError):  # hpsearch's own messages quote the driver's
            for line in _own_text(driver).splitlines():
                if any(marker in line.lower() for marker in _DISK_FULL_MARKERS):
                    line = line.strip()
                    # SQLAlchemy's "(sqlite3.OperationalError) database or disk is full"
                    return line.split(") ", 1)[-1] if line.startswith("(") else line
        cur = cur.__cause__ or cur.__context__
    return None


def _short(exc: BaseException, url: str | None) -> str:
    inner = getattr(exc, "orig", None) or exc.__cause__ or exc
    inner = getattr(inner, "orig", None) or inner
    text = str(inner).strip() or type(inner).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    return scrub(line, url) if url else line


def retrying(
    fn: Callable[[], T],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = DEFAULT_BASE_DELAY_S,
    max_delay: float = DEFAULT_MAX_DELAY_S,
    on_retry: OnRetry | None = None,
    url: str | None = None,
    study_name: str | None = None,
    before_attempt: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn()`` and retry it with exponential backoff while it fails transiently.

    Parameters
    ----------
    fn : callable
        Zero-argument callable (use a ``lambda`` or :func:`functools.partial`). It should be safe
        to repeat: an Optuna operation whose connection dropped may or may not have committed.
    attempts : int, default 8
        Total number of calls, the first included (8 with the default delays waits about 60 s).
    base_delay : float, default 0.5
        Delay before the second call, in seconds; it doubles for each further call.
    max_delay : float, default 30.0
        Upper bound of a single delay, in seconds.
    on_retry : callable, optional
        ``on_retry(attempt, error, delay_s)``, called before each sleep. When omitted, a warning
        is logged.
    url : str, optional
        Storage URL, shown (redacted) in messages.
    study_name : str, optional
        Study to name in the ``hpsearch resume`` hint.
    before_attempt : callable, optional
        Called without arguments before every call of ``fn``, retries included; ``fn`` is only
        called when it returns. Pass :meth:`storage.Lease.ensure_valid` so that no attempt writes
        without a valid lease. A transient error it raises counts as a failed attempt (backoff,
        then both run again); any other error (:class:`storage.LeaseLost`) propagates at once.
    sleep : callable, default time.sleep
        ``sleep(delay_s)`` waits between attempts. Pass one that waits on a stop event and raises
        to make the backoff interruptible; what it raises propagates unchanged.

    Returns
    -------
    T
        What ``fn`` returned.

    Raises
    ------
    StorageUnavailable
        When the last attempt failed transiently too; the original error is its ``__cause__``.
    Exception
        Any non-transient error of ``fn`` or ``before_attempt``, or what ``sleep`` raised,
        unchanged.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    start = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            if before_attempt is not None:
                before_attempt()
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == attempts:
                elapsed = time.monotonic() - start
                where = f"the database {redact(url)}" if url else "the database"
                raise StorageUnavailable(
                    f"{where} stayed unreachable for {elapsed:.0f} s ({attempts} attempts; last "
                    f"error: {_short(e, url)}). Finished trials are saved; run "
                    f"`hpsearch resume {study_name or 'NAME'}` to continue once it is back."
                ) from e
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.8, 1.0)
            if on_retry is not None:
                on_retry(attempt, e, delay)
            else:
                _logger.warning(
                    "database error (attempt %d/%d), retrying in %.1f s: %s",
                    attempt,
                    attempts,
                    delay,
                    _short(e, url),
                )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def retryable(
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = DEFAULT_BASE_DELAY_S,
    max_delay: float = DEFAULT_MAX_DELAY_S,
    on_retry: OnRetry | None = None,
    url: str | None = None,
    study_name: str | None = None,
    before_attempt: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[F], F]:
    """Decorator form of :func:`retrying`; every call of the decorated function is retried.

    Parameters
    ----------
    attempts, base_delay, max_delay, on_retry, url, study_name, before_attempt, sleep
        As for :func:`retrying`.

    Returns
    -------
    callable
        A decorator.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return retrying(
                lambda: func(*args, **kwargs),
                attempts=attempts,
                base_delay=base_delay,
                max_delay=max_delay,
                on_retry=on_retry,
                url=url,
                study_name=study_name,
                before_attempt=before_attempt,
                sleep=sleep,
            )

        return wrapper  # type: ignore[return-value]

    return decorate
