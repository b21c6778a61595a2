"""A study on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``) with fake GPUs.

One Ray head with no resources (like ``ray start --head --num-cpus=0 --num-gpus=0`` in
docs/cluster.md) and worker nodes declaring ``num_cpus=1, num_gpus=1`` each: Ray accepts GPU counts a
machine does not have, schedules by them and sets ``CUDA_VISIBLE_DEVICES`` per task, while the trials
train on the CPU (``training.device: cpu``). Every node is a set of processes on this machine, started
with token authentication on (``RAY_AUTH_MODE=token``, a random ``RAY_AUTH_TOKEN``), as the docs
recommend for real clusters.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
from optuna.trial import FrozenTrial, TrialState

import storage as st
from search import Callbacks, Finished, RayBackend, ResourceError, TrialJob, UsageError, run_study, train_job
from trials import Dataset, EpochReport, FoldResult, MemberReport, TestResult, TrialResult, TrialSettings

from .. import fakes

# each cluster test is seconds; a regression that leaves a task pending forever fails here, not at 600 s
cluster_test = [pytest.mark.slow, pytest.mark.timeout(180)]

_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_ENV = {"FAKE_EPOCH_S": "0.25", "RAY_USAGE_STATS_ENABLED": "0"}


def _reset_ray_auth_state() -> None:
    """Make this process's Ray re-read the auth variables (it caches the mode and the token).

    The order is Ray's own (ray/_private/authentication_test_utils.py: reset_auth_token_state).
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@dataclass
class FakeCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    head_id: str
    workers: list[Any]  # the two 1-CPU/1-GPU worker nodes

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def worker_ids(self) -> set[str]:
        return {w.node_id for w in self.workers}


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[FakeCluster]:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's Ray is still attached: a driver talks to one cluster
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in (*_AUTH_VARS, *_ENV)}
    # the head, every worker node and the driver (this process) inherit the same mode and token
    os.environ.update(_ENV, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    _reset_ray_auth_state()
    mb = 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False, "object_store_memory": 100 * mb},
    )
    try:
        workers = [cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=100 * mb) for _ in range(2)]
        cluster.wait_for_nodes()
        yield FakeCluster(cluster, cluster.head_node.node_id, workers)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reset_ray_auth_state()


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.create_storage(url))


def cluster_spec(name: str, **resources: Any) -> dict[str, Any]:
    """Tiny real training (digits, one 16-unit layer, 3 epochs, 2 folds) on the CPU, 1 fake GPU per trial."""
    return {
        "name": name,
        "strategy": "random",
        "n_trials": 4,
        "seed": 3,
        "space": {"lr": {"type": "float", "low": 0.02, "high": 0.2, "log": True}},
        "data": {"source": "digits"},
        "model": {"hidden": [16]},
        "training": {"max_epochs": 3, "patience": 2, "device": "cpu"},
        "cv": {"folds": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 1, **resources},
    }


