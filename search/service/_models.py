"""The HTTP API's request and response bodies (typed, so ``/openapi.json`` documents them).

Their keys are those of the ``--output json`` contract (``ls``, ``show``, ``best``) plus the
queue's; like that contract, keys are only ever added.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CheckpointsOut", "ErrorOut", "StudyDetailOut", "StudyListOut", "StudyOut", "SubmitIn", "TrialOut",
           "TrialsOut"]


class SubmitIn(BaseModel):
    """``POST /studies``: a study file's text and its share of the slots."""

    model_config = ConfigDict(extra="forbid")

    study_file: str = Field(description="The study file's text: YAML (or JSON), as for `hpsearch run FILE`.")
    priority: int = Field(1, ge=1, le=1000, description="Weight in the share of slots (2 gets twice 1's).")
    filename: str | None = Field(None, max_length=1000,
                                 description="The file's name, used in error messages as `hpsearch run` does.")


class ErrorOut(BaseModel):
    """Every refused request: ``detail`` says why and what to do."""

    detail: str


class StudyOut(BaseModel):
    """One study: ``ls -o json``'s keys, progress, and its queue entry (``state`` null: not submitted here)."""

    name: str
    direction: str
    strategy: str | None = None
    n_complete: int
    n_pruned: int
    n_fail: int
    n_running: int
    n_waiting: int
    best_value: float | None = None
    created_at: str | None = None
    last_completed_at: str | None = None
    done: int = Field(description="Trials that count against the budget (COMPLETE + PRUNED + FAIL not re-run).")
    budget: int | None = None
    state: str | None = Field(None, description="queued, running, done, failed, cancelled; null if not submitted")
    priority: int | None = None
    owner: str | None = None
    submitted_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    message: str | None = None


class StudyDetailOut(StudyOut):
    """``GET /studies/{name}``: the study and its best trial (``best -o json``; null before one completed)."""

    best: dict[str, Any] | None = None


class StudyListOut(BaseModel):
    """``GET /studies``: ``ls -o json``."""

    studies: list[StudyOut]


class TrialOut(BaseModel):
    """One trial of ``show -o json``."""

    number: int
    state: str
    value: float | None = None
    value_std: float | None = None
    params: dict[str, Any]
    fold_scores: list[float | None] | None = None
    epochs: int | None = None
    duration_s: float | None = None
    fail_reason: str | None = None
    node: str | None = None
    retry_of: int | None = None
    resumed_from_epoch: int | None = None
    """The epoch of the checkpoint the trial went on from; null when it started fresh."""


class CheckpointsOut(BaseModel):
    """Disk use of a study's checkpoints (``checkpoint`` in the study file)."""

    directory: str | None = None
    files: int
    bytes: int


class TrialsOut(BaseModel):
    """``GET /studies/{name}/trials``: ``show NAME -o json``."""

    study: str
    direction: str
    metric: str | None = None
    strategy: str | None = None
    test_result: dict[str, Any] | None = None
    trials: list[TrialOut]
    checkpoints: CheckpointsOut | None = None
