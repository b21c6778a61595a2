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
from storage._notify import NOTIFY_TABLE, ensure_notify_table, notify_config, set_notify_config
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
    StudyOverview,
    StudySummary,
    TrialRow,
    best_trial_row,
    list_studies,
    study_attrs,
    study_names,
    study_overview,
    trial_rows,
)
from storage._queue import (
    ACTIVE_STATES,
    QUEUE_STATES,
    QUEUE_TABLE,
    QueueRow,
    ensure_queue_table,
    queue_row,
    queue_rows,
    queue_submit,
    queue_transition,
)
from storage._retry import disk_full_reason, is_transient, retryable, retrying
from storage._tokens import (
    TOKEN_TABLE,
    TokenExists,
    TokenUser,
    any_token,
    create_token,
    ensure_token_table,
    token_user,
)
from storage._url import DEFAULT_URL, ENV_VAR, redact, resolve_url, scrub

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_STALE_AFTER_S",
    "DEFAULT_URL",
    "ENV_VAR",
    "LEASE_TABLE",
    "NOTIFY_TABLE",
    "QUEUE_STATES",
    "QUEUE_TABLE",
    "ROW_ATTRS",
    "TOKEN_TABLE",
    "BadStorageURL",
    "HeartbeatThread",
    "Lease",
    "LeaseHeld",
    "LeaseInfo",
    "LeaseLost",
    "QueueRow",
    "StorageError",
    "StorageUnavailable",
    "StudyAttr",
    "StudyNotFound",
    "StudyOverview",
    "StudySummary",
    "TokenExists",
    "TokenUser",
    "TrialAttr",
    "TrialRow",
    "any_token",
    "artifact_attr_key",
    "best_trial_row",
    "create_engine",
    "create_storage",
    "create_token",
    "disk_full_reason",
    "engine_kwargs",
    "ensure_lease_table",
    "ensure_notify_table",
    "ensure_queue_table",
    "ensure_token_table",
    "is_transient",
    "list_studies",
    "notify_config",
    "queue_row",
    "queue_rows",
    "queue_submit",
    "queue_transition",
    "rdb_of",
    "read_lease",
    "record_trial_artifact",
    "redact",
    "resolve_url",
    "retryable",
    "retrying",
    "scrub",
    "set_notify_config",
    "set_trial_intermediate_values",
    "set_trial_user_attrs",
    "study_attrs",
    "study_id",
    "study_names",
    "study_overview",
    "study_storage",
    "suggest",
    "token_user",
    "translate_error",
    "trial_id",
    "trial_rows",
]