def assert_attached_to(fc: FakeCluster, n_alive: int) -> None:
    """The driver is detached after a run, and the cluster it used is still up."""
    assert not ray.is_initialized(), "the backend must disconnect the driver it connected"
    ray.init(address=fc.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        assert sum(n["Alive"] for n in ray.nodes()) == n_alive, "close() must not stop a cluster it only joined"
    finally:
        ray.shutdown()


# -- worker functions (imported by the Ray workers from this module) ------------------------------------
def train_on_fake_gpu(
    data: Dataset, settings: TrialSettings, job: TrialJob, report: Callable[[EpochReport], bool]
) -> TrialResult | TestResult:
    """``train_job``, after checking that Ray gave this task exactly one (fake) GPU."""
    gpus = [str(g) for g in ray.get_gpu_ids()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if len(gpus) != 1 or visible != gpus[0]:
        raise RuntimeError(f"expected one Ray GPU, got {gpus} with CUDA_VISIBLE_DEVICES={visible!r}")
    return train_job(data, settings, job, report)


def marked_quadratic(
    data: Dataset, settings: TrialSettings, job: TrialJob, report: Callable[[EpochReport], bool], *, marks: str
) -> TrialResult | TestResult:
    """``fakes.quadratic``, leaving ``KEY@NODE@PID.start`` / ``.end`` files in ``marks`` (one per execution)."""
    node = ray.get_runtime_context().get_node_id()
    stem = f"{job.key}@{node}@{os.getpid()}"
    (Path(marks) / f"{stem}.start").touch()
    out = fakes.quadratic(data, settings, job, report)
    (Path(marks) / f"{stem}.end").touch()
    return out


def executions(marks: Path) -> list[tuple[str, str, bool]]:
    """(job key, node id, finished) of every execution, in start order."""
    starts = sorted(marks.glob("*.start"), key=lambda p: p.stat().st_mtime_ns)
    out = []
    for p in starts:
        stem = p.name.removesuffix(".start")
        key, node, _pid = stem.split("@")
        out.append((key, node, (marks / f"{stem}.end").exists()))
    return out


class Recorder(Callbacks):
    def __init__(self) -> None:
        self.where = ""
        self.driver_node = ""

    def on_start(self, study: optuna.Study, done: int, budget: int, where: str) -> None:
        self.where = where
        self.driver_node = ray.get_runtime_context().get_node_id()


# -- 1. trials pinned to fake GPUs spread over the worker nodes -----------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_study_on_a_multi_node_cluster(fake_cluster: FakeCluster, postgres_url: str) -> None:
    rec = Recorder()
    res = run_study(cluster_spec("on-cluster"), storage=postgres_url, address=fake_cluster.address,
                    worker_fn=train_on_fake_gpu, callbacks=rec)
    assert res.done == 4 and res.best is not None and res.best.test_score is not None  # refit ran too

    trials = load(postgres_url, "on-cluster").get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [t.user_attrs.get("fail_reason") for t in trials]
    for t in trials:
        assert t.user_attrs["node_id"] in fake_cluster.worker_ids  # never the 0-CPU head
        assert t.user_attrs["node"] == socket.gethostname()
        assert t.user_attrs["device"] == "cpu"  # training.device: cpu, although Ray assigned a GPU
        assert len(t.user_attrs["fold_scores"]) == 2 and len(t.intermediate_values) == t.user_attrs["epochs"]
    # 1 GPU per trial and one GPU per node: the two trials that run at once are on different nodes
    assert {t.user_attrs["node_id"] for t in trials} == fake_cluster.worker_ids

    # the control actor sits on the driver's node, which ray.init(address=...) picked: the head
    assert rec.driver_node == fake_cluster.head_id
    assert rec.where == f"Ray cluster {fake_cluster.address}: 3 node(s), 2 CPUs, 2 GPUs; 2 trials at once"
    assert_attached_to(fake_cluster, 3)


# -- 2. a worker node lost mid-study ----------------------------------------------------------------------
class RemoveNodeMidStudy(Callbacks):
    """Removes ``node`` from the cluster at the first trial end (from the 2nd on) while it runs a trial."""

    def __init__(self, fc: FakeCluster, node: Any, marks: Path) -> None:
        self.fc, self.node, self.marks = fc, node, marks
        self.removed_at: float | None = None

    def on_trial_end(self, trial: FrozenTrial, done: int, budget: int) -> None:
        if self.removed_at is not None or done < 2:
            return
        if any(n == self.node.node_id and not fin for _, n, fin in executions(self.marks)):
            self.fc.cluster.remove_node(self.node)
            self.removed_at = time.time()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_worker_node_lost_mid_study(fake_cluster: FakeCluster, postgres_url: str, tmp_path: Path) -> None:
    """Ray re-executes the lost node's trials elsewhere (``retries.worker_crash_retries``, default 3)."""
    cb, res, trials = run_losing_a_node(fake_cluster, postgres_url, tmp_path, crash_retries=3)

    # what Ray did: every task that was running on the removed node ran again, to the end, on another one
    runs = executions(tmp_path)
    killed = {k for k, n, fin in runs if n == cb.node.node_id and not fin}
    assert killed, runs
    for key in killed:
        again = [(n, fin) for k, n, fin in runs if k == key and n != cb.node.node_id]
        assert again == [(again[0][0], True)] and again[0][0] in fake_cluster.worker_ids, runs

    # what the study saw: nothing (Ray's re-execution is invisible to the orchestrator): the exact
    # budget, every trial COMPLETE once, no FAIL, no orchestrator-level retry
    assert res.done == 9
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 9, [t.user_attrs.get("fail_reason") for t in trials]
    assert sorted(t.number for t in trials) == list(range(9))
    assert all("retry_of" not in t.user_attrs and "will_retry" not in t.user_attrs for t in trials)
    assert len(Counter(t.params["lr"] for t in trials)) == 9  # nine asks, nine different configurations
    by_key = {f"{t.number}.0": t for t in trials}
    for key in killed:
        t = by_key[key]
        assert t.user_attrs["node_id"] != cb.node.node_id and t.user_attrs["worker_start"] >= cb.removed_at - 1
        # the re-execution repeated epochs 1.. : each step is stored once
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_worker_node_lost_without_ray_retries(fake_cluster: FakeCluster, postgres_url: str, tmp_path: Path) -> None:
    """``worker_crash_retries: 0``: the loss reaches the orchestrator as a crash; it re-runs the params."""
    cb, res, trials = run_losing_a_node(fake_cluster, postgres_url, tmp_path, crash_retries=0)
    runs = executions(tmp_path)
    killed = {k for k, n, fin in runs if n == cb.node.node_id and not fin}
    assert killed, runs

    assert res.done == 9
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(f"{t.number}.0" for t in failed) == sorted(killed)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 9 and len(trials) == 9 + len(killed)
    for t in failed:
        assert t.user_attrs["will_retry"] is True
        assert t.user_attrs["fail_reason"] == (
            "the Ray node or worker process running it died (1 attempt; retries.worker_crash_retries: 0): "
            "NodeDiedError"
        )
        (again,) = [c for c in complete if c.user_attrs.get("retry_of") == t.number]
        assert again.params == t.params and again.user_attrs["seed"] == t.user_attrs["seed"]
        assert again.user_attrs["attempt"] == 1
    assert len(Counter(t.params["lr"] for t in complete)) == 9  # no configuration ran twice to completion


def run_losing_a_node(
    fc: FakeCluster, url: str, marks: Path, *, crash_retries: int
) -> tuple[RemoveNodeMidStudy, Any, list[FrozenTrial]]:
    """A 9-trial study on three 1-GPU nodes; the third is removed while it runs a trial."""
    doomed = fc.cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=100 * 1024 * 1024)
    fc.cluster.wait_for_nodes()
    spec = {**cluster_spec("node-lost"), "n_trials": 9, "training": {"max_epochs": 4, "device": "cpu"},
            "retries": {"worker_crash_retries": crash_retries}}
    cb = RemoveNodeMidStudy(fc, doomed, marks)
    try:
        res = run_study(spec, storage=url, address=fc.address, refit=False, callbacks=cb,
                        worker_fn=functools.partial(marked_quadratic, marks=str(marks)))
    finally:
        if cb.removed_at is None:
            fc.cluster.remove_node(doomed)
    assert cb.removed_at is not None, f"the node never ran a trial: {executions(marks)}"
    assert_attached_to(fc, 3)
    return cb, res, load(url, "node-lost").get_trials(deepcopy=False)


# -- 3. resources no node can ever provide ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("resources", "message"), [
    ({"gpus_per_trial": 2},
     r"^resources\.gpus_per_trial: 2 GPU per trial requested, but the Ray cluster has 2 CPUs and 2 GPUs in "
     r"3 node\(s\) \(per node: .*1 CPU \+ 1 GPU.*\); no node has that many: lower resources\.gpus_per_trial to "
     r"1 at most \(one node has at most 1\), or set resources\.parallel_folds: true"),
    ({"cpus_per_trial": 8},
     r"^resources\.cpus_per_trial: 8 CPUs per trial requested, but no node has that many \(the Ray cluster has "
     r"2 CPUs and 2 GPUs in 3 node\(s\) \(per node: .*\)\); lower resources\.cpus_per_trial$"),
], ids=["gpus", "cpus"])
def test_impossible_resources_fail_fast(fake_cluster: FakeCluster, sqlite_url: str, resources: dict,
                                        message: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ResourceError, match=message):
        run_study(cluster_spec("too-big", **resources), storage=sqlite_url, address=fake_cluster.address,
                  allow_sqlite=True)
    assert time.monotonic() - t0 < 30  # raised at start-up: nothing was submitted to wait for resources
    # nothing ran: no study is left behind, so the file with fixed resources starts afresh
    assert "too-big" not in optuna.get_all_study_names(storage=st.create_storage(sqlite_url))
    assert_attached_to(fake_cluster, 3)  # the failed start disconnected the driver


