"""Errors of the search package that need no heavy imports (the CLI maps them to exit codes)."""

from __future__ import annotations

from typing import Any

__all__ = ["NoTrialCompleted", "UsageError"]


class UsageError(Exception):
    """A request that cannot be carried out as asked; the message says what to do instead."""


class NoTrialCompleted(Exception):
    """The study's budget is used up and no trial completed: every one failed or was pruned.

    Attributes
    ----------
    study : str
        The study's name.
    result : search.StudyResult
        What the run ended with (``best`` is None); ``hpsearch show NAME`` lists each trial's reason.
    """

    def __init__(self, message: str, *, study: str, result: Any) -> None:
        super().__init__(message)
        self.study = study
        self.result = result
