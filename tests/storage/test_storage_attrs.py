"""Batched writes: several user attributes or intermediate values of a trial in one transaction."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import event

from storage import create_storage, set_trial_intermediate_values, set_trial_user_attrs


def _commits(storage: optuna.storages.RDBStorage) -> list[int]:
    """A counter of COMMITs on ``storage``'s engine (append-only list, one item per commit)."""
    seen: list[int] = []
    event.listen(storage.engine, "commit", lambda conn: seen.append(1))
    return seen


@pytest.mark.parametrize("url_fixture", ["sqlite_url", pytest.param("postgres_url", marks=pytest.mark.postgres)])
def test_intermediate_values_in_one_transaction(url_fixture: str, request: pytest.FixtureRequest) -> None:
    storage = create_storage(request.getfixturevalue(url_fixture))
    study = optuna.create_study(storage=storage, study_name="iv", direction="maximize")
    trial = study.ask()
    commits = _commits(storage)
    set_trial_intermediate_values(study._storage, trial._trial_id, {1: 0.5, 2: 0.6, 3: float("nan")})
    assert len(commits) == 1
    set_trial_intermediate_values(study._storage, trial._trial_id, {3: 0.7, 4: 0.8})  # step 3 overwritten
    values = storage.get_trial(trial._trial_id).intermediate_values
    assert values == {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8}
    # what the pruners read is what Trial.report would have stored
    study.tell(trial, 0.8)
    assert study.trials[0].intermediate_values == values


def test_intermediate_values_refused_on_a_finished_trial(sqlite_url: str) -> None:
    storage = create_storage(sqlite_url)
    study = optuna.create_study(storage=storage, study_name="done")
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError, match="finished"):
        set_trial_intermediate_values(study._storage, trial._trial_id, {1: 0.5})
    assert storage.get_trial(trial._trial_id).intermediate_values == {}


def test_in_memory_storage_falls_back_to_one_call_per_item() -> None:
    study = optuna.create_study()
    trial = study.ask()
    set_trial_intermediate_values(study._storage, trial._trial_id, {2: 0.25, 1: 0.5})
    set_trial_user_attrs(study._storage, trial._trial_id, {"a": 1, "b": [1, 2]})
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.intermediate_values == {1: 0.5, 2: 0.25}
    assert frozen.user_attrs == {"a": 1, "b": [1, 2]}