@pytest.mark.parametrize(("kw", "nodes", "fits", "error"), [
    # parallel folds: each fold task asks for gpus_per_trial / folds
    (dict(gpus_per_trial=2, parallel_folds=True, n_folds=2), [{}, {"CPU": 1, "GPU": 1}] * 2, 1, None),
    (dict(gpus_per_trial=1, parallel_folds=True, n_folds=2), [{"CPU": 1, "GPU": 1}] * 2, 2, None),
    (dict(gpus_per_trial=4, parallel_folds=True, n_folds=2), [{"CPU": 1, "GPU": 1}] * 2, None,
     r"^resources\.gpus_per_trial: 4 GPU per trial requested \(as 2 fold tasks of 0\.5 CPU \+ 2 GPU each.*"
     r"lower resources\.gpus_per_trial to 2 at most \(one node has at most 1\)$"),
    (dict(gpus_per_trial=0.25), [{"CPU": 8, "GPU": 1}], 4, None),
    (dict(gpus_per_trial=2), [{"CPU": 4, "GPU": 2}, {"CPU": 4, "GPU": 1}], 1, None),
    # CPUs on one node and GPUs on another never make one task
    (dict(cpus_per_trial=2, gpus_per_trial=1), [{"CPU": 8}, {"CPU": 1, "GPU": 1}], None,
     r"^resources\.cpus_per_trial: 2 with resources\.gpus_per_trial: 1 per trial requested, but no single node "
     r"has both \(.*per node: 8 CPU \+ 0 GPU, 1 CPU \+ 1 GPU\)"),
])
def test_check_resources_per_node(kw: dict, nodes: list[dict], fits: int | None, error: str | None) -> None:
    backend = RayBackend(**kw)
    backend._node_resources = lambda: nodes  # type: ignore[method-assign]
    if error:
        with pytest.raises(ResourceError, match=error):
            backend._check_resources()
    else:
        backend._check_resources()
        assert backend.capacity == fits


