"""Shared fixtures: a throwaway PostgreSQL database per test, a SQLite URL per test.

``postgres_url`` needs the server named by ``HPSEARCH_TEST_POSTGRES_URL``
(default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``). When it cannot be reached the
test is skipped with the reason, except when ``CI`` is set: then it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _conninfo(url: str, database: str | None = None) -> str:
    """A libpq URL (what psycopg accepts) for a SQLAlchemy URL."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _postgres_admin() -> Iterator[tuple[str, object]]:
    import psycopg

    url = os.environ.get("HPSEARCH_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        conn = psycopg.connect(_conninfo(url), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = f"PostgreSQL not reachable at {shown} (set HPSEARCH_TEST_POSTGRES_URL): {e}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    state = {"conn": conn}
    yield url, state
    state["conn"].close()


def _admin(url: str, state: dict[str, object]) -> object:
    """The session's admin connection, reconnected if the server was restarted (test_resume.py does)."""
    import psycopg

    conn = state["conn"]
    try:
        conn.execute("SELECT 1")  # type: ignore[attr-defined]
    except psycopg.Error:
        conn.close()  # type: ignore[attr-defined]
        conn = state["conn"] = psycopg.connect(_conninfo(url), autocommit=True, connect_timeout=10)
    return conn


@pytest.fixture
def postgres_url(_postgres_admin: tuple[str, dict[str, object]]) -> Iterator[str]:
    """URL (``postgresql+psycopg://``) of a fresh database, dropped after the test."""
    url, state = _postgres_admin
    name = f"hpsearch_test_{uuid.uuid4().hex[:12]}"
    _admin(url, state).execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    try:
        yield (
            make_url(url)
            .set(drivername="postgresql+psycopg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        _admin(url, state).execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]


@pytest.fixture
def postgres_admin(_postgres_admin: tuple[str, dict[str, object]]) -> object:
    """An autocommit psycopg connection to the maintenance database (for pg_terminate_backend)."""
    return _admin(*_postgres_admin)


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """URL of a not-yet-existing SQLite file in the test's tmp dir."""
    return f"sqlite:///{os.path.join(tmp_path, 'hpsearch.db')}"
