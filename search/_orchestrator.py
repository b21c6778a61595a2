"""The ask/tell loop: the only code that writes the study.

It asks Optuna for trials, hands them to a :class:`~search.Backend`, stores per-epoch values, lets
the pruner decide, and tells Optuna the outcome. State lives in the Optuna study alone; the few
counters kept here are derived from it at start and updated as this process writes it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shlex
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage import (
    StudyAttr,
    TrialAttr,
    record_trial_artifact,
    set_trial_intermediate_values,
    set_trial_user_attrs,
    study_id,
    study_storage,
    suggest,
)
from storage import trial_id as trial_id_of
from trials import (
    CheckpointPlan,
    TestResult,
    TrialResult,
    checkpoint_files,
    checkpoint_sizes_of,
    is_object_store,
    remove_checkpoints,
    resolve_hyperparams,
    stack_key,
    trial_seed,
)

from . import __version__
from ._artifacts import ArtifactStoreError, ModelStore, pack_model
from ._refit import cv_epochs
from ._spec import StudySpec
from ._stop import StopRequested, StopToken
from ._strategies import distributions
from .backends import Backend, Failed, Finished, Report, TrialJob

__all__ = ["Callbacks", "Interrupted", "Orchestrator", "count_done"]

T = TypeVar("T")


_MIN_REFIT_TIMEOUT_S = 600.0

# A ready trial passed over this many times is submitted next (with whatever group it has).
_MAX_PASSED = 2


def sweep_checkpoints(trials: list[FrozenTrial], store: str | None, kept: str | None) -> str | None:
    """Delete the checkpoints a stopped run left behind for trials finished for good; returns what was
    deleted, to say (None: nothing). Called with the study's lease held, before any trial runs.

    A run killed between recording a trial finished and deleting its checkpoint (or between recording
    a new kept checkpoint and deleting the previous best's) leaves a file; so disk use stays bounded
    whatever the kill. Only the ids of this study's trials are touched (``kept`` excepted; the store
    may be shared), found by one listing of the store.
    """
    if store is None:
        return None
    held = {t.user_attrs.get(TrialAttr.CHECKPOINT) for t in trials if not t.state.is_finished()}
    done = {t.user_attrs.get(TrialAttr.CHECKPOINT) for t in trials if t.state.is_finished()}
    ids = done - held - {kept, None}
    if not ids:
        return None
    left = sorted(checkpoint_sizes_of(store, ids))  # (a store that cannot be listed now: the next run tries)
    if not left:
        return None
    freed = sum(remove_checkpoints(store, ckpt) for ckpt in left)
    return (f"deleted the checkpoints of {len(left)} finished trial(s) that a stopped run left in {store} "
            f"({freed / 1e6:.1f} MB)")


class Interrupted(Exception):
    """The run was interrupted (Ctrl-C); in-flight trials were recorded for re-running."""


class Callbacks:
    """Hooks the orchestrator calls; all no-ops. Subclass and override what you need."""

    def on_start(self, study: optuna.Study, done: int, budget: int, where: str) -> None:
        """Called once the backend is ready, with the trials already done."""

    def on_trial_start(self, number: int, params: dict[str, Any]) -> None:
        """A trial was dispatched."""

    def on_trial_end(self, trial: FrozenTrial, done: int, budget: int) -> None:
        """A trial was told (COMPLETE, PRUNED or FAIL)."""

    def on_refit_start(self, number: int) -> None:
        """The best configuration is being refit for its held-out test score."""

    def on_message(self, text: str) -> None:
        """Something the user should know (recovered trials, retries)."""


def _is_final(t: FrozenTrial) -> bool:
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and not t.user_attrs.get(TrialAttr.WILL_RETRY, False)


def _failures(attrs: dict[str, Any]) -> int:
    """A run's earlier own failures (``failures``; studies from before it existed counted ``attempt``)."""
    return int(attrs.get(TrialAttr.FAILURES, attrs.get(TrialAttr.ATTEMPT, 0)))


def count_done(trials: list[FrozenTrial]) -> int:
    """Trials that consumed budget: COMPLETE, PRUNED, and FAIL not followed by a retry."""
    return sum(_is_final(t) for t in trials)


@dataclass(eq=False)  # identity: the pool and stacks hold these objects
class _Running:
    """A trial this run asked for: ready (not yet submitted, ``task`` is None) or running."""

    trial: optuna.Trial
    job: TrialJob
    alone: bool = False  # must not share a stack (a re-run after its own failure)
    failures: int = 0  # earlier runs of this trial that failed by its own fault (see retries.max_retries)
    task: int | None = None  # the backend task (stack) running it
    stacked: bool = False  # runs in a stack with other trials
    passed: int = 0  # times it was ready and another group was submitted instead
    last_step: int = 0
    pruned: bool = False
    leftover: str | None = None  # the checkpoint id an earlier run recorded while checkpoints are now off
    slot: tuple[int, int] | None = None  # (i, n): member i of the n trials whose stack's checkpoint it shares
    resumable: bool = False  # a re-run whose checkpoint has files: it goes on from them (in its stack, if slot)


