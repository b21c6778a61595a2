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

from storage._optuna_compat import rdb_of, rdb_session, set_trial_intermediate_value_in, set_trial_user_attr_in

__all__ = ["set_trial_intermediate_values", "set_trial_user_attrs"]


def set_trial_user_attrs(storage: optuna.storages.BaseStorage, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Set ``attrs`` as user attributes of trial ``trial_id``, atomically where the storage allows.

    Parameters
    ----------
    storage : optuna.storages.BaseStorage
        ``storage.study_storage(study)``: an ``RDBStorage``, possibly wrapped in Optuna's cache, or any storage.
    trial_id : int
        Optuna's trial id (``storage.trial_id(trial)``), not the trial number.
    attrs : Mapping[str, Any]
        JSON-serializable values.
    """
    rdb = rdb_of(storage)
    if rdb is None:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        return
    with rdb_session(rdb) as session:
        for key, value in attrs.items():
            set_trial_user_attr_in(session, rdb, trial_id, key, value)


def set_trial_intermediate_values(
    storage: optuna.storages.BaseStorage, trial_id: int, values: Mapping[int, float]
) -> None:
    """Store ``values`` (step -> value) as intermediate values of trial ``trial_id``, in one transaction.

    A step already stored is overwritten (so a retried write is harmless). The trial must be
    RUNNING, as for ``Trial.report``. Storages other than ``RDBStorage`` get one call per value.
    """
    rdb = rdb_of(storage)
    if rdb is None:
        for step, value in values.items():
            storage.set_trial_intermediate_value(trial_id, int(step), float(value))
        return
    with rdb_session(rdb) as session:
        for step, value in values.items():
            set_trial_intermediate_value_in(session, rdb, trial_id, int(step), float(value))
