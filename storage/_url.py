"""Storage URL resolution, normalisation and redaction."""

from __future__ import annotations

import os
import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from storage._errors import BadStorageURL

ENV_VAR = "HPSEARCH_STORAGE"
"""Environment variable consulted when no ``--storage`` flag is given."""

DEFAULT_URL = "sqlite:///hpsearch.db"
"""Storage used when neither the flag nor :data:`ENV_VAR` is set (relative to the cwd)."""

EXPECTED_FORMS = "sqlite:///path/to/hpsearch.db or postgresql://user@host:5432/db"

_PASSWORD_QUERY_KEYS = frozenset({"password", "passwd", "pwd"})
_USERINFO_PASSWORD = re.compile(r"(?P<head>://[^:/@?#]*:)[^/?#]*(?P<tail>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)[^&#]*", re.IGNORECASE)


def redact(url: str | URL) -> str:
    """Return ``url`` with any password replaced by ``***``.

    Parameters
    ----------
    url : str or sqlalchemy.engine.URL
        A database URL; it may be malformed, in which case a best-effort textual redaction is used.

    Returns
    -------
    str
        The URL, safe to print or log.
    """
    try:
        parsed = make_url(url)
    except Exception:
        parsed = None
    if parsed is None or "@" in (parsed.host or ""):
        # Malformed (e.g. an unescaped "@" in the password): redact up to the last "@".
        text = _USERINFO_PASSWORD.sub(r"\g<head>***\g<tail>", str(url))
    else:
        text = parsed.render_as_string(hide_password=True)
    return _QUERY_PASSWORD.sub(r"\g<head>***", text)


def scrub(text: str, url: str | URL) -> str:
    """Remove the password of ``url`` from an arbitrary text (e.g. a driver's error message).

    Parameters
    ----------
    text : str
        Text that might quote the URL or its password.
    url : str or sqlalchemy.engine.URL
        The URL whose password must not appear.

    Returns
    -------
    str
        ``text`` with the password (and any rendering of the full URL) replaced.
    """
    try:
        parsed = make_url(url)
    except Exception:
        return _USERINFO_PASSWORD.sub(r"\g<head>***\g<tail>", text)
    secrets = [parsed.password] + [
        v for k, v in parsed.query.items() if k.lower() in _PASSWORD_QUERY_KEYS and isinstance(v, str)
    ]
    for secret in secrets:
        if secret:
            text = text.replace(str(secret), "***")
    return _USERINFO_PASSWORD.sub(r"\g<head>***\g<tail>", text)


def resolve_url(url: str | None) -> str:
    """Pick the storage URL and normalise it.

    Parameters
    ----------
    url : str or None
        The ``--storage`` flag. When empty or ``None``, the environment variable
        ``HPSEARCH_STORAGE`` is used, else ``sqlite:///hpsearch.db`` (a file in the cwd).

    Returns
    -------
    str
        A SQLAlchemy URL. ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``.

    Raises
    ------
    BadStorageURL
        If the URL is malformed or names a database other than SQLite or PostgreSQL (psycopg).
    """
    raw = (url or "").strip() or os.environ.get(ENV_VAR, "").strip() or DEFAULT_URL
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            raw = "postgresql+psycopg://" + raw[len(prefix) :]
            break
    try:
        parsed = make_url(raw)
    except (ArgumentError, ValueError) as e:
        raise BadStorageURL(f"malformed storage URL {redact(raw)!r}; expected {EXPECTED_FORMS}") from e
    if "@" in (parsed.host or ""):
        raise BadStorageURL(
            f"malformed storage URL {redact(raw)!r}: percent-encode special characters in the "
            f"user name and password ('@' as %40, ':' as %3A); expected {EXPECTED_FORMS}"
        )
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return raw
    if backend == "postgresql" and driver == "psycopg":
        if not parsed.database:
            raise BadStorageURL(f"storage URL {redact(raw)!r} names no database; expected {EXPECTED_FORMS}")
        return raw
    if backend == "postgresql":
        detail = f"driver {driver!r} is not supported (hpsearch uses psycopg 3)"
    else:
        detail = f"database type {backend!r} is not supported"
    raise BadStorageURL(f"storage URL {redact(raw)!r}: {detail}; expected {EXPECTED_FORMS}")
