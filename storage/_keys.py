"""The names of the attributes hpsearch stores with studies and trials, in one place.

They are a contract: the orchestrator writes them, ``ls``/``show``/``best``, the report, the
export and optuna-dashboard read them, and stored studies keep them for ever. A name is only
ever added. docs/architecture.md says what each one holds.
"""

from __future__ import annotations

__all__ = ["StudyAttr", "TrialAttr"]


class TrialAttr:
    """Trial user attribute keys (``trial.user_attrs[TrialAttr.FOLD_SCORES]``)."""

    FOLD_SCORES = "fold_scores"
    VALUE_STD = "value_std"
    FOLD_EPOCHS = "fold_epochs"
    EPOCHS = "epochs"
    DURATION_S = "duration_s"
    NODE = "node"
    NODE_ID = "node_id"
    WORKER_START = "worker_start"
    WORKER_END = "worker_end"
    DEVICE = "device"
    TRAIN_PATH = "train_path"
    STACK_SIZE = "stack_size"
    ALONE = "alone"
    RERUN_ALONE = "rerun_alone"
    CURVES = "curves"
    FAIL_REASON = "fail_reason"
    OOM = "oom"
    WILL_RETRY = "will_retry"
    RETRY_OF = "retry_of"
    ATTEMPT = "attempt"
    FAILURES = "failures"
    RERUN_FAILURES = "rerun_failures"
    SEED = "seed"
    CHECKPOINT = "checkpoint"
    """The artifact id of the trial's checkpoint (kept by its re-runs, which go on from it)."""
    CHECKPOINT_SLOT = "checkpoint_slot"
    """``[i, n]``: the trial is member ``i`` of the ``n`` trials of one stack (``resources.stack_trials``),
    whose one checkpoint (``checkpoint``, the same id on each) holds them all; absent or None: the
    checkpoint is the trial's own."""
    RESUMED_FROM_EPOCH = "resumed_from_epoch"
    """The epoch of the checkpoint the trial went on from; None when it started at epoch 1."""


class StudyAttr:
    """Study user attribute keys (``study.user_attrs[StudyAttr.SPEC]``)."""

    SPEC = "hpsearch_spec"
    VERSION = "hpsearch_version"
    DATA_FINGERPRINT = "hpsearch_data_fingerprint"
    TEST_RESULT = "test_result"
    REFIT_ERROR = "hpsearch_refit_error"
    CLASSES = "hpsearch_classes"
    """The original class labels in code order (``classes[code]``, as ``trials.decode_labels`` reads them)."""
    KEPT_CHECKPOINT = "hpsearch_kept_checkpoint"
    """``checkpoint.keep_best``: ``{"trial", "checkpoint", "directory"}`` of the best trial's checkpoint, kept;
    with ``"slot": [i, n]`` when that checkpoint is a stack's (the trial is its member ``i``)."""
    ARTIFACT_STORE = "hpsearch_artifact_store"
    """The artifact store (a directory or ``s3://BUCKET/PREFIX/``) that the latest run with checkpoints wrote
    them to: where ``hpsearch show`` counts them. No credentials: boto3 reads those on each machine."""
    SCALING = "hpsearch_scaling"
    """How the study's trials scale features (``data.scaling`` resolved for its samples: ``trials.Dataset.scaling``)."""
