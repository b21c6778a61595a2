"""RayBackend.poll's bookkeeping, with Ray's calls replaced (no cluster is started)."""

from __future__ import annotations

from typing import Any

import pytest

from search.backends import Failed, TrialJob
from search.backends._ray import RayBackend
from search.backends._ray_folds import FoldGroup
from search.backends._worker import Outcome


class _Remote:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class _Control:
    """The control actor's handle: no reports queued."""

    def __init__(self) -> None:
        self.wait = _Remote(lambda *a: "wait-ref")
        self.drain = _Remote(lambda: "drain-ref")
        self.forget = _Remote(lambda keys: None)
        self.stop = _Remote(lambda keys: None)


def test_every_fold_of_a_parallel_trial_failing_in_one_poll_is_one_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory tends to fail every fold at once. Before: the first failed fold cancelled its
    siblings and removed them from the pending tasks, then the sibling that had finished in the same
    poll raised KeyError, and the run exited 1 with trials left RUNNING."""
    import ray

    job = TrialJob(key="0.0", number=0, params={}, seed=1)
    parts = [f"{job.key}/fold{i}" for i in range(3)]
    refs = {p: f"ref-{p}" for p in parts}
    outcomes = {refs[p]: [Outcome(p, failure=Failed(p, "out of memory", "oom"))] for p in parts}

    monkeypatch.setattr(ray, "wait", lambda r, num_returns=1, timeout=None: (list(r), []))
    monkeypatch.setattr(ray, "get", lambda ref: [] if ref == "drain-ref" else (False if ref == "wait-ref"
                                                                                else outcomes[ref]))
    monkeypatch.setattr(ray, "cancel", lambda ref, force=False: None)
    backend = RayBackend()
    backend._control = _Control()
    backend._wait_ref = None
    backend._pending = {refs[p]: (p,) for p in parts}
    backend._cancelled_refs = []
    backend._owner = {p: job.key for p in parts}
    backend._groups = {job.key: FoldGroup(parts)}

    events = backend.poll(0.0)
    assert events == [Failed(job.key, "out of memory", "oom")]
    assert backend._pending == {} and backend._owner == {} and backend._groups == {}


def test_a_ray_init_cut_short_leaves_no_process_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Ctrl-C inside ``ray.init`` (here: an init that has started a process, as Ray starts its
    GCS server, then is interrupted). Before, ``ray.shutdown()`` could not stop a process Ray had not
    recorded yet, and it outlived the run (in a notebook or a service, for as long as the process)."""
    import subprocess
    import sys

    import ray

    started: list[subprocess.Popen[bytes]] = []

    def interrupted_init(*args: Any, **kwargs: Any) -> None:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", interrupted_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)  # never touch a Ray another test may hold
    with pytest.raises(KeyboardInterrupt):
        RayBackend(num_cpus=1).start()
    try:
        assert started[0].wait(timeout=30) == -9, "the process ray.init started is still running"
    finally:
        started[0].kill()
