from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "batch_size": {"type": "categorical", "choices": [32, 64]},
}
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
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"
