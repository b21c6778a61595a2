"""Settings read from the environment, each checked once, with an error naming the variable and the fix."""

from __future__ import annotations

import math
import os

import storage as st

from ._errors import UsageError

__all__ = ["DB_RETRY_ENV", "LEASE_STALE_ENV", "NOTIFY_BACKOFF_ENV", "db_retry_attempts", "lease_stale_after",
           "notify_backoff_s"]

LEASE_STALE_ENV = "HPSEARCH_LEASE_STALE_S"
"""Seconds without heartbeat after which another run may take a study's lease over (default 30)."""
DB_RETRY_ENV = "HPSEARCH_DB_RETRY_ATTEMPTS"
"""Attempts of a database call that fails transiently before the run stops (default 8, about 60 s)."""
NOTIFY_BACKOFF_ENV = "HPSEARCH_NOTIFY_BACKOFF_S"
"""Seconds before a failed notification is posted again, doubled after each failure (default 2)."""


def env_number(name: str, default: float, *, integer: bool = False, minimum: float = 0.0) -> float:
    """The finite number in environment variable ``name`` (> ``minimum``), else ``default`` when it is
    unset or empty; anything else (``nan``, ``inf``, words, a number too small) is a
    :class:`UsageError` naming the variable, its value and what it must be."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value: float | None = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= minimum:
        kind = "an integer" if integer else "a finite number"
        raise UsageError(f"environment variable {name}={raw!r} must be {kind} > {minimum:g}; "
                         f"unset it for the default")
    return value


def lease_stale_after() -> float:
    """Seconds without heartbeat after which a study's lease is taken over (``HPSEARCH_LEASE_STALE_S``)."""
    return env_number(LEASE_STALE_ENV, st.DEFAULT_STALE_AFTER_S)


def db_retry_attempts() -> int:
    """Attempts of a transiently failing database call (``HPSEARCH_DB_RETRY_ATTEMPTS``)."""
    return int(env_number(DB_RETRY_ENV, 8, integer=True))


def notify_backoff_s() -> float:
    """The first wait before a failed notification is retried (``HPSEARCH_NOTIFY_BACKOFF_S``)."""
    return env_number(NOTIFY_BACKOFF_ENV, 2.0)
