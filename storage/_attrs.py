"""Write several trial user attributes, or several intermediate values, in one transaction.

Optuna's storage API commits once per attribute or value; a finished trial carries about a dozen
attributes and every epoch reports a value, so the orchestrator writes them together. For an
``RDBStorage`` (also behind Optuna's ``_CachedStorage``, which passes these writes straight
through) this uses the storage's own per-item upsert inside one session; any other storage falls
back to one call per item.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session

__all__ = ["set_trial_intermediate_values", "set_trial_user_attrs"]


def set_trial_user_attrs(storage: optuna.storages.BaseStorage, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Set ``attrs`` as user attributes of trial ``trial_id``, atomically where the storage allows.

    Parameters
    ----------
    storage : optuna.storages.BaseStorage
        ``study._storage``: an ``RDBStorage``, possibly wrapped in Optuna's cache, or any storage.
    trial_id : int
        Optuna's trial id (``trial._trial_id``), not the trial number.
    attrs : Mapping[str, Any]
        JSON-serializable values.
    """
    rdb = getattr(storage, "_backend", storage)
    if not isinstance(rdb, optuna.storages.RDBStorage):
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        return
    with _create_scoped_session(rdb.scoped_session, True) as session:
        for key, value in attrs.items():
            rdb._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)


def set_trial_intermediate_values(
    storage: optuna.storages.BaseStorage, trial_id: int, values: Mapping[int, float]
) -> None:
    """Store ``values`` (step -> value) as intermediate values of trial ``trial_id``, in one transaction.

    A step already stored is overwritten (so a retried write is harmless). The trial must be
    RUNNING, as for ``Trial.report``. Storages other than ``RDBStorage`` get one call per value.
    """
    rdb = getattr(storage, "_backend", storage)
    if not isinstance(rdb, optuna.storages.RDBStorage):
        for step, value in values.items():
            storage.set_trial_intermediate_value(trial_id, int(step), float(value))
        return
    with _create_scoped_session(rdb.scoped_session, True) as session:
        for step, value in values.items():
            rdb._set_trial_intermediate_value_without_commit(session, trial_id, int(step), float(value))