# -- 4. one trial's folds on two nodes ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_parallel_folds_spread_one_trial_over_two_nodes(fake_cluster: FakeCluster, postgres_url: str) -> None:
    spec = cluster_spec("pf-cluster", cpus_per_trial=2, gpus_per_trial=2, parallel_folds=True)
    spec["n_trials"] = 2
    rec = Recorder()
    res = run_study(spec, storage=postgres_url, address=fake_cluster.address, worker_fn=train_on_fake_gpu,
                    callbacks=rec)
    assert rec.where.endswith("1 trials at once")  # 2 fold tasks of 1 GPU: one trial fills the cluster
    # the refit trains one network: it asks for one fold's share (1 GPU), which a node has
    assert res.best is not None and res.best.test_score is not None

    trials = load(postgres_url, "pf-cluster").get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs.get("fail_reason") for t in trials]
    for t in trials:
        a = t.user_attrs
        # one trial, both nodes: node_id lists the folds' nodes
        assert sorted(a["node_id"].split(",")) == sorted(fake_cluster.worker_ids)
        assert a["node"] == socket.gethostname()
        assert len(a["fold_scores"]) == 2 and len(a["curves"]["val_loss"]) == 2 and len(a["fold_epochs"]) == 2
        assert t.value == pytest.approx(sum(a["fold_scores"]) / 2)
        assert len(t.intermediate_values) == a["epochs"]
        assert 0 < a["worker_start"] < a["worker_end"]
    assert_attached_to(fake_cluster, 3)


