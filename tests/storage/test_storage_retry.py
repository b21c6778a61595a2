from __future__ import annotations

import errno
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import text

from storage import (
    LeaseLost,
    StorageUnavailable,
    create_storage,
    disk_full_reason,
    is_transient,
    retryable,
    retrying,
)


def _op_error(msg: str = "server closed the connection unexpectedly") -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError(msg))


def _failing(n: int, exc: Callable[[], BaseException], result: Any = 42) -> Callable[[], Any]:
    calls = {"n": 0}

    def fn() -> Any:
        calls["n"] += 1
        if calls["n"] <= n:
            raise exc()
        return result

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def test_retries_then_succeeds() -> None:
    seen: list[tuple[int, float]] = []
    fn = _failing(2, _op_error)
    assert retrying(fn, base_delay=0.001, on_retry=lambda a, e, d: seen.append((a, d))) == 42
    assert [a for a, _ in seen] == [1, 2]
    assert seen[1][1] > seen[0][1] * 1.5  # exponential


def test_gives_up_with_resume_hint() -> None:
    fn = _failing(10, _op_error)
    with pytest.raises(StorageUnavailable) as info:
        retrying(
            fn,
            attempts=3,
            base_delay=0.001,
            on_retry=lambda *a: None,
            url="postgresql+psycopg://u:s3cret@h/db",
            study_name="mnist",
        )
    msg = str(info.value)
    assert "stayed unreachable for" in msg and "hpsearch resume mnist" in msg
    assert "u:***@h" in msg and "s3cret" not in msg
    assert isinstance(info.value.__cause__, sqlalchemy.exc.OperationalError)
    assert fn.calls["n"] == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "exc",
    [
        lambda: ValueError("bug"),
        lambda: sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate")),
        lambda: _op_error("no such table: trials"),
        lambda: optuna.exceptions.StorageInternalError("x"),
    ],
)
def test_permanent_errors_not_retried(exc: Callable[[], BaseException]) -> None:
    fn = _failing(1, exc)
    with pytest.raises(type(exc())):
        retrying(fn, base_delay=0.001)
    assert fn.calls["n"] == 1  # type: ignore[attr-defined]


def test_transient_classification() -> None:
    def wrapped(cause: BaseException) -> BaseException:
        try:
            raise optuna.exceptions.StorageInternalError("commit failed") from cause
        except optuna.exceptions.StorageInternalError as e:
            return e

    assert is_transient(_op_error())
    assert is_transient(sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("closed")))
    assert is_transient(psycopg.OperationalError("terminating connection"))
    assert is_transient(wrapped(_op_error()))
    assert not is_transient(wrapped(sqlalchemy.exc.DataError("x", {}, Exception("too long"))))


def test_decorator() -> None:
    fn = _failing(1, _op_error, result="ok")

    @retryable(base_delay=0.001, on_retry=lambda *a: None)
    def call(suffix: str) -> str:
        return fn() + suffix

    assert call("!") == "ok!"


def test_before_attempt_runs_before_every_attempt() -> None:
    events: list[str] = []
    calls = {"n": 0}

    def fn() -> int:
        calls["n"] += 1
        events.append(f"call{calls['n']}")
        if calls["n"] <= 2:
            raise _op_error()
        return 7

    slept: list[float] = []
    result = retrying(
        fn,
        base_delay=0.001,
        on_retry=lambda *a: None,
        before_attempt=lambda: events.append("check"),
        sleep=slept.append,  # no real sleep at all
    )
    assert result == 7
    assert events == ["check", "call1", "check", "call2", "check", "call3"]
    assert len(slept) == 2 and slept[1] > slept[0]


def test_before_attempt_errors() -> None:
    # LeaseLost (not transient) propagates at once: fn is never called, nothing is retried.
    fn = _failing(0, _op_error)
    checks = {"n": 0}

    def lost() -> None:
        checks["n"] += 1
        raise LeaseLost("taken over")

    with pytest.raises(LeaseLost):
        retrying(fn, base_delay=0.001, before_attempt=lost)
    assert checks["n"] == 1 and fn.calls["n"] == 0  # type: ignore[attr-defined]

    # A transient error of the check (database down while re-validating) is a failed attempt.
    check = _failing(2, _op_error, result=None)
    fn = _failing(0, _op_error)
    assert retrying(fn, base_delay=0.001, on_retry=lambda *a: None, before_attempt=check, sleep=lambda d: None) == 42
    assert check.calls["n"] == 3 and fn.calls["n"] == 1  # type: ignore[attr-defined]

    # ... and when it stays down, the budget ends in StorageUnavailable without any call of fn.
    fn = _failing(0, _op_error)
    with pytest.raises(StorageUnavailable):
        retrying(fn, attempts=3, on_retry=lambda *a: None, before_attempt=_failing(9, _op_error), sleep=lambda d: None)
    assert fn.calls["n"] == 0  # type: ignore[attr-defined]


