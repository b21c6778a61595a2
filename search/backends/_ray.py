"""Ray backend: each job is a Ray task; metrics and stop requests travel through one small actor.

Workers need no database credentials: a task returns its result through Ray, and per-epoch reports
go to a :class:`~search.backends._ray_control.Control` actor on the driver's node, whose reply tells
the worker whether to stop.
The dataset is put in the object store once and passed by reference to every task.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import pickle
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from trials import Dataset, EpochReport, TrialResult, TrialSettings

from ._base import Backend
from ._events import Event, Failed, Finished, Report, TrialJob
from ._ray_control import Control
from ._ray_folds import FoldGroup
from ._worker import Outcome, WorkerFn, execute, train_job

__all__ = ["RayBackend", "ResourceError"]

_CANCEL_SETTLE_S = 3.0  # at most this long at close() for cancelled (force-killed) tasks to resolve

# How long one long poll of the control actor (Control.wait) waits for a report before it returns empty,
# and how long it then lingers to batch reports arriving together (pruning waits at most this long).
_REPORT_WAIT_S = 5.0
_REPORT_LINGER_S = 0.05

_log = logging.getLogger(__name__)


class ResourceError(RuntimeError):
    """The Ray cluster can never satisfy what a trial asks for."""


class _Reporter:
    """A worker's side of the control actor: the ``report`` callback of one job.

    Reports are pickled here and unpickled by the driver (the control actor never imports trials,
    so neither torch). A call is not waited for: with epochs of a few tens of milliseconds, a
    blocking call per epoch cost a small trial 20-30 %, a non-blocking one 5-6 %
    (``bench/bench_reports.py``). The stop flag is the reply to the previous call, read when the
    next epoch reports, so a prune decision takes effect one epoch boundary later than the report
    that caused it. At most one call is in flight, because an async actor does not keep one
    caller's calls in order.
    """

    def __init__(self, control: Any, key: str) -> None:
        self.control, self.key = control, key
        self._in_flight: list[Any] = []
        self._stop = False

    def __call__(self, r: EpochReport) -> bool:
        import ray

        if self._in_flight:  # its reply has normally long arrived
            self._stop = bool(ray.get(self._in_flight.pop())) or self._stop
        self._in_flight.append(self.control.report.remote(self.key, pickle.dumps(r)))
        return self._stop

    def close(self) -> None:
        """Wait until the actor has every report (before the task returns its result)."""
        import ray

        ray.get(self._in_flight)


def _remote_execute(
    ctx: tuple[WorkerFn, TrialSettings], data: Dataset, jobs: list[TrialJob], control: Any
) -> list[Outcome]:
    """One Ray task: one job, or several trained as one stack; one reporter per job."""
    import ray

    fn, settings = ctx
    reporters = {j.key: _Reporter(control, j.key) for j in jobs}
    outcomes = execute(
        fn, data, settings, jobs, lambda key, r: reporters[key](r), ray.get_runtime_context().get_node_id()
    )
    for reporter in reporters.values():
        reporter.close()  # every report reaches the actor before the result reaches the driver
    return outcomes


def _warm_up() -> None:
    """Import what a trial needs (torch, hpsearch's training code) in a worker before its first trial.

    Explicit: ``import trials`` alone no longer imports torch (its training entry points load on
    first use), so importing this module would not be enough.
    """
    import trials._trial  # noqa: F401


@contextmanager
def _without_rays_sigterm_handler() -> Iterator[None]:
    """Around ``ray.init``: Ray installs its own SIGTERM handler in the driver (``sys.exit(15)``), which
    would replace the run's (``search._stop``: SIGTERM stops a run like Ctrl-C). It is not installed."""
    ray_utils = importlib.import_module("ray._private.utils")
    set_sigterm_handler = getattr(ray_utils, "set_sigterm_handler", None)
    if set_sigterm_handler is not None:
        ray_utils.set_sigterm_handler = lambda handler: None  # type: ignore[assignment]
    try:
        yield
    finally:
        if set_sigterm_handler is not None:
            ray_utils.set_sigterm_handler = set_sigterm_handler  # type: ignore[assignment]


def _child_pids() -> set[int]:
    """The live child processes of this process (Linux ``/proc``; an empty set where it cannot tell)."""
    me, out = os.getpid(), set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
                state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == me and state != b"Z":
            out.add(int(entry))
    return out


def _kill_new_children(before: set[int]) -> None:
    """SIGKILL the children started since ``before`` was taken: what an interrupted ``ray.init`` had
    started (its GCS server, raylet) before Ray knew of it, which ``ray.shutdown()`` cannot stop."""
    for pid in _child_pids() - before:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone meanwhile
            pass


class RayBackend(Backend):
    """Runs each job as a Ray task with the study's per-trial resources.

    Parameters
    ----------
    address:
        Ray cluster address (``auto``, ``ray://host:10001``, ``host:6379``); ``None`` uses
        ``RAY_ADDRESS`` if set, else starts a local Ray in this process (no dashboard, quiet logs,
        bounded object store) and shuts it down on :meth:`close`.
    cpus_per_trial, gpus_per_trial:
        Ray resources of one trial (fractions allowed: ``gpus_per_trial=0.25`` packs 4 per GPU).
    max_concurrent:
        Trials at once; ``None`` fits as many as the cluster's resources allow.
    worker_crash_retries:
        Ray re-executions of a task whose worker process or node died (same trial, same number).
    parallel_folds, n_folds:
        Run the folds of one trial as separate tasks (so one trial may use several GPUs).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        cpus_per_trial: float = 1.0,
        gpus_per_trial: float = 0.0,
        max_concurrent: int | None = None,
        worker_crash_retries: int = 3,
        parallel_folds: bool = False,
        n_folds: int = 1,
        num_cpus: int | None = None,
        object_store_mb: int = 256,
    ) -> None:
        self.address = address
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self.max_concurrent = max_concurrent
        self.worker_crash_retries = worker_crash_retries
        self.parallel_folds = parallel_folds
        self.n_folds = n_folds
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to (or start) Ray, check the resources, start the control actor, warm the workers.

        Called before the driver loads the data, so that Ray's processes start and the workers
        import torch while the driver prepares the study; :meth:`open` calls it if nobody did.
        A stop asked for meanwhile (Ctrl-C) is seen by the caller once this returns: ``ray.init``
        is never cut in half, which could leave its GCS and raylet running with nothing to stop them.
        """
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if getattr(self, "_control", None) is not None:
            return
        self._started = False  # True: this backend connected the driver, so close() disconnects it
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if ray.is_initialized():
            gcs = getattr(ray.get_runtime_context(), "gcs_address", "") or ""
            self._where = f"Ray {gcs} (connected by the caller)".replace("  ", " ")
            if address and address != "auto" and not address.startswith("ray://") and gcs and address != gcs:
                _log.warning("Ray is already connected to %s in this process; address %s is not used", gcs, address)
        else:
            kwargs: dict[str, Any] = dict(
                include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
            )
            self._started = True  # from here on, close() shuts down what ray.init started
            children = _child_pids()
            try:
                with _without_rays_sigterm_handler():
                    if address:
                        # attach to an existing cluster: ray.shutdown() in close() only disconnects this driver
                        ray.init(address=address, **kwargs)
                        self._where = f"Ray cluster {address}"
                    else:
                        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                        ray.init(
                            address="local",  # a new local instance, never a stale one found in /tmp/ray
                            num_cpus=self.num_cpus,
                            object_store_memory=self.object_store_mb * 1024 * 1024,
                            **kwargs,
                        )
                        self._where = "local Ray"
            except BaseException:  # a forced stop (second Ctrl-C) inside ray.init: stop what it started
                try:
                    ray.shutdown()
                finally:
                    self._started = False
                    _kill_new_children(children)
                raise
        try:
            self._check_resources()
        except BaseException:
            if self._started:  # fail fast without leaving this process attached to the cluster
                ray.shutdown()
                self._started = False
            raise
        # The control actor lives on the driver's node (the node ray.init attached to: the head when
        # the driver runs there): if that node dies, the driver dies with it anyway.
        node = ray.get_runtime_context().get_node_id()
        self._control = (
            ray.remote(num_cpus=0)(Control)
            .options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            .remote()
        )
        # A trial with parallel folds runs one task per fold; the refit trains one network and asks
        # for one fold's share too, which _check_resources proved fits on a node.
        cpus, gpus = self._per_task
        self._task = ray.remote(_remote_execute).options(
            num_cpus=cpus,
            num_gpus=gpus or None,
            max_retries=self.worker_crash_retries,
            retry_exceptions=False,
        )
        # One no-op task per lane, with a trial's resources: the workers that will run the trials
        # import torch now, while the driver opens the study and loads the data.
        warm = ray.remote(_warm_up).options(num_cpus=cpus, num_gpus=gpus or None)
        self._warm_refs = [warm.remote() for _ in range(min(self.capacity * self._split, 64))]
        self._wait_ref: Any = None  # the outstanding long poll of the control actor (Control.wait)
        self._pending: dict[Any, tuple[str, ...]] = {}  # ObjectRef -> the part keys its task runs
        self._cancelled_refs: list[Any] = []  # cancelled, their failure not yet seen (see close())
        self._owner: dict[str, str] = {}  # part key -> job key
        self._groups: dict[str, FoldGroup] = {}

    def open(self, data: Dataset, settings: TrialSettings, fn: WorkerFn = train_job) -> None:
        import ray

        self.start()
        self._data_ref = ray.put(data)
        self._ctx_ref = ray.put((fn, settings))

    def close(self) -> None:
        if getattr(self, "_control", None) is None and not getattr(self, "_started", False):
            return  # start() did not get as far as Ray (e.g. interrupted while importing it)
        import ray

        if not ray.is_initialized():
            return
        if getattr(self, "_control", None) is not None:
            self.cancel_all()
            # Let Ray register the cancelled tasks' deaths before it shuts down: a death seen during
            # the shutdown printed a raw "task_manager.cc: Failed to push error to driver" line.
            cancelled, self._cancelled_refs = self._cancelled_refs, []
            if cancelled:
                ray.wait(cancelled, num_returns=len(cancelled), timeout=_CANCEL_SETTLE_S)
            # the warm-up tasks too (a stop during start-up): one still importing torch when the shutdown
            # killed its worker printed the same line (seen in CI's SIGTERM-during-start-up test)
            warm, self._warm_refs = getattr(self, "_warm_refs", []), []
            if warm:
                ray.wait(warm, num_returns=len(warm), timeout=_CANCEL_SETTLE_S)
            try:
                ray.kill(self._control)
            except Exception:  # already gone with its node
                pass
            # its outstanding long poll fails with the actor: let that too be seen before the shutdown
            if self._wait_ref is not None:
                ray.wait([self._wait_ref], timeout=_CANCEL_SETTLE_S)
                self._wait_ref = None
            self._control = None
        if getattr(self, "_started", False):
            # A driver attached to an existing cluster only disconnects; the cluster keeps running.
            ray.shutdown()
            self._started = False

    # -- resources -------------------------------------------------------------------------------
    @property
    def _split(self) -> int:
        """Ray tasks per trial: ``n_folds`` with parallel folds, else 1."""
        return self.n_folds if self.parallel_folds and self.n_folds > 1 else 1

    @property
    def _per_task(self) -> tuple[float, float]:
        """(CPUs, GPUs) one Ray task asks for."""
        return self.cpus_per_trial / self._split, self.gpus_per_trial / self._split

    def _node_resources(self) -> list[dict[str, float]]:
        import ray

        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def _check_resources(self) -> None:
        """Raise :class:`ResourceError` unless some node can run one task; compute the capacity.

        One task's CPUs and GPUs must be on the same node. The check uses the nodes alive now: an
        autoscaling cluster that would add a bigger node later is not waited for.
        """
        nodes = self._node_resources()
        total = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
        cpu, gpu = self._per_task
        per_node = ", ".join(f"{n.get('CPU', 0.0):g} CPU + {n.get('GPU', 0.0):g} GPU" for n in nodes)
        have = (
            f"the Ray cluster has {total['CPU']:g} CPUs and {total['GPU']:g} GPUs in {len(nodes)} node(s) "
            f"(per node: {per_node})"
        )
        task = (
            f" (as {self._split} fold tasks of {cpu:g} CPU + {gpu:g} GPU each, resources.parallel_folds)"
            if self._split > 1 else ""
        )

        def fits_on(n: dict[str, float]) -> bool:
            return n.get("CPU", 0.0) + 1e-9 >= cpu and n.get("GPU", 0.0) + 1e-9 >= gpu

        if gpu > 0 and not any(n.get("GPU", 0.0) + 1e-9 >= gpu for n in nodes):
            most = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
            if most == 0:
                fix = "set resources.gpus_per_trial: 0 to train on CPUs, or connect to a cluster with GPUs (--address)"
            else:
                fix = f"lower resources.gpus_per_trial to {most * self._split:g} at most "
                fix += f"(one node has at most {most:g})"
                if gpu > 1 and not self.parallel_folds:
                    fix += ", or set resources.parallel_folds: true to spread a trial's folds over several nodes"
            raise ResourceError(
                f"resources.gpus_per_trial: {self.gpus_per_trial:g} GPU per trial requested{task}, but {have}; "
                f"no node has that many: {fix}"
            )
        if not any(n.get("CPU", 0.0) + 1e-9 >= cpu for n in nodes):
            raise ResourceError(
                f"resources.cpus_per_trial: {self.cpus_per_trial:g} CPUs per trial requested{task}, but no node "
                f"has that many ({have}); lower resources.cpus_per_trial"
            )
        if not any(fits_on(n) for n in nodes):
            raise ResourceError(
                f"resources.cpus_per_trial: {self.cpus_per_trial:g} with resources.gpus_per_trial: "
                f"{self.gpus_per_trial:g} per trial requested{task}, but no single node has both ({have}); "
                "lower resources.cpus_per_trial"
            )
        fits = sum(
            min(
                math.floor(n.get("CPU", 0.0) / cpu + 1e-9),
                math.floor(n.get("GPU", 0.0) / gpu + 1e-9) if gpu else 10**9,
            )
            for n in nodes
        )
        self._fits = max(1, fits // self._split)
        self._n_nodes = len(nodes)

    def check_resources(self) -> None:
        """:class:`ResourceError` unless the cluster this process is connected to can run one task."""
        self._check_resources()

    @property
    def capacity(self) -> int:
        return self.max_concurrent or self._fits

    def describe(self) -> str:
        import ray

        res = ray.cluster_resources()
        where = getattr(self, "_where", None) or self.address or os.environ.get("RAY_ADDRESS") or "local Ray"
        nodes = getattr(self, "_n_nodes", None)
        return (
            f"{where}: {f'{nodes} node(s), ' if nodes is not None else ''}"
            f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; {self.capacity} trials at once"
        )

    # -- jobs ------------------------------------------------------------------------------------
    def submit(self, job: TrialJob) -> None:
        if job.kind == "trial" and self._split > 1:
            gpu = self._per_task[1]
            share = gpu if 0 < gpu < 1 else None  # each fold task gets 1/folds of the trial's GPUs
            parts = []
            for i in range(self.n_folds):
                part = replace(job, key=f"{job.key}/fold{i}", folds=(i,), gpu_fraction=share)
                self._launch([part], job.key)
                parts.append(part.key)
            self._groups[job.key] = FoldGroup(parts)
            return
        self._launch([job])

    @property
    def can_stack(self) -> bool:  # type: ignore[override]
        return self._split == 1  # a stack trains all folds in one task

    def submit_stack(self, jobs: Sequence[TrialJob]) -> None:
        if len(jobs) == 1:
            self.submit(jobs[0])
        elif not self.can_stack:
            raise NotImplementedError("stacked trials cannot also run their folds as separate tasks "
                                      "(resources.parallel_folds); set resources.stack_trials: 1")
        else:
            self._launch(list(jobs))

    def _launch(self, jobs: list[TrialJob], owner: str | None = None) -> None:
        """One task for ``jobs``; ``owner``: the trial a fold part belongs to (else each job owns itself)."""
        ref = self._task.remote(self._ctx_ref, self._data_ref, jobs, self._control)
        self._pending[ref] = tuple(j.key for j in jobs)
        for j in jobs:
            self._owner[j.key] = owner or j.key

    def poll(self, timeout: float) -> list[Event]:
        import ray

        # Wait for a finished task or for reports (the control actor's long poll), whichever comes first.
        if self._wait_ref is None:
            self._wait_ref = self._control.wait.remote(_REPORT_WAIT_S, _REPORT_LINGER_S)
        refs = [*self._pending, self._wait_ref]
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        reported = False
        if self._wait_ref in ready:
            reported = bool(ray.get(self._wait_ref))
            self._wait_ref = None
        finished = [ref for ref in ready if ref in self._pending]
        # A finished task's reports reached the actor before it returned: take them before its outcome.
        blobs = ray.get(self._control.drain.remote()) if reported or finished else []
        events: list[Event] = []
        for part, blob in blobs:
            events.extend(self._on_report(part, pickle.loads(blob)))
        done = []
        for ref in finished:
            parts = self._pending.pop(ref, None)
            if parts is None:  # a sibling fold of a trial whose other fold failed earlier in this loop
                continue  # (cancelled with it: the trial has its one Failed event already)
            done.extend(parts)
            for part, ev in zip(parts, self._get(ref, parts)):
                events.extend(self._on_outcome(part, ev))
        if done:
            self._control.forget.remote(done)
        return events

    def _get(self, ref: Any, parts: tuple[str, ...]) -> list[Finished | Failed | None]:
        """Each part's event from a finished task (``None``: cancelled)."""
        import ray
        from ray import exceptions as rex

        try:
            return [o.event() for o in ray.get(ref)]
        except rex.TaskCancelledError:
            return [None] * len(parts)
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.OwnerDiedError, rex.ObjectLostError) as e:
            n = self.worker_crash_retries + 1
            reason = (
                f"the Ray node or worker process running it died ({n} attempt{'s' if n > 1 else ''}; "
                f"retries.worker_crash_retries: {self.worker_crash_retries}): {type(e).__name__}"
            )
            return [Failed(p, reason, "crash", str(e)[:2000]) for p in parts]
        except rex.RayError as e:
            return [Failed(p, f"{type(e).__name__}: {str(e)[:500]}", "crash") for p in parts]

    def _on_report(self, part: str, r: EpochReport) -> list[Event]:
        key = self._owner.get(part)
        if key is None:
            return []
        group = self._groups.get(key)
        if group is None:
            return [Report(key, r)]
        return [Report(key, m) for m in group.add_report(part, r)]

    def _on_outcome(self, part: str, ev: Finished | Failed | None) -> list[Event]:
        key = self._owner.pop(part, None)
        if ev is None or key is None:
            return []
        group = self._groups.get(key)
        if group is None:
            return [ev]
        if isinstance(ev, Failed):  # one fold failed: the trial failed; stop its other folds
            self._cancel([k for k in group.parts if k != part])
            del self._groups[key]
            return [Failed(key, ev.reason, ev.kind, ev.detail)]
        assert isinstance(ev.result, TrialResult)
        out: list[Event] = [Report(key, m) for m in group.add_result(part, ev)]
        done = group.finished_event(key)
        if done is not None:
            del self._groups[key]
            out.append(done)
        return out

    def stop(self, key: str) -> None:
        group = self._groups.get(key)
        self._control.stop.remote(group.parts if group else [key])

    def _cancel(self, parts: list[str]) -> None:
        """Cancel the tasks running any of ``parts`` (fold parts run one per task)."""
        import ray

        for ref, keys in list(self._pending.items()):
            if set(keys) & set(parts):
                ray.cancel(ref, force=True)
                self._cancelled_refs.append(ref)
                del self._pending[ref]
                for part in keys:
                    self._owner.pop(part, None)

    def cancel_all(self) -> list[str]:
        keys = sorted(set(self._owner.values()))
        self._cancel([p for parts in self._pending.values() for p in parts])
        self._groups.clear()
        return keys