def test_fold_group_merges_a_re_executed_fold() -> None:
    """A fold task Ray re-ran (its node died) repeats epochs 1..: the trial's epoch values stay right."""
    from search.backends._ray_folds import FoldGroup as _FoldGroup

    def rep(fold: int, epoch: int, acc: float) -> EpochReport:
        return EpochReport(epoch, (MemberReport(fold, 1 - acc, 1 - acc, acc, False),))

    def result(fold: int, acc: float) -> TrialResult:
        return TrialResult((FoldResult(fold, 2, 2, 1 - acc, acc),), {"val_accuracy": [[acc / 2, acc]]}, 2, 1.0,
                           "cpu", "stacked", False)

    g = _FoldGroup(["7.0/fold0", "7.0/fold1"])
    emitted = g.add_report("7.0/fold0", rep(0, 1, 0.5)) + g.add_report("7.0/fold0", rep(0, 2, 0.6))
    emitted += g.add_report("7.0/fold0", rep(0, 1, 0.9))  # re-executed on another node: ignored
    emitted += g.add_report("7.0/fold1", rep(1, 1, 0.7)) + g.add_report("7.0/fold1", rep(1, 2, 0.8))
    assert [(r.epoch, r.value("val_accuracy")) for r in emitted] == [(1, pytest.approx(0.6)), (2, pytest.approx(0.7))]
    assert g.finished_event("7.0") is None
    g.add_result("7.0/fold0", Finished("7.0/fold0", result(0, 0.6), "h", "node-a", 10.0, 20.0))
    g.add_result("7.0/fold1", Finished("7.0/fold1", result(1, 0.8), "h", "node-b", 11.0, 25.0))
    ev = g.finished_event("7.0")
    assert ev is not None and (ev.key, ev.node, ev.node_id, ev.started_at, ev.finished_at) == (
        "7.0", "h", "node-a,node-b", 10.0, 25.0)
    assert [f.fold for f in ev.result.folds] == [0, 1]


# -- 5. SQLite with a remote cluster -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sqlite_with_a_cluster_needs_allow_sqlite(fake_cluster: FakeCluster, sqlite_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {**cluster_spec("sqlite-cluster"), "n_trials": 2}
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    for address, env in ((fake_cluster.address, None), (None, fake_cluster.address)):
        if env:
            monkeypatch.setenv("RAY_ADDRESS", env)
        with pytest.raises(UsageError, match=r"is a SQLite file but trials run on the Ray cluster .*use PostgreSQL"
                                             r".*--allow-sqlite"):
            run_study(spec, storage=sqlite_url, address=address, worker_fn=fakes.quadratic)
        assert not db.exists()  # refused before anything was created
    monkeypatch.delenv("RAY_ADDRESS")

    res = run_study(spec, storage=sqlite_url, address=fake_cluster.address, worker_fn=fakes.quadratic,
                    allow_sqlite=True, refit=False)
    assert res.done == 2
    assert {t.user_attrs["node_id"] for t in load(sqlite_url, "sqlite-cluster").trials} <= fake_cluster.worker_ids
