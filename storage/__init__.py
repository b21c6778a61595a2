"""hpsearch storage: engines, Optuna ``RDBStorage``, URL handling, retry, lease, fast queries.

Importing this package has no side effects (no connection, no file, no logging set-up).
"""

from __future__ import annotations

from storage._attrs import set_trial_intermediate_values, set_trial_user_attrs
from storage._engine import create_engine, create_storage, engine_kwargs, translate_error
from storage._errors import (
    BadStorageURL,
    LeaseHeld,
    LeaseLost,
    StorageError,
    StorageUnavailable,
    StudyNotFound,
)
from storage._keys import StudyAttr, TrialAttr
from storage._lease import (
    DEFAULT_STALE_AFTER_S,
    LEASE_TABLE,
    HeartbeatThread,
    Lease,
    LeaseInfo,
    ensure_lease_table,
    read_lease,
)
from storage._optuna_compat import (
    artifact_attr_key,
    rdb_of,
    record_trial_artifact,
    study_id,
    study_storage,
    suggest,
    trial_id,
)
from storage._queries import (
    ROW_ATTRS,
    StudySummary,
    TrialRow,
    best_trial_row,
    list_studies,
    study_attrs,
    study_names,
    trial_rows,
)
from storage._retry import disk_full_reason, is_transient, retryable, retrying
from storage._url import DEFAULT_URL, ENV_VAR, redact, resolve_url, scrub

__all__ = [
    "DEFAULT_STALE_AFTER_S",
    "DEFAULT_URL",
    "ENV_VAR",
    "LEASE_TABLE",
    "ROW_ATTRS",
    "BadStorageURL",
    "HeartbeatThread",
    "Lease",
    "LeaseHeld",
    "LeaseInfo",
    "LeaseLost",
    "StorageError",
    "StorageUnavailable",
    "StudyAttr",
    "StudyNotFound",
    "StudySummary",
    "TrialAttr",
    "TrialRow",
    "artifact_attr_key",
    "best_trial_row",
    "create_engine",
    "create_storage",
    "disk_full_reason",
    "engine_kwargs",
    "ensure_lease_table",
    "is_transient",
    "list_studies",
    "rdb_of",
    "read_lease",
    "record_trial_artifact",
    "redact",
    "resolve_url",
    "retryable",
    "retrying",
    "scrub",
    "set_trial_intermediate_values",
    "set_trial_user_attrs",
    "study_attrs",
    "study_id",
    "study_names",
    "study_storage",
    "suggest",
    "translate_error",
    "trial_id",
    "trial_rows",
]
