"""Retry of database operations on transient errors (server restart, dropped connection, lock).

Use :func:`retrying` around a single call (``retrying(lambda: study.tell(t, v))``) or
:func:`retryable` as a decorator. Only errors that :func:`is_transient` accepts are retried;
anything else propagates at once. When the budget is spent, :class:`StorageUnavailable` says how
long the database stayed unreachable and that ``hpsearch resume NAME`` continues later.
"""

from __future__ import annotations

import functools
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc

from storage._errors import StorageUnavailable
from storage._url import redact, scrub

_logger = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

OnRetry = Callable[[int, BaseException, float], None]
"""``on_retry(attempt, error, delay_s)``: called before sleeping; ``attempt`` is 1-based."""

DEFAULT_ATTEMPTS = 8
DEFAULT_BASE_DELAY_S = 0.5
DEFAULT_MAX_DELAY_S = 30.0

# Errors of the transient classes whose message shows they will not go away by waiting.
_PERMANENT_MARKERS = (
    "no such table",
    "no such column",
    "syntax error",
    "readonly database",
    "file is not a database",
    "password authentication failed",
    "does not exist",
)


def _psycopg_operational_error() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return ()
    return (psycopg.OperationalError, psycopg.InterfaceError)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error worth retrying.

    Parameters
    ----------
    exc : BaseException
        The error raised by SQLAlchemy, a driver or Optuna.

    Returns
    -------
    bool
        True for ``sqlalchemy.exc.OperationalError`` / ``InterfaceError`` (and disconnects
        SQLAlchemy flagged as such), psycopg's ``OperationalError``, SQLite "database is locked",
        and ``optuna.exceptions.StorageInternalError`` caused by one of these; False for errors
        that say the problem is permanent (missing table, bad credentials, ...).
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
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

    Returns
    -------
    T
        What ``fn`` returned.

    Raises
    ------
    StorageUnavailable
        When the last attempt failed transiently too; the original error is its ``__cause__``.
    Exception
        Any non-transient error of ``fn``, unchanged.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    start = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
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
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def retryable(
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = DEFAULT_BASE_DELAY_S,
    max_delay: float = DEFAULT_MAX_DELAY_S,
    on_retry: OnRetry | None = None,
    url: str | None = None,
    study_name: str | None = None,
) -> Callable[[F], F]:
    """Decorator form of :func:`retrying`; every call of the decorated function is retried.

    Parameters
    ----------
    attempts, base_delay, max_delay, on_retry, url, study_name
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
            )

        return wrapper  # type: ignore[return-value]

    return decorate
