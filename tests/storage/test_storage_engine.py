from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import optuna
import pytest
from sqlalchemy import text

from storage import StorageError, create_engine, create_storage, engine_kwargs


def test_sqlite_wal_and_busy_timeout(sqlite_url: str) -> None:
    storage = create_storage(sqlite_url)
    optuna.create_study(storage=storage, study_name="s")
    path = sqlite_url.removeprefix("sqlite:///")
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert engine_kwargs(sqlite_url)["connect_args"]["timeout"] == 30
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    storage.engine.dispose()
    engine = create_engine(sqlite_url, create=False)  # same settings, opens the existing file
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM studies")).scalar() == 1
    engine.dispose()


def test_sqlite_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist; create it"):
        create_storage(f"sqlite:///{tmp_path}/nope/x.db")


def test_sqlite_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database file at all, just text" * 10)
    with pytest.raises(StorageError, match="file is not a database") as info:
        create_storage(f"sqlite:///{bad}")
    assert str(bad) in str(info.value)


def test_create_false(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        create_engine(f"sqlite:///{tmp_path}/missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    sqlite3.connect(tmp_path / "empty.db").execute("CREATE TABLE t (x)")
    with pytest.raises(StorageError, match="holds no studies"):
        create_engine(f"sqlite:///{tmp_path}/empty.db", create=False)
    with pytest.raises(StorageError, match="holds no studies"):
        create_storage(f"sqlite:///{tmp_path}/empty.db", create=False)


def test_schema_too_old(sqlite_url: str) -> None:
    storage = create_storage(sqlite_url)
    older = storage.get_all_versions()[-1]
    with storage.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": older})
    storage.engine.dispose()
    with pytest.raises(StorageError, match="optuna storage upgrade --storage") as info:
        create_storage(sqlite_url)
    assert sqlite_url in str(info.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_postgres_unreachable_hides_password() -> None:
    port = _free_port()
    with pytest.raises(StorageError) as info:
        create_storage(f"postgresql://hp:s3cretpw@127.0.0.1:{port}/hp")
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "is the server running" in msg
    assert "s3cretpw" not in msg and "hp:***@" in msg


@pytest.mark.postgres
def test_postgres_storage(postgres_url: str) -> None:
    storage = create_storage(postgres_url)
    assert storage.engine.dialect.driver == "psycopg"
    assert storage.engine.pool._pre_ping
    study = optuna.create_study(storage=storage, study_name="pg")
    study.add_trial(optuna.trial.create_trial(value=1.0))
    assert len(optuna.load_study(study_name="pg", storage=postgres_url).trials) == 1
    storage.engine.dispose()


@pytest.mark.postgres
def test_postgres_create_false_on_empty_database(postgres_url: str) -> None:
    with pytest.raises(StorageError, match="holds no studies"):
        create_storage(postgres_url, create=False)
    with pytest.raises(StorageError, match="holds no studies"):
        create_engine(postgres_url, create=False)


@pytest.mark.postgres
def test_postgres_missing_database(postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/hpsearch_no_such_db"
    with pytest.raises(StorageError, match=r"database 'hpsearch_no_such_db' does not exist.*createdb"):
        create_storage(url)