def test_interruptible_sleep() -> None:
    class Stopped(Exception):
        pass

    def sleep(delay: float) -> None:
        raise Stopped(delay)

    fn = _failing(5, _op_error)
    with pytest.raises(Stopped):
        retrying(fn, base_delay=0.001, on_retry=lambda *a: None, sleep=sleep)
    assert fn.calls["n"] == 1  # type: ignore[attr-defined]


def test_decorator_passes_the_hooks() -> None:
    fn = _failing(1, _op_error, result="ok")
    events: list[str] = []

    @retryable(base_delay=0.001, on_retry=lambda *a: None, before_attempt=lambda: events.append("check"),
               sleep=lambda d: events.append("sleep"))
    def call() -> str:
        return fn()

    assert call() == "ok"
    assert events == ["check", "sleep", "check"]


def _terminate(admin: Any, database: str) -> int:
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return len(rows)


@pytest.mark.postgres
def test_optuna_survives_terminated_backends(postgres_url: str, postgres_admin: Any) -> None:
    storage = create_storage(postgres_url)
    database = storage.engine.url.database
    study = optuna.create_study(storage=storage, study_name="robust")
    retries: list[int] = []

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        retries.append(attempt)

    def r(fn: Callable[[], Any]) -> Any:
        return retrying(fn, base_delay=0.05, on_retry=on_retry, url=postgres_url, study_name="robust")

    killed = 0
    for i in range(6):
        trial = r(study.ask)
        x = r(lambda t=trial: t.suggest_float("x", -1, 1))
        if i % 2 == 1:  # mid-sequence: a trial is open, every pooled connection dies
            killed += _terminate(postgres_admin, database)
        r(lambda t=trial: t.set_user_attr("epochs", 3))
        r(lambda t=trial, x=x: study.tell(t, x * x))
    assert killed >= 3
    trials = optuna.load_study(study_name="robust", storage=postgres_url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert all(t.user_attrs["epochs"] == 3 for t in trials)

    # A connection that dies while checked out (pre-ping cannot help): the retry reconnects.
    state = {"killed": False}

    def count_trials() -> int:
        with storage.engine.connect() as conn:
            if not state["killed"]:
                state["killed"] = True
                _terminate(postgres_admin, database)
            return conn.execute(text("SELECT count(*) FROM trials")).scalar_one()

    retries.clear()
    assert r(count_trials) == 6
    assert retries == [1]
    storage.engine.dispose()


# ---------------------------------------------------------------------------------------------
# Classification by the database's error code


def _via_optuna(cause: BaseException) -> BaseException:
    """The error as Optuna raises it: StorageInternalError chained to SQLAlchemy's wrapper."""
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from cause
    except optuna.exceptions.StorageInternalError as e:
        return e


def _raised(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except Exception as e:
        return e
    raise AssertionError("did not raise")


def _all_forms(err: BaseException) -> list[BaseException]:
    """The driver's error itself, wrapped by SQLAlchemy, and that chained by Optuna."""
    wrapped = sqlalchemy.exc.OperationalError("UPDATE trials SET ...", {}, err)
    return [err, wrapped, _via_optuna(wrapped)]


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [
        ("08006", True),  # connection_failure
        ("08001", True),
        ("40001", True),
        ("40P01", True),
        ("55P03", True),
        ("57P01", True),
        ("57P02", True),
        ("57P03", True),
        ("53300", True),
        ("53100", True),  # disk full: retried, space may be freed
        ("28P01", False),  # invalid_password: an OperationalError, yet waiting does not help
        ("28000", False),
        ("3D000", False),
        ("42P01", False),
        ("42501", False),
    ],
)
def test_sqlstate_decides(sqlstate: str, transient: bool) -> None:
    err = psycopg.errors.lookup(sqlstate)("FATAL: some words that match no marker")
    for form in _all_forms(err):
        assert is_transient(form) is transient, (sqlstate, form)


def test_code_beats_the_message() -> None:
    # A transient code whose message happens to contain a "permanent" phrase is still retried...
    err = psycopg.errors.lookup("40P01")('deadlock detected: relation "x" does not exist any more')
    assert all(is_transient(f) for f in _all_forms(err))
    # ... and an OperationalError with a permanent code is not, whatever its words.
    err = psycopg.errors.lookup("28P01")("FATAL: rejected")
    assert not any(is_transient(f) for f in _all_forms(err))


def test_sqlite_extended_codes_fold_to_their_primary_code() -> None:
    for code, name, transient in [
        (517, "SQLITE_BUSY_SNAPSHOT", True),
        (262, "SQLITE_LOCKED_SHAREDCACHE", True),
        (264, "SQLITE_READONLY_RECOVERY", False),
        (267, "SQLITE_CORRUPT_VTAB", False),
    ]:
        err = sqlite3.OperationalError("some words that match no marker")
        err.sqlite_errorcode = code  # type: ignore[attr-defined]
        err.sqlite_errorname = name  # type: ignore[attr-defined]
        for form in _all_forms(err):
            assert is_transient(form) is transient, (name, form)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sqlite3 errors carry their code from Python 3.11")
def test_real_sqlite_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "a.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0)
    locked = _raised(lambda: other.execute("INSERT INTO t VALUES (1)"))
    assert locked.sqlite_errorname == "SQLITE_BUSY"  # type: ignore[attr-defined]
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    locked_sa = _raised(lambda: engine.connect().execute(text("INSERT INTO t VALUES (1)")))
    assert isinstance(locked_sa, sqlalchemy.exc.OperationalError)
    holder.execute("COMMIT")
    engine.dispose()

    readonly = _raised(lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("INSERT INTO t VALUES (1)"))
    assert readonly.sqlite_errorname == "SQLITE_READONLY"  # type: ignore[attr-defined]
    (tmp_path / "garbage.db").write_bytes(os.urandom(4096))
    notadb = _raised(lambda: sqlite3.connect(str(tmp_path / "garbage.db")).execute("SELECT * FROM sqlite_master"))
    assert notadb.sqlite_errorname == "SQLITE_NOTADB"  # type: ignore[attr-defined]
    cantopen = _raised(lambda: sqlite3.connect(str(tmp_path / "no-such-dir" / "x.db")))
    assert cantopen.sqlite_errorname == "SQLITE_CANTOPEN"  # type: ignore[attr-defined]
    # SQLITE_ERROR without any of the old marker phrases (was retried as an OperationalError)
    no_column = _raised(lambda: other.execute("INSERT INTO t (y) VALUES (1)"))
    assert no_column.sqlite_errorname == "SQLITE_ERROR" and "has no column named" in str(no_column)  # type: ignore[attr-defined]
    full_db = sqlite3.connect(str(tmp_path / "full.db"))
    full_db.execute("CREATE TABLE t (x)")
    full_db.commit()
    full_db.execute("PRAGMA max_page_count = 3")
    full = _raised(lambda: full_db.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,)))
    assert full.sqlite_errorname == "SQLITE_FULL"  # type: ignore[attr-defined]

    assert all(is_transient(f) for f in [*_all_forms(locked), locked_sa, _via_optuna(locked_sa)])
    assert all(is_transient(f) for f in _all_forms(full))
    for err in (readonly, notadb, cantopen, no_column):
        assert not any(is_transient(f) for f in _all_forms(err)), err
    assert not is_transient(_raised(lambda: _sa_connect(str(tmp_path / "no-such-dir" / "x.db"))))


