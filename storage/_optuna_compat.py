"""Every private API of Optuna that hpsearch uses, in one place.

Optuna has no public way to do these things; each is used by name here only, so an Optuna release
that changes one breaks this module (and its test, tests/storage/test_storage_optuna_compat.py),
not code spread over the packages.

- a study's storage and id, a trial's id (``Study._storage``, ``Study._study_id``,
  ``Trial._trial_id``): the orchestrator writes trials it holds by id;
- ``Trial._suggest``: completing a trial another process created (it keeps a value already set);
- ``optuna.storages._rdb``: the table models (fast read queries) and the per-item writes inside
  one session (several attributes or values in one transaction);
- ``_CachedStorage._backend``: the ``RDBStorage`` behind Optuna's cache;
- :data:`FIXED_PARAMS`: the system attribute in which ``enqueue_trial`` keeps a WAITING trial's
  params until it is asked for (``show`` lists a queued re-run's params from it);
- ``optuna.artifacts._upload.ARTIFACTS_ATTR_PREFIX``: the system attribute under which
  ``upload_artifact`` records an artifact (:func:`artifact_attr_key`), written here with an id chosen
  before the upload, so that a retried database write records the same artifact, not a second one;
  and the system-attribute table itself (:func:`record_trial_artifact`): Optuna refuses to set an
  attribute of a finished trial, and the best model is saved after its trial finished.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
from optuna.distributions import BaseDistribution
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session

__all__ = [
    "FIXED_PARAMS",
    "artifact_attr_key",
    "models",
    "rdb_of",
    "rdb_session",
    "record_trial_artifact",
    "set_trial_intermediate_value_in",
    "set_trial_user_attr_in",
    "study_id",
    "study_storage",
    "suggest",
    "trial_id",
]

FIXED_PARAMS = "fixed_params"


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes (possibly Optuna's cache around an ``RDBStorage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage (not its number)."""
    return trial._trial_id


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """``trial``'s value of ``name``: the one already set (by the queue, a grid, another process), else sampled."""
    return trial._suggest(name, distribution)


def rdb_of(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The ``RDBStorage`` behind ``storage`` (itself, or the one Optuna's cache wraps), else None."""
    rdb = getattr(storage, "_backend", storage)
    return rdb if isinstance(rdb, optuna.storages.RDBStorage) else None


@contextmanager
def rdb_session(rdb: optuna.storages.RDBStorage) -> Iterator[Any]:
    """One SQLAlchemy session (one transaction, committed on exit) of ``rdb``, as its own writes use."""
    with _create_scoped_session(rdb.scoped_session, True) as session:
        yield session


def set_trial_user_attr_in(session: Any, rdb: optuna.storages.RDBStorage, trial_id: int, key: str, value: Any) -> None:
    """Set one trial user attribute inside ``session`` (:func:`rdb_session`), without committing."""
    rdb._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)


def set_trial_intermediate_value_in(
    session: Any, rdb: optuna.storages.RDBStorage, trial_id: int, step: int, value: float
) -> None:
    """Set one intermediate value inside ``session`` (:func:`rdb_session`), without committing."""
    rdb._set_trial_intermediate_value_without_commit(session, trial_id, step, value)


def artifact_attr_key(artifact_id: str) -> str:
    """The system attribute under which ``optuna.artifacts`` records artifact ``artifact_id``
    (its value: the JSON of ``ArtifactMeta``; ``get_all_artifact_meta`` and optuna-dashboard read it)."""
    return ARTIFACTS_ATTR_PREFIX + artifact_id


def record_trial_artifact(storage: optuna.storages.BaseStorage, trial_id: int, artifact_id: str,
                          meta: dict[str, Any]) -> None:
    """Record artifact ``artifact_id`` (its ``ArtifactMeta`` fields ``meta``) on trial ``trial_id``,
    finished or not, as ``upload_artifact`` records one on a running trial; repeating it is harmless.

    Raises
    ------
    TypeError
        For a storage that is not an ``RDBStorage`` (hpsearch's storages always are).
    """
    rdb = rdb_of(storage)
    if rdb is None:
        raise TypeError(f"recording an artifact needs an RDBStorage, got {type(storage).__name__}")
    key, value_json = artifact_attr_key(artifact_id), json.dumps(json.dumps(meta))
    model = models.TrialSystemAttributeModel
    with rdb_session(rdb) as session:
        row = session.query(model).filter(model.trial_id == trial_id, model.key == key).one_or_none()
        if row is None:
            session.add(model(trial_id=trial_id, key=key, value_json=value_json))
        else:
            row.value_json = value_json