class Orchestrator:
    """Drives one study to its budget on a backend.

    Parameters
    ----------
    study:
        The Optuna study (RDB storage), created with the spec's sampler, pruner and direction.
    spec:
        The validated study spec.
    backend:
        An opened backend.
    db:
        Wrapper for storage calls (retry with backoff); identity by default.
    stack_trials:
        Up to this many trials whose configurations can share a network (:func:`trials.stack_key`)
        run as one stack on one worker. The orchestrator keeps up to ``stack_trials`` x capacity
        trials asked ahead and starts the largest group that fits; 1 runs one trial per task.
    stop:
        The run's :class:`~search.StopToken`, checked between polls: once set, :meth:`run` records
        the in-flight trials for re-running and raises :class:`Interrupted`. The orchestrator sets it
        itself when the artifact store refuses a checkpoint (a :class:`Failed` of kind ``store``);
        :meth:`run` then raises :class:`~search._artifacts.ArtifactStoreError` (exit 3) instead.
    models:
        The artifact store the final refit's model is saved to (:meth:`refit_best`); None: not saved.
    checkpoints:
        The artifact directory trials save their checkpoints to (``checkpoint`` in the spec); None:
        no checkpoints. The orchestrator chooses each trial's checkpoint id, records it on the trial
        (a re-run of the trial keeps it, and goes on from it) and deletes the checkpoint once the
        trial is finished; workers only write the files. With ``checkpoint`` off, a trial that holds
        a checkpoint from an earlier run (the spec changed) still has it deleted there when it is
        finished for good. A stack of trials (``stack_trials``) writes one checkpoint, whose id each
        member records with its place in the stack (``checkpoint_slot``); their re-runs go on from it
        as that same stack again, and a member re-run in any other group starts from epoch 1.
    """

    def __init__(
        self,
        study: optuna.Study,
        spec: StudySpec,
        backend: Backend,
        *,
        callbacks: Callbacks | None = None,
        db: Callable[[Callable[[], T]], T] | None = None,
        poll_interval: float = 0.05,
        stack_trials: int = 1,
        stop: StopToken | None = None,
        models: ModelStore | None = None,
        checkpoints: str | None = None,
    ) -> None:
        self.study = study
        self._store = study_storage(study)  # for writes of several items in one transaction
        self._sid = study_id(study)
        self.spec = spec
        self.backend = backend
        self.callbacks = callbacks or Callbacks()
        self._db_call: Callable[[Callable[[], Any]], Any] = db or (lambda fn: fn())
        self.poll_interval = poll_interval
        self._dists = distributions(spec)
        self._running: dict[str, _Running] = {}
        self._ready: list[_Running] = []  # asked, not yet submitted (waiting to fill a stack)
        self._tasks = 0  # backend tasks submitted so far (a stack is one task)
        if stack_trials < 1:
            raise ValueError(f"stack_trials must be >= 1, got {stack_trials}")
        self.stack_trials = stack_trials
        self._done = 0
        self.stop = stop if stop is not None else StopToken()
        self.models = models  # where the refit model is saved (None: not saved)
        self.checkpoints = checkpoints if spec.checkpoint.enabled else None
        self._artifacts = checkpoints  # where earlier runs' checkpoints are, with checkpoints on or off
        self._unstarted: list[int] = []  # ids of RUNNING trials a stopped run created but never started
        self._store_failure: str | None = None  # a checkpoint the artifact store refused: the run stops (exit 3)
        self._kept: str | None = None  # the id of the checkpoint kept as the best trial's (checkpoint.keep_best)

    def _db(self, fn: Callable[[], T]) -> T:
        """Every storage call of the loop (retried, lease checked: the ``db`` wrapper)."""
        return self._db_call(fn)

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Run trials until the budget is used up. Raises :class:`Interrupted` when stopped.

        The stop token is checked between polls, never inside a storage call, so a trial is
        recorded whole: a first Ctrl-C (or ``stop.set``) cancels the in-flight trials, records
        them FAIL with a queued re-run and raises :class:`Interrupted`. A forced stop (a second
        Ctrl-C) raises at once, without recording: the next resume re-runs what was in flight.
        """
        budget = self.spec.budget
        try:
            trials = self._db(lambda: self.study.get_trials(deepcopy=False))
            attrs = self._db(lambda: self.study.user_attrs)
            kept = attrs.get(StudyAttr.KEPT_CHECKPOINT) or {}
            self._kept = kept.get("checkpoint")
            if self.checkpoints is not None and attrs.get(StudyAttr.ARTIFACT_STORE) != self.checkpoints:
                self._db(lambda: self.study.set_user_attr(StudyAttr.ARTIFACT_STORE, self.checkpoints))
            self._recover(trials)
            trials = self._db(lambda: self.study.get_trials(deepcopy=False))
            swept = sweep_checkpoints(trials, self._artifacts, self._kept)
            if swept:
                self.callbacks.on_message(swept)
            self._done = count_done(trials)
            self.callbacks.on_start(self.study, self._done, budget, self.backend.describe())
            while True:
                self.stop.check()
                while self._lanes_in_use() < self.backend.capacity and (self._ready or self._can_ask()):
                    self._dispatch()
                if not self._running:
                    break
                self._handle_all(self.backend.poll(self.poll_interval))
            self._drop_unstarted()
        except StopRequested as e:
            self._interrupt(e.reason)
            if self._store_failure is not None:
                raise ArtifactStoreError(
                    f"{self._store_failure}; the study stopped, and its trials in flight run again on resume, "
                    f"each from its last checkpoint. Fix the artifact {self._store_to_fix()}; or pass --artifacts "
                    "with another store, where trials start from "
                    f"epoch 1), then `hpsearch resume {shlex.quote(self.spec.name)}`"
                ) from None
            raise Interrupted(
                f"interrupted ({e.reason}); {self._done}/{budget} trials done. "
                f"Continue with `hpsearch resume {shlex.quote(self.spec.name)}`"
            ) from None
        except KeyboardInterrupt:  # forced: in-flight trials stay RUNNING; the resume re-runs them
            self.backend.cancel_all()
            raise Interrupted(
                f"interrupted at once ({self.stop.reason or 'Ctrl-C'}, twice); {self._done}/{budget} trials done; "
                f"trials in flight run again on resume. Continue with `hpsearch resume {shlex.quote(self.spec.name)}`"
            ) from None

    def _lanes_in_use(self) -> int:
        return len({r.task for r in self._running.values()})

    def _can_ask(self) -> bool:
        return self._done + len(self._running) + len(self._ready) < self.spec.budget

    def _dispatch(self) -> None:
        """Start one task: ask trials until the pool of ready ones is full, then submit the largest
        group of them that can share a stack (one trial when ``stack_trials`` is 1)."""
        pool = 1 if self.stack_trials == 1 else self.stack_trials * self.backend.capacity
        # ... and a few more while the re-runs of an interrupted stack are not all in it (they go on together)
        while (len(self._ready) < pool + min(self._missing_members(), self.stack_trials)) and self._can_ask():
            self._ready.append(self._prepare(self._ask()))
        group = self._pick()
        self._plan(group)
        self._tasks += 1
        for run in group:
            self._ready.remove(run)
            run.task, run.stacked = self._tasks, len(group) > 1
            self._running[run.job.key] = run
        if len(group) == 1:
            self.backend.submit(group[0].job)
        else:
            self.backend.submit_stack([run.job for run in group])
        for run in group:
            self.callbacks.on_trial_start(run.job.number, run.job.params)

    def _prepare(self, trial: optuna.Trial) -> _Running:
        attrs = self._db(lambda: trial.user_attrs)
        seed = int(attrs.get(TrialAttr.SEED, trial_seed(self.spec.seed, trial.number)))
        new: dict[str, Any] = {} if TrialAttr.SEED in attrs else {TrialAttr.SEED: seed}
        if new:  # recorded before the trial runs
            self._db(lambda: set_trial_user_attrs(self._store, trial_id_of(trial), new))
        plan, resumable = None, False
        ckpt, slot = attrs.get(TrialAttr.CHECKPOINT), attrs.get(TrialAttr.CHECKPOINT_SLOT)
        if self.checkpoints is not None and ckpt is not None:
            # a re-run keeps the checkpoint id of the run it continues (set by _enqueue_retry); a new
            # trial's is chosen when it is submitted (_plan), once its stack is known
            plan = self._checkpoint_plan(ckpt, rerun=TrialAttr.RETRY_OF in attrs)
            resumable = plan.rerun and bool(checkpoint_files(self.checkpoints, ckpt))
        r = self.spec.resources
        job = TrialJob(
            key=f"{trial.number}.{attrs.get(TrialAttr.ATTEMPT, 0)}",
            number=trial.number,
            params=dict(trial.params),
            seed=seed,
            attempt=int(attrs.get(TrialAttr.ATTEMPT, 0)),
            gpu_fraction=r.gpus_per_trial if 0 < r.gpus_per_trial < 1 else None,
            checkpoint=plan,
        )
        leftover = ckpt if self.checkpoints is None else None
        return _Running(trial, job, alone=bool(attrs.get(TrialAttr.ALONE, False)), failures=_failures(attrs),
                        leftover=leftover, slot=None if slot is None else (int(slot[0]), int(slot[1])),
                        resumable=resumable)

    def _checkpoint_plan(self, ckpt: str, *, rerun: bool) -> CheckpointPlan:
        assert self.checkpoints is not None
        c = self.spec.checkpoint
        return CheckpointPlan(self.checkpoints, ckpt, every_epochs=c.every_epochs, every_s=c.every_s,
                              rerun=rerun, final=c.keep_best)

    def _resumed_stacks(self) -> dict[str, list[_Running]]:
        """The ready re-runs of interrupted stacks that go on from their checkpoint, by checkpoint id."""
        out: dict[str, list[_Running]] = {}
        for run in self._ready:
            if run.resumable and run.slot is not None and not run.alone and self.stack_trials > 1:
                assert run.job.checkpoint is not None
                out.setdefault(run.job.checkpoint.artifact_id, []).append(run)
        return out

    @staticmethod
    def _complete(members: list[_Running]) -> bool:
        """Whether ``members`` are every member of their stack, once each."""
        slots = [r.slot for r in members]
        if None in slots:
            return False
        n = slots[0][1]  # type: ignore[index]
        return sorted(slots) == [(i, n) for i in range(n)]  # type: ignore[type-var]

    def _missing_members(self) -> int:
        """Members of interrupted stacks (re-runs that go on from its checkpoint) not yet asked."""
        return sum(max(0, g[0].slot[1] - len(g)) for g in self._resumed_stacks().values()  # type: ignore[index]
                   if not self._complete(g))

    def _plan(self, group: list[_Running]) -> None:
        """Set the checkpoint ``group`` (one task) writes, and record it on its trials before they run
        (a worker writes only where the database says).

        The re-runs of a whole interrupted stack, in its order, go on from its checkpoint; any other
        group of several trials gets a new one, each member recording its slot; a single trial keeps
        its own (a new one for a new trial, or for a stack's member that now runs alone). A stack's
        checkpoint that no trial goes on from is deleted."""
        if self.checkpoints is None:
            return
        ids = {r.job.checkpoint.artifact_id for r in group if r.job.checkpoint is not None}
        if len(group) > 1 and len(ids) == 1 and all(r.resumable for r in group) and self._complete(group):
            return  # an interrupted stack, again: its members' plans are its checkpoint's already
        if len(group) == 1 and group[0].slot is None and group[0].job.checkpoint is not None:
            return  # a trial's own checkpoint
        ckpt = f"checkpoint-{uuid.uuid4().hex}"
        for i, run in enumerate(group):
            if run.resumable:
                self.callbacks.on_message(
                    f"trial {run.job.number} starts from epoch 1: its checkpoint holds the stack of trials it ran "
                    "in, which does not run again as one")
            attrs: dict[str, Any] = {TrialAttr.CHECKPOINT: ckpt}
            if len(group) > 1 or run.slot is not None:  # (a stack's member re-run alone: no slot now)
                attrs[TrialAttr.CHECKPOINT_SLOT] = [i, len(group)] if len(group) > 1 else None
            self._db(lambda run=run, attrs=attrs: set_trial_user_attrs(self._store, trial_id_of(run.trial), attrs))
            run.slot = (i, len(group)) if len(group) > 1 else None
            run.resumable = False
            run.job = dataclasses.replace(run.job, checkpoint=self._checkpoint_plan(ckpt, rerun=False))
        for old in ids:
            self._release(old)

    def _release(self, ckpt: str) -> None:
        """Delete checkpoint ``ckpt``'s files unless a trial of this run writes it, or it is the kept one."""
        if self._artifacts is None or ckpt == self._kept:
            return
        if any(self._checkpoint_of(r) == ckpt for r in (*self._running.values(), *self._ready)):
            return
        remove_checkpoints(self._artifacts, ckpt)

    def _pick(self) -> list[_Running]:
        """The re-runs of an interrupted stack, all of them, in its order (they go on from its
        checkpoint); else the largest group of ready trials with one stack key (at most
        ``stack_trials``; the earliest asked wins a tie), unless the earliest asked trial was already
        passed over ``_MAX_PASSED`` times: then its group, so no trial waits for ever."""
        complete = {ckpt for ckpt, g in self._resumed_stacks().items() if self._complete(g)}
        groups: dict[Any, list[_Running]] = {}
        for run in self._ready:
            ckpt = run.job.checkpoint.artifact_id if run.job.checkpoint is not None else None
            groups.setdefault(("resumed", ckpt) if ckpt in complete else self._stack_key(run), []).append(run)
        for key, g in groups.items():
            if key[0] == "resumed":
                group = sorted(g, key=lambda r: r.slot)  # type: ignore[arg-type, return-value]
                for run in self._ready:
                    if run not in group:
                        run.passed += 1
                return group
        oldest = self._ready[0]
        if oldest.passed >= _MAX_PASSED:
            best = groups[self._stack_key(oldest)]
        else:
            best = max(groups.values(), key=lambda g: min(len(g), self.stack_trials))
        group = best[: self.stack_trials]
        for run in self._ready:
            if run not in group:
                run.passed += 1
        return group

    def _stack_key(self, run: _Running) -> Any:
        if self.stack_trials == 1 or run.alone or (run.resumable and run.slot is None):
            return ("alone", run.job.key)  # (a re-run that goes on from its own checkpoint)
        try:
            hp = resolve_hyperparams(self.spec.settings, run.job.params)
        except ValueError:  # invalid params: it runs (and fails with the reason) alone
            return ("alone", run.job.key)
        if hp.factory is not None:  # user models train one configuration per stack
            return ("alone", run.job.key)
        return stack_key(hp)

    def _ask(self) -> optuna.Trial:
        """``study.ask``, safe to repeat: a storage call retried after its first attempt committed
        (connection lost before the reply) adopts the trial that attempt created (or took from
        the queue) instead of creating a second one that would stay RUNNING forever."""
        attempts = 0

        def complete(trial_id: int) -> optuna.Trial:
            trial = optuna.Trial(self.study, trial_id)  # the sampler's before_trial (grid point) if not done
            for name, dist in self._dists.items():
                suggest(trial, name, dist)  # keeps a value already set
            return trial

        def ask() -> optuna.Trial:
            nonlocal attempts
            attempts += 1
            if self._unstarted:  # created by a run that stopped before it ran it
                trial = complete(self._unstarted[0])
                self._unstarted.pop(0)
                return trial
            if attempts > 1:
                ours = {r.trial.number for r in [*self._running.values(), *self._ready]}
                strays = [t for t in self._store.get_all_trials(
                    self._sid, deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in ours]
                if strays:
                    return complete(trial_id_of(min(strays, key=lambda t: t.number)))
            return self.study.ask(self._dists)

        return self._db(ask)

    # -- events ------------------------------------------------------------------------------------
    def _handle_all(self, events: list[Report | Finished | Failed]) -> None:
        """Handle one poll's events: each trial's reports first (one write per trial), then the rest.

        A backend delivers a job's reports before its outcome, so recording every report first
        keeps that order for each trial.
        """
        reports: dict[str, list[Report]] = {}
        for ev in events:
            if isinstance(ev, Report):
                reports.setdefault(ev.key, []).append(ev)
        for key, evs in reports.items():
            run = self._running.get(key)
            if run is not None:
                self._on_reports(run, evs)
        for ev in events:
            if not isinstance(ev, Report):
                self._handle(ev)

    def _handle(self, ev: Finished | Failed) -> None:
        run = self._running.get(ev.key)
        if run is None:  # a late event of a trial already told (e.g. stopped)
            return
        if isinstance(ev, Finished):
            assert isinstance(ev.result, TrialResult)
            self._on_finished(run, ev)
        else:
            self._on_failed(run, ev)

    def _on_reports(self, run: _Running, evs: list[Report]) -> None:
        """Store a trial's new epoch values in one transaction, asking the pruner at each new step.

        Several epochs may arrive in one poll; each is judged in order, as a plain Optuna loop
        would (``trial.report(v, step); trial.should_prune()``), and values after the step that
        pruned the trial are not recorded.
        """
        if run.pruned:  # the worker learns it at an epoch boundary; record nothing after the prune
            return
        values: dict[int, float] = {}
        for ev in evs:
            step = ev.report.epoch
            if step <= run.last_step:  # a re-executed task (worker crash) repeats epochs: keep the first
                continue
            run.last_step = step
            value = ev.report.value(self.spec.metric)
            if math.isfinite(value):
                values[step] = value
        if not values:
            return
        trial_id = trial_id_of(run.trial)
        storage = self._store
        pruned_at = self._pruned_at(run, values) if self.spec.pruner.type != "none" else None
        if pruned_at is not None:
            values = {s: v for s, v in values.items() if s <= pruned_at}
        self._db(lambda: set_trial_intermediate_values(storage, trial_id, values))
        if pruned_at is not None:
            run.pruned = True
            self.backend.stop(run.job.key)

    def _pruned_at(self, run: _Running, values: dict[int, float]) -> int | None:
        """The first of the new steps in ``values`` (ascending) at which the pruner prunes, or None.

        The pruner sees, per step, a copy of the stored trial holding the values up to that step:
        one read of the trial, no write per step.
        """
        storage = self._store
        trial_id = trial_id_of(run.trial)
        stored: FrozenTrial = self._db(lambda: storage.get_trial(trial_id))
        # successive halving and hyperband keep a trial's rungs in its system attrs, written at the
        # step that completes one; the next step must see them, as Trial.should_prune would
        rungs = self.spec.pruner.type in ("successive_halving", "hyperband")
        seen = dict(stored.intermediate_values)
        for i, (step, value) in enumerate(values.items()):
            seen[step] = value
            trial = copy.copy(stored)
            trial.intermediate_values = dict(seen)
            if rungs and i > 0:
                trial.system_attrs = self._db(lambda: storage.get_trial_system_attrs(trial_id))
            prune = self._db(lambda t=trial: self.study.pruner.prune(self.study, t))
            # at max_epochs the trial has trained every epoch: pruning it would only throw its full
            # result away (for best-trial selection and the sampler), so it finishes COMPLETE
            if prune and step < self.spec.training.max_epochs:
                return step
        return None

    def _on_finished(self, run: _Running, ev: Finished) -> None:
        res = ev.result
        assert isinstance(res, TrialResult)
        metric = self.spec.metric
        scores = [float(s) for s in res.scores(metric)]
        attrs: dict[str, Any] = {
            TrialAttr.FOLD_SCORES: scores,
            # a diverged fold's nan/inf score fails the trial below; statistics.pstdev cannot take it
            TrialAttr.VALUE_STD: float(statistics.pstdev(scores)) if scores and all(map(math.isfinite, scores))
            else (math.nan if scores else 0.0),
            TrialAttr.FOLD_EPOCHS: [int(f.best_epoch) for f in res.folds],
            TrialAttr.EPOCHS: int(res.epochs_run),
            TrialAttr.DURATION_S: round(float(res.duration_s), 4),
            TrialAttr.NODE: ev.node,
            TrialAttr.NODE_ID: ev.node_id,
            TrialAttr.WORKER_START: ev.started_at,
            TrialAttr.WORKER_END: ev.finished_at,
            TrialAttr.DEVICE: res.device,
            TrialAttr.TRAIN_PATH: res.train_path,
            TrialAttr.STACK_SIZE: int(res.stack_size),
            TrialAttr.CURVES: {k: [[round(float(x), 6) for x in c] for c in v] for k, v in res.curves.items()},
            TrialAttr.RESUMED_FROM_EPOCH: res.resumed_from_epoch,
        }
        for note in res.messages:  # a checkpoint not used or not written: the trial itself is fine
            self.callbacks.on_message(f"trial {run.job.number}: {note}")
        if res.resumed_from_epoch is not None:
            self.callbacks.on_message(f"trial {run.job.number} went on from its checkpoint at epoch "
                                      f"{res.resumed_from_epoch}")
        value = float(sum(scores) / len(scores)) if scores else math.nan
        if run.pruned or res.stopped_by_report:
            self._finish(run, TrialState.PRUNED, None, attrs)
        elif not math.isfinite(value):
            attrs[TrialAttr.FAIL_REASON] = f"{metric} is {value} (training diverged); lower the learning rate range"
            self._finish(run, TrialState.FAIL, None, attrs)
        else:
            self._finish(run, TrialState.COMPLETE, value, attrs)

    def _on_failed(self, run: _Running, ev: Failed) -> None:
        if ev.kind == "store":
            # The artifact store refused the trial's checkpoint (after the worker's retries): not the
            # trial's failure. It is recorded as a stop records it (FAIL, re-run queued with its
            # checkpoint id, its own failures unchanged) and the run stops through the stop token:
            # the other trials in flight are recorded the same way, and run() raises ArtifactStoreError.
            self._store_failure = f"trial {run.job.number}: {ev.reason}"
            reason = f"stopped: the artifact store failed ({ev.reason}); re-run on resume from its last checkpoint"
            self._finish(run, TrialState.FAIL, None, {TrialAttr.FAIL_REASON: reason}, retry=True, alone=run.alone)
            self.stop.set("the artifact directory cannot be written")
            return
        if ev.kind == "oom" and not run.stacked:
            # Out of memory alone: it would fail again, so it is not re-run. Optuna's samplers ignore
            # FAIL trials and would propose the configuration again; a PRUNED trial ranks below every
            # finished one, so TPE learns to avoid it (the idiom Optuna's maintainers give,
            # optuna/optuna#3472). The reason stays in fail_reason, with oom=True.
            self._finish(run, TrialState.PRUNED, None, {TrialAttr.FAIL_REASON: ev.reason, TrialAttr.OOM: True})
            return
        # A stack that failed (even out of memory) re-runs each of its trials alone, whatever
        # retries.max_retries says, and the failure does not count as the trial's: it may be a
        # stack-mate's. A trial that failed alone is retried while it has failed fewer than
        # max_retries times; its re-runs stay alone.
        retry = run.stacked or (ev.kind != "oom" and run.failures < self.spec.retries.max_retries)
        attrs: dict[str, Any] = {TrialAttr.FAIL_REASON: ev.reason}
        if retry:
            alone = " alone" if run.stacked else ""
            self.callbacks.on_message(f"trial {run.job.number} failed ({ev.reason}); running it again{alone}")
        self._finish(run, TrialState.FAIL, None, attrs, retry=retry, alone=run.stacked or run.alone,
                     failures=run.failures + (0 if run.stacked else 1))

    def _finish(
        self,
        run: _Running,
        state: TrialState,
        value: float | None,
        attrs: dict[str, Any],
        *,
        retry: bool = False,
        alone: bool = False,
        failures: int | None = None,
        notify: bool = True,
    ) -> None:
        """Record a trial's outcome; with ``retry``, queue its re-run (``alone``: in no stack;
        ``failures``: the re-run's count of own failures, this run's when None).
        ``notify=False`` skips ``on_trial_end`` (a trial that never started)."""
        trial = run.trial
        if retry:
            failures = run.failures if failures is None else failures
            attrs[TrialAttr.WILL_RETRY] = True
            attrs[TrialAttr.RERUN_FAILURES] = failures  # so that a recovery that queues the re-run
            if alone:  # counts the same failures and queues it alone too
                attrs[TrialAttr.RERUN_ALONE] = True
            self._enqueue_retry(trial.number, run.job.params, run.job.seed, run.job.attempt,
                                failures=failures, alone=alone, checkpoint=self._checkpoint_of(run), slot=run.slot)
        self._db(lambda: set_trial_user_attrs(self._store, trial_id_of(trial), attrs))
        self._tell(trial.number, state, value)
        self._running.pop(run.job.key, None)
        if not retry:
            self._done += 1
            ckpt = self._checkpoint_of(run)
            if ckpt is not None and state == TrialState.COMPLETE:
                self._keep_if_best(run, ckpt)
            if ckpt is not None:  # finished for good: of no more use (unless kept, or its stack's still recording)
                self._release(ckpt)
        if notify:
            frozen = self._db(lambda: self._store.get_trial(trial_id_of(trial)))
            self.callbacks.on_trial_end(frozen, self._done, self.spec.budget)

    def _keep_if_best(self, run: _Running, ckpt: str) -> None:
        """``checkpoint.keep_best``: keep ``run``'s checkpoint if it is the study's best trial. Its place
        is recorded on the study (``hpsearch_kept_checkpoint``; with the trial's slot when the file is
        its stack's) first, then the previous best's files are deleted: at most one trial's (or
        stack's) checkpoint is kept besides those of the trials in flight."""
        if self.checkpoints is None or not self.spec.checkpoint.keep_best or run.job.checkpoint is None:
            return
        try:
            best = self._db(lambda: self.study.best_trial)
        except ValueError:
            return
        if best.number != run.trial.number:
            return
        previous = self._db(lambda: self.study.user_attrs).get(StudyAttr.KEPT_CHECKPOINT)
        kept: dict[str, Any] = {"trial": run.trial.number, "checkpoint": ckpt, "directory": self.checkpoints}
        if run.slot is not None:
            kept["slot"] = list(run.slot)
        self._db(lambda: self.study.set_user_attr(StudyAttr.KEPT_CHECKPOINT, kept))
        self._kept = ckpt
        if previous and previous.get("checkpoint") != ckpt:
            directory = str(previous.get("directory") or self.checkpoints)
            if directory == self._artifacts:
                self._release(str(previous["checkpoint"]))  # (a stack's whose other member still records)
            else:
                remove_checkpoints(directory, str(previous["checkpoint"]))

    def _store_to_fix(self) -> str:
        """The failed artifact store, and what to look at, by its kind."""
        if self.checkpoints is not None and is_object_store(self.checkpoints):
            return f"store {self.checkpoints!r} (the endpoint, the bucket, the AWS credentials"
        return f"directory {self.checkpoints!r} (its permissions, free space, the mount"

    def _checkpoint_of(self, run: _Running) -> str | None:
        """The id of the checkpoint ``run`` writes, or holds from an earlier run (checkpoints now off)."""
        return run.leftover if run.job.checkpoint is None else run.job.checkpoint.artifact_id

    def _tell(self, number: int, state: TrialState, value: float | None) -> None:
        def tell() -> None:
            try:  # skip_if_finished: a retried tell whose first attempt was committed
                self.study.tell(number, value if state == TrialState.COMPLETE else None, state=state,
                                skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass

        self._db(tell)

    def _enqueue_retry(
        self, number: int, params: dict[str, Any], seed: int, attempt: int, *, failures: int, alone: bool = False,
        checkpoint: str | None = None, slot: Any = None,
    ) -> None:
        """Queue the one re-run of trial ``number`` (``attempt`` + 1; ``failures``: its own failures
        so far; ``alone``: never in a stack with other trials; ``checkpoint``: the id of the checkpoint
        it goes on from, ``slot``: its place in the stack that checkpoint holds); a no-op if it is
        already queued (a repeated storage call, or a second Ctrl-C in the middle of recording the trial)."""

        def enqueue() -> None:
            waiting = self._store.get_all_trials(
                self._sid, deepcopy=False, states=(TrialState.WAITING,))
            if any(t.user_attrs.get(TrialAttr.RETRY_OF) == number for t in waiting):
                return
            user_attrs: dict[str, Any] = {TrialAttr.RETRY_OF: number, TrialAttr.ATTEMPT: attempt + 1,
                                          TrialAttr.FAILURES: failures, TrialAttr.SEED: seed}
            if alone:
                user_attrs[TrialAttr.ALONE] = True
            if checkpoint is not None:
                user_attrs[TrialAttr.CHECKPOINT] = checkpoint
                if slot is not None:
                    user_attrs[TrialAttr.CHECKPOINT_SLOT] = [int(slot[0]), int(slot[1])]
            self.study.enqueue_trial(params, user_attrs=user_attrs, skip_if_exists=False)

        self._db(enqueue)

    # -- recovery ----------------------------------------------------------------------------------
    def _recover(self, trials: list[FrozenTrial]) -> None:
        """Fail trials a dead orchestrator left RUNNING and make sure each gets exactly one re-run.

        Called with the lease held, so every RUNNING trial belongs to a process that is gone. A
        RUNNING trial whose parameters are not all set was being created (``study.ask`` is several
        writes) when that process died, so it never ran: it is completed and run as the next trial
        instead (a grid point keeps its trial); a re-run of it with partial params would not even start.
        """
        retried = {t.user_attrs.get(TrialAttr.RETRY_OF) for t in trials} - {None}
        for t in trials:
            needs_retry = t.number not in retried
            # a trial killed before its seed was stored never ran: its re-run gets the seed it would have had
            seed = int(t.user_attrs.get(TrialAttr.SEED, trial_seed(self.spec.seed, t.number)))
            params = self._full_params(t)
            alone = bool(t.user_attrs.get(TrialAttr.ALONE) or t.user_attrs.get(TrialAttr.RERUN_ALONE))
            attempt = int(t.user_attrs.get(TrialAttr.ATTEMPT, 0))
            ckpt, slot = t.user_attrs.get(TrialAttr.CHECKPOINT), t.user_attrs.get(TrialAttr.CHECKPOINT_SLOT)
            if t.state == TrialState.RUNNING and params is None:
                self._unstarted.append(trial_id_of(t))
                self.callbacks.on_message(f"trial {t.number} was being created when a run stopped; running it now")
            elif t.state == TrialState.RUNNING:
                reason = "the orchestrator stopped while this trial ran (process killed or machine lost)"
                if needs_retry:  # the orchestrator's end is not the trial's failure
                    self._enqueue_retry(t.number, params, seed, attempt, failures=_failures(t.user_attrs),
                                        alone=alone, checkpoint=ckpt, slot=slot)
                # its training time is unknown: the span until this recovery would count the downtime
                attrs = {TrialAttr.FAIL_REASON: reason, TrialAttr.WILL_RETRY: True, TrialAttr.DURATION_S: None}
                self._db(lambda t=t, attrs=attrs: set_trial_user_attrs(self._store, trial_id_of(t), attrs))
                self._tell(t.number, TrialState.FAIL, None)
                self.callbacks.on_message(f"trial {t.number} was left running by a stopped run; running it again")
            elif t.state == TrialState.FAIL and t.user_attrs.get(TrialAttr.WILL_RETRY) and needs_retry and params:
                # failed and marked for retry, but the process died before enqueueing the re-run
                failures = int(t.user_attrs.get(TrialAttr.RERUN_FAILURES, _failures(t.user_attrs) + 1))
                self._enqueue_retry(t.number, params, seed, attempt, failures=failures, alone=alone, checkpoint=ckpt,
                                    slot=slot)

    def _full_params(self, t: FrozenTrial) -> dict[str, Any] | None:
        """The trial's params if every parameter is set (it may have run), else None (it never ran;
        a queued re-run taken from the queue gets its params from the queue when it is completed)."""
        return dict(t.params) if all(name in t.params for name in self._dists) else None

    def _drop_unstarted(self) -> None:
        """Trials created but never started that the budget no longer needs (it was lowered)."""
        reason = "created when a run stopped, never started; not needed for the budget"
        for trial_id in self._unstarted:
            number = self._db(lambda trial_id=trial_id: self._store.get_trial(trial_id).number)
            self._db(lambda trial_id=trial_id: set_trial_user_attrs(
                self._store, trial_id, {TrialAttr.FAIL_REASON: reason}))
            self._tell(number, TrialState.FAIL, None)
        self._unstarted.clear()

    def _interrupt(self, why: str) -> None:
        """A stop: cancel in-flight trials and record them so a resume re-runs them."""
        self.stop.draining = True  # these writes are retried as usual (a second Ctrl-C still cuts them)
        self.backend.cancel_all()
        ready, self._ready = self._ready, []
        waiting: list[int] = []
        for run in [*self._running.values(), *ready]:
            state = self._db(lambda run=run: self._store.get_trial(trial_id_of(run.trial)).state)
            if state.is_finished():  # told just before a forced (second) Ctrl-C
                self._running.pop(run.job.key, None)
                continue
            started = run.task is not None
            what = "while running" if started else "before it started"
            reason = f"interrupted ({why}) {what}; re-run on resume"
            # an interrupt is not the trial's failure: its re-run keeps the retries it had
            self._finish(run, TrialState.FAIL, None, {TrialAttr.FAIL_REASON: reason}, retry=True, alone=run.alone,
                         notify=started)
            if not started:
                waiting.append(run.job.number)
        if waiting:  # asked, waiting to fill a stack: never started, so no on_trial_start/on_trial_end
            names = ", ".join(map(str, waiting))
            self.callbacks.on_message(f"trial{'s' if len(waiting) > 1 else ''} {names} had not started; "
                                      "each runs once on resume")

    # -- final refit -------------------------------------------------------------------------------
    def refit_timeout_s(self) -> float:
        """How long the final refit may take: ten times the longest trial (a trial trains every fold,
        the refit one network), at least 10 minutes. A refit that takes longer is recorded failed."""
        trials = self._db(lambda: self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        longest = max((float(t.user_attrs.get(TrialAttr.DURATION_S) or 0.0) for t in trials), default=0.0)
        return max(_MIN_REFIT_TIMEOUT_S, 10.0 * longest)

    def refit_best(self) -> dict[str, Any] | None:
        """Refit the best configuration on all non-test data and score it once on the test split.

        ``refit.epochs: cv_median`` (default) trains every non-test row for the median of the best
        trial's ``fold_epochs`` (:func:`~search._refit.cv_epochs`); ``early_stopping`` trains on an inner split.

        Stored as the study attribute ``test_result``; skipped if already stored for this trial. A
        refit that fails, or outlasts :meth:`refit_timeout_s`, is recorded as ``hpsearch_refit_error``
        (``{"trial", "reason"}``) and not tried again for that trial: the search itself is finished,
        and a resume does not start it over. Returns None then, or when no trial completed.
        """
        try:
            best = self._db(lambda: self.study.best_trial)
        except ValueError:
            return None  # no COMPLETE trial
        attrs = self._db(lambda: self.study.user_attrs)
        stored = attrs.get(StudyAttr.TEST_RESULT)
        if stored and stored.get("trial") == best.number:
            return stored
        failed = attrs.get(StudyAttr.REFIT_ERROR)
        if failed and failed.get("trial") == best.number:
            return None
        self.callbacks.on_refit_start(best.number)
        fold_epochs = [int(e) for e in best.user_attrs.get(TrialAttr.FOLD_EPOCHS) or []]
        chosen = cv_epochs(fold_epochs, int(best.user_attrs.get(TrialAttr.EPOCHS) or self.spec.training.max_epochs))
        mode = self.spec.refit.epochs
        job = TrialJob(key=f"refit.{best.number}", number=best.number, params=dict(best.params),
                       seed=int(best.user_attrs.get(TrialAttr.SEED, trial_seed(self.spec.seed, best.number))),
                       kind="refit", epochs=chosen if mode == "cv_median" else None)
        timeout = self.refit_timeout_s()
        now = getattr(self.backend, "now", time.monotonic)
        deadline = now() + timeout
        self.backend.submit(job)
        while True:
            self.stop.check()
            if now() > deadline:
                self.backend.cancel_all()
                shown = f"{timeout:.0f}" if timeout >= 10 else f"{timeout:.1f}"
                return self._refit_failed(best.number, f"it did not finish within {shown} s "
                                                       "(ten times the longest trial, at least 10 minutes)")
            for ev in self.backend.poll(self.poll_interval):
                if ev.key != job.key or isinstance(ev, Report):
                    continue
                if isinstance(ev, Failed):
                    return self._refit_failed(best.number, ev.reason)
                res = ev.result
                assert isinstance(res, TestResult)
                out = {
                    **stored_test_result(best.number, res, self.spec.metric),
                    "refit_mode": mode,
                    "fold_epochs": fold_epochs,
                    "cv_epochs": chosen,
                    "refit_epochs": int(res.epochs_run),
                    "train_rows": int(res.train_rows),
                    "val_rows": int(res.val_rows),
                }
                if self.models is not None and res.state_dict:
                    out["model_artifact"] = self._save_model(best, res, out)
                    out["model_store"] = self.models.path
                self._db(lambda out=out: self.study.set_user_attr(StudyAttr.TEST_RESULT, out))
                return out

    def _save_model(self, best: FrozenTrial, res: TestResult, test: dict[str, Any]) -> str:
        """Upload the refit model to the artifact store and record it on the best trial (as
        ``optuna.artifacts.upload_artifact`` does, so optuna-dashboard lists it); returns its id.

        The id is chosen before the upload, so a retried database write records the same artifact.
        A store that cannot be written stops the run (exit 3) before ``test_result`` is stored, so
        that a resume refits and saves again.
        """
        assert self.models is not None and res.state_dict is not None
        artifact_id = str(uuid.uuid4())
        meta = {
            "study": self.spec.name,
            "trial": best.number,
            "spec": self.spec.to_dict(),
            "params": dict(best.params),
            **self.models.model_info,
            "feature_mean": list(res.feature_mean),
            "feature_scale": list(res.feature_scale),
            "task": self.spec.task,
            "target_mean": res.target_mean,
            "target_scale": res.target_scale,
            "test_result": dict(test),
            "hpsearch_version": __version__,
        }
        try:
            self.models.write(artifact_id, pack_model(meta, res.state_dict))
        except ArtifactStoreError as e:
            raise ArtifactStoreError(f"{e}; the search is finished: fix the artifact store (or pass --artifacts "
                                     f"with another), then `hpsearch resume {shlex.quote(self.spec.name)}` refits and "
                                     "saves the model") from None
        record = {"artifact_id": artifact_id, "filename": f"model-trial-{best.number}.pt",
                  "mimetype": "application/zip", "encoding": None}
        self._db(lambda: record_trial_artifact(self._store, trial_id_of(best), artifact_id, record))
        self.callbacks.on_message(f"saved the model of trial {best.number} to {self.models.path} "
                                  f"(artifact {artifact_id})")
        return artifact_id

    def _refit_failed(self, number: int, reason: str) -> None:
        self._db(lambda: self.study.set_user_attr(StudyAttr.REFIT_ERROR, {"trial": number, "reason": reason}))
        self.callbacks.on_message(f"the final refit of trial {number} failed ({reason}); the search is finished "
                                  "and its best trial stands, without a held-out test score")


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def stored_test_result(number: int, res: TestResult, metric: str) -> dict[str, Any]:
    """The ``test_result`` study attribute: ``test_score`` is the study ``metric`` on the test split,
    ``metric`` its name (``test_...``), and every metric of the task is there as ``test_<name>``
    (``test_accuracy`` and ``test_loss`` always: ``null`` for a regression's accuracy)."""
    out: dict[str, Any] = {
        "trial": number,
        "test_accuracy": _finite_or_none(res.test_accuracy),
        "test_loss": float(res.test_loss),
        "test_score": float(res.score(metric)),
        "metric": metric.replace("val_", "test_"),
        "epochs": int(res.best_epoch),
    }
    for name, value in res.metrics.items():
        out.setdefault(name.replace("val_", "test_"), _finite_or_none(value))
    return out