def _sa_connect(path: str) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        engine.connect()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_real_postgres_errors(postgres_url: str, postgres_admin: Any) -> None:
    engine = sqlalchemy.create_engine(postgres_url, connect_args={"options": "-c lock_timeout=200"})
    database = engine.url.database
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x int)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))

    # 57P01: the backend of a pooled connection is terminated (pg_terminate_backend).
    conn = engine.connect()
    conn.execute(text("SELECT 1"))
    assert _terminate(postgres_admin, database) >= 1
    terminated = _raised(lambda: conn.execute(text("SELECT 1")))
    assert getattr(terminated, "orig", None) is not None and terminated.orig.sqlstate == "57P01"  # type: ignore[attr-defined]
    assert is_transient(terminated) and is_transient(_via_optuna(terminated))
    conn.close()

    # 55P03: a row lock held elsewhere, lock_timeout reached.
    with engine.connect() as holder, engine.connect() as waiter:
        holder.execute(text("SELECT * FROM t FOR UPDATE"))
        lock = _raised(lambda: waiter.execute(text("UPDATE t SET x = 2")))
        holder.rollback()
    assert lock.orig.sqlstate == "55P03" and is_transient(lock)  # type: ignore[attr-defined]

    # 40001: two REPEATABLE READ transactions update the same row.
    rr = engine.execution_options(isolation_level="REPEATABLE READ")
    with rr.connect() as a, rr.connect() as b:
        a.execute(text("SELECT * FROM t")).all()
        b.execute(text("SELECT * FROM t")).all()
        a.execute(text("UPDATE t SET x = 3"))
        a.commit()
        serialization = _raised(lambda: b.execute(text("UPDATE t SET x = 4")))
        b.rollback()
    assert serialization.orig.sqlstate == "40001" and is_transient(serialization)  # type: ignore[attr-defined]

    # 42P01 and 3D000 with their code; a missing database at connect time carries no SQLSTATE
    # (libpq reports it as text), so the message decides there.
    with engine.connect() as c:
        missing_table = _raised(lambda: c.execute(text("SELECT * FROM no_such_table")))
    assert missing_table.orig.sqlstate == "42P01" and not is_transient(missing_table)  # type: ignore[attr-defined]
    missing_db_code = _raised(lambda: postgres_admin.execute("DROP DATABASE hpsearch_no_such_db"))
    assert missing_db_code.sqlstate == "3D000" and not is_transient(missing_db_code)  # type: ignore[attr-defined]
    bad = sqlalchemy.create_engine(engine.url.set(database="hpsearch_no_such_db"))
    missing_db = _raised(bad.connect)
    bad.dispose()
    assert isinstance(missing_db, sqlalchemy.exc.OperationalError) and missing_db.orig.sqlstate is None  # type: ignore[attr-defined]
    assert not is_transient(missing_db) and not is_transient(_via_optuna(missing_db))
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# disk_full_reason


