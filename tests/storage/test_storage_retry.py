from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import text

from storage import StorageUnavailable, create_storage, is_transient, retryable, retrying


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
