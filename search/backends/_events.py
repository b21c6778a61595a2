"""The jobs a backend runs and the events it returns (:meth:`Backend.poll`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from trials import CheckpointPlan, EpochReport, TestResult, TrialResult

__all__ = ["FAILURE_KINDS", "Event", "Failed", "Finished", "Report", "TrialJob"]

FAILURE_KINDS = ("error", "oom", "crash", "store")
"""What :class:`Failed` may say: the trial's code raised, it ran out of memory, its worker died, or its
checkpoint could not be written to the artifact store."""


@dataclass(frozen=True)
class TrialJob:
    """One unit of work: a trial (CV score) or the final refit (test score) of a configuration."""

    key: str
    number: int
    params: dict[str, Any]
    seed: int
    kind: Literal["trial", "refit"] = "trial"
    attempt: int = 0
    folds: tuple[int, ...] | None = None
    gpu_fraction: float | None = None
    epochs: int | None = None
    """A refit's fixed epoch count on all non-test rows; None: early stopping on an inner split."""
    checkpoint: CheckpointPlan | None = None
    """Where the trial saves its state as it trains, and goes on from (``checkpoint`` in the study file)."""


@dataclass(frozen=True)
class Report:
    key: str
    report: EpochReport


@dataclass(frozen=True)
class Finished:
    key: str
    result: TrialResult | TestResult
    node: str = ""
    node_id: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0


@dataclass(frozen=True)
class Failed:
    """A job that did not produce a result. ``kind`` tells the orchestrator how to treat it:
    ``error`` (the trial's code raised: re-run up to ``retries.max_retries``), ``oom`` (out of
    memory: recorded PRUNED, not re-run), ``crash`` (its worker died after Ray's own re-executions) or
    ``store`` (its checkpoint could not be written: the study stops, resumable, and the trial is
    re-run on resume from its last checkpoint).

    A job the orchestrator cancelled produces no event at all (:meth:`Backend.cancel_all`).
    """

    key: str
    reason: str
    kind: Literal["error", "oom", "crash", "store"] = "error"
    detail: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FAILURE_KINDS:
            raise ValueError(f"Failed.kind must be one of {', '.join(FAILURE_KINDS)}, got {self.kind!r}")


Event = Report | Finished | Failed