def _full_sqlite_storage(path: Path) -> optuna.storages.RDBStorage:
    """An Optuna storage whose SQLite file cannot grow (a full disk, without filling one)."""
    storage = create_storage(f"sqlite:///{path}")
    sqlalchemy.event.listen(
        storage.engine, "connect", lambda dbapi_conn, _rec: dbapi_conn.execute("PRAGMA max_page_count = 1")
    )
    storage.engine.dispose()
    return storage


def test_disk_full_of_a_real_sqlite_file_through_optuna_and_retrying(tmp_path: Path) -> None:
    storage = create_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, study_name="full")
    storage.engine.dispose()
    storage = _full_sqlite_storage(tmp_path / "s.db")
    study = optuna.load_study(study_name="full", storage=storage)
    with pytest.raises(StorageUnavailable) as info:
        retrying(lambda: study.set_user_attr("big", "x" * 200_000), attempts=2, on_retry=lambda *a: None,
                 sleep=lambda d: None)
    assert "database or disk is full" in str(info.value)  # the summary quotes it, but ...
    chain = info.value.__cause__
    assert isinstance(chain, optuna.exceptions.StorageInternalError)  # ... the code is found down the chain
    assert disk_full_reason(info.value) == "database or disk is full"
    assert disk_full_reason(chain) == "database or disk is full"
    storage.engine.dispose()


def test_disk_full_by_code_and_by_message() -> None:
    pg = psycopg.errors.lookup("53100")('could not extend file "base/16384/2619": No space left on device\n'
                                        "HINT:  Check free disk space.")
    for form in _all_forms(pg):
        assert disk_full_reason(form) == 'could not extend file "base/16384/2619": No space left on device'
        assert is_transient(form)  # retried: space may be freed
    summary = StorageUnavailable("stayed unreachable ... last error: disk full")
    summary.__cause__ = _via_optuna(sqlalchemy.exc.OperationalError("INSERT", {}, pg))
    assert disk_full_reason(summary) == 'could not extend file "base/16384/2619": No space left on device'

    # No code (SQLite before Python 3.11, a wrapper without orig): the message decides.
    no_code = sqlite3.OperationalError("database or disk is full")
    for form in _all_forms(no_code):
        assert disk_full_reason(form) == "database or disk is full"
    bare = sqlalchemy.exc.StatementError("(sqlite3.OperationalError) database or disk is full", "INSERT", {}, None)
    assert disk_full_reason(bare) == "database or disk is full"
    assert disk_full_reason(OSError(errno.ENOSPC, "No space left on device")) == "[Errno 28] No space left on device"

    # Not a full disk: another code whatever its words, the SQL or its parameters, our own summary.
    assert disk_full_reason(psycopg.errors.lookup("42P01")('relation "disk full" does not exist')) is None
    sql = sqlalchemy.exc.OperationalError("INSERT 'disk full'", {"v": "no space left on device"},
                                          psycopg.OperationalError("server closed the connection unexpectedly"))
    assert disk_full_reason(sql) is None
    refused = StorageUnavailable("the database stayed unreachable (last error: database or disk is full)")
    refused.__cause__ = _op_error("connection refused")
    assert disk_full_reason(refused) is None
    assert disk_full_reason(ValueError("x")) is None
