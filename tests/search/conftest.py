from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "batch_size": {"type": "categorical", "choices": [32, 64]},
}
@pytest.fixture
def hook() -> Iterator[Any]:
    """A :class:`tests.search.webhook.Hook` answering 200, closed at the end."""
    from tests.search.webhook import Hook

    h = Hook()
    yield h
    h.close()


@pytest.fixture
def fast_notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Notification retries 10 ms apart; at the end, every post was sent or dropped."""
    from search._notify import flush_notifications

    monkeypatch.setenv("HPSEARCH_NOTIFY_BACKOFF_S", "0.01")
    yield
    assert flush_notifications(30), "a notification was still being sent at the end of the test"


GRID = {"lr": {"values": [0.001, 0.01, 0.1]}, "batch_size": {"choices": [32, 64]}}


@pytest.fixture
def make_spec():
    def make(**kw: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": "t",
            "strategy": "random",
            "n_trials": 6,
            "seed": 1,
            "space": SPACE,
            "data": {"source": "digits"},
            "training": {"max_epochs": 5},
            "cv": {"folds": 2},
        }
        spec.update(kw)
        return spec

    return make




@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs when there is one: SQLite commits there cost microseconds, not an fsync."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="hpsearch-test-", dir="/dev/shm"))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


@pytest.fixture
def quiet_optuna() -> Iterator[None]:
    """Optuna logs errors only (no line per created study or trial)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    yield
    optuna.logging.set_verbosity(before)


@pytest.fixture
def sqlite_url(fast_dir: Path) -> str:
    """A not-yet-existing SQLite file ``study.db``, on tmpfs when there is one (a study's many small
    commits cost about a third more on disk)."""
    return f"sqlite:///{fast_dir / 'study.db'}"
