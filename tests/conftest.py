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


@pytest.fixture(scope="session")
def _moto_server() -> Iterator[object]:
    """A real S3 endpoint over HTTP on 127.0.0.1 (moto's server), for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_settings(server: object, max_attempts: int = 2) -> dict[str, str]:
    """The AWS settings (environment variables) that send boto3 to moto ``server``, and nowhere else."""
    host, port = server.get_host_and_port()  # type: ignore[attr-defined]
    return {"AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_MAX_ATTEMPTS": str(max_attempts), "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@pytest.fixture
def s3_bucket(_moto_server: object, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on the session's S3 endpoint; boto3 (in this process and in the processes it
    starts) reaches it through the standard AWS settings, which this test's environment holds."""
    import uuid

    import boto3

    for key, value in s3_settings(_moto_server).items():
        monkeypatch.setenv(key, value)
    bucket = f"hpsearch-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket
