"""A progress bar for the CLI: trials done of the budget and the best value so far."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from storage import TrialAttr

from .._orchestrator import Callbacks

__all__ = ["ProgressCallbacks"]


class ProgressCallbacks(Callbacks):
    """Draws a progress bar on stderr; a context manager so the bar always closes.

    Output is a courtesy: once its reader is gone (``hpsearch resume X 2>&1 | head -2``), it stops
    writing instead of failing the run at its next line.
    """

    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self._console = console or Console(stderr=True)
        # rich's default answer to a closed pipe is SystemExit(1), from whichever write meets it
        self._console.on_broken_pipe = self._on_broken_pipe  # type: ignore[method-assign]
        self._closed_pipe = False
        self._progress: Progress | None = None
        self._task: Any = None
        self._best: float | None = None
        self._maximize = True

    def __enter__(self) -> ProgressCallbacks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar (idempotent), so that what follows is printed below it."""
        progress, self._progress = self._progress, None
        if progress is not None:
            self._write(progress.stop)

    def _on_broken_pipe(self) -> None:
        self._console.quiet = True  # nothing more is written, from any thread
        self._closed_pipe = True

    def _write(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._closed_pipe:
            return
        try:
            fn(*args, **kwargs)
        except BrokenPipeError:
            self._closed_pipe = True
            progress, self._progress = self._progress, None
            if progress is not None:
                try:
                    progress.stop()
                except OSError:
                    pass

    def on_start(self, study: optuna.Study, done: int, budget: int, where: str) -> None:
        self._maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        # a resumed study's best so far is among its stored trials, not only those this run tells
        try:
            stored = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                      if t.value is not None and math.isfinite(t.value)]
        except Exception:  # a display detail must not stop a run (the orchestrator retries its own reads)
            stored = []
        self._best = (max(stored) if self._maximize else min(stored)) if stored else None
        name = escape(study.study_name)  # a study name is any text, never rich markup
        self._write(self._console.print, f"study [bold]{name}[/]: {done}/{budget} done; trials run on {escape(where)}")
        if not self.enabled or self._closed_pipe:
            return
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[best]}"), console=self._console, transient=False,
        )
        best = f"best {self._best:.4g}" if self._best is not None else ""
        self._task = self._progress.add_task("trials", total=budget, completed=done, best=best)
        self._write(self._progress.start)

    def on_trial_end(self, trial: FrozenTrial, done: int, budget: int) -> None:
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            v = trial.value
            if self._best is None or (v > self._best if self._maximize else v < self._best):
                self._best = v
        if trial.state == TrialState.FAIL:
            self.on_message(f"trial {trial.number} failed: {trial.user_attrs.get(TrialAttr.FAIL_REASON, '?')}")
        elif trial.state == TrialState.PRUNED and trial.user_attrs.get(TrialAttr.OOM):
            self.on_message(f"trial {trial.number} {trial.user_attrs.get(TrialAttr.FAIL_REASON, 'ran out of memory')}; "
                            "recorded as PRUNED so that the sampler avoids its configuration")
        if self._progress is not None:
            best = f"best {self._best:.4g}" if self._best is not None else ""
            self._write(self._progress.update, self._task, completed=done, best=best)

    def on_refit_start(self, number: int) -> None:
        self.on_message(f"refitting trial {number} on all non-test data for the held-out test score")

    def on_message(self, text: str) -> None:
        self._write(self._console.print, text, highlight=False, markup=False)
