"""Resume after every kind of interruption: nothing finished is lost, nothing runs twice.

The study stopped at every one of its storage calls (a SIGKILL, a real SIGINT, every call repeated
after it committed) is in test_fault_injection.py, in process on the simulated backend. Here:

* **In process, around those** (fake worker, in-process backend, SQLite on tmpfs): SIGTERM while a
  worker thread trains, a kill inside Optuna's trial creation or before the spec was stored, a
  resumed TPE, the lease and a changed spec.
* **Real processes**: ``hpsearch`` in a subprocess (tests/search/study_proc.py: the real CLI with a
  pause before each epoch report, so a signal lands while trials run) with real Ray and real
  training, on SQLite and PostgreSQL: SIGKILL, Ctrl-C, a killed Ray worker, the database unreachable
  beyond the retry budget (a TCP proxy cut), and -- last in this file -- the PostgreSQL server
  restarted mid-study.

Ray start-up is most of the cost, so one local Ray is started for the module: the resumes run the
CLI (``search.cli.main``, what ``hpsearch`` runs) in this process on it, and most subprocess runs
join it with ``--address``. The tests about Ray's own processes (the SIGKILL of grid-sqlite, Ctrl-C)
let the subprocess start its own local Ray, as ``hpsearch run`` does by default. The Ctrl-C test
resumes with the installed ``hpsearch`` script in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy.exc
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

import storage as st
from search import Interrupted, LocalBackend, resume_study, run_study
from search.cli import main as cli_main
from trials import trial_seed

from . import fakes
from .resume_checks import (
    GRID_POINTS,
    StudyProc,
    TcpProxy,
    assert_one_line_error,
    check_invariants,
    cli,
    count_states,
    fake_spec,
    kill_session,
    session_procs,
    snapshot,
    study_exists,
    trials_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quiet_optuna")]

STALE_S = 3.0  # HPSEARCH_LEASE_STALE_S for the real-process tests (heartbeat every second)


def run_fake(spec: Any, url: str, **kw: Any) -> Any:
    return run_study(spec, storage=url, backend=LocalBackend(2), worker_fn=fakes.quadratic, **kw)


# -- in process ----------------------------------------------------------------------------------------

def test_sigterm_stops_a_run_like_ctrl_c(fast_dir) -> None:
    """``kill PID`` / ``docker stop`` / a scheduler's preemption: in-flight trials are recorded and
    re-run on resume, as for Ctrl-C (the signal arrives while a worker thread trains)."""
    url = f"sqlite:///{fast_dir}/term.db"
    sent = []

    def worker(data, settings, job, report):  # type: ignore[no-untyped-def]
        if job.number == 3 and not sent:
            sent.append(True)
            signal.raise_signal(signal.SIGTERM)  # handled in the main thread, by the orchestrator
        return fakes.quadratic(data, settings, job, report)

    def not_handled(signum: int, frame: Any) -> None:
        raise AssertionError("SIGTERM reached the default handler: the run would have died")

    previous = signal.signal(signal.SIGTERM, not_handled)
    try:
        with pytest.raises(Interrupted):
            run_study(fake_spec("grid"), storage=url, backend=LocalBackend(2), worker_fn=worker)
        assert signal.getsignal(signal.SIGTERM) is not_handled, "the previous handler is restored"
    finally:
        signal.signal(signal.SIGTERM, previous)
    trials = trials_of(url, "s")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs["fail_reason"].startswith("interrupted (SIGTERM)") for t in failed)
    before = snapshot(trials)
    resume_study("s", storage=url, backend=LocalBackend(2), worker_fn=fakes.quadratic)
    check_invariants(trials_of(url, "s"), budget=6, seed=3, grid=GRID_POINTS, before=before)


@pytest.mark.parametrize("case", ["new-trial", "grid-point-chosen", "queued-re-run-taken"])
def test_killed_while_optuna_was_creating_a_trial(fast_dir, case) -> None:
    """``study.ask`` is several commits (create the trial, the grid point, each param): a kill in
    between leaves a RUNNING trial with some params missing. It never ran; the resume must complete
    and run it (a re-run with partial params would not start: GridSampler refuses it)."""
    from search import make_sampler, parse_spec
    from search._strategies import distributions

    url = f"sqlite:///{fast_dir}/ask.db"
    # the first 3 grid points done (a subset only a stored spec may hold: a study file is refused)
    parsed = parse_spec(fake_spec("grid", n_trials=3), stored=True)
    run_fake(parsed, url, refit=False)
    study = optuna.load_study(study_name="s", storage=st.create_storage(url), sampler=make_sampler(parsed))
    storage, sid = study._storage, study._study_id
    if case == "new-trial":
        storage.create_new_trial(sid)
    elif case == "grid-point-chosen":
        optuna.Trial(study, storage.create_new_trial(sid))  # the sampler picks its grid point, no param yet
    else:  # a trial failed and queued its re-run; the kill came after the re-run was taken from the queue
        failed = study.ask(distributions(parsed))
        seed = trial_seed(3, failed.number)
        failed.set_user_attr("seed", seed)
        failed.set_user_attr("will_retry", True)
        failed.set_user_attr("fail_reason", "RuntimeError: flaky")
        study.enqueue_trial(failed.params, user_attrs={"retry_of": failed.number, "attempt": 1, "seed": seed})
        study.tell(failed, state=TrialState.FAIL)
        (waiting,) = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING)
    before = snapshot(trials_of(url, "s"))
    res = resume_study("s", storage=url, n_trials=6, backend=LocalBackend(2), worker_fn=fakes.quadratic)
    assert res.done == 6
    trials = trials_of(url, "s")
    check_invariants(trials, budget=6, seed=3, grid=GRID_POINTS, before=before)
    ran_in_place = [t for t in trials if t.number == 3 + (case == "queued-re-run-taken")]
    assert ran_in_place[0].state == TrialState.COMPLETE, "the half-made trial is run in place"
    assert len(trials) == 6 + (case == "queued-re-run-taken")


def test_study_created_but_killed_before_its_spec_was_stored_is_adopted(fast_dir) -> None:
    """Optuna creates the study, then hpsearch stores the spec: a kill in between must not leave a
    study that neither ``run`` nor ``resume`` accepts."""
    url = f"sqlite:///{fast_dir}/half.db"
    optuna.create_study(storage=st.create_storage(url), study_name="s", direction="maximize")
    res = run_fake(fake_spec("grid"), url)
    assert res.done == 6
    check_invariants(trials_of(url, "s"), budget=6, seed=3, grid=GRID_POINTS)


def test_tpe_resume_continues_from_history_without_replaying_its_startup(monkeypatch, fast_dir) -> None:
    """The resumed TPE sampler sees the stored trials (it models them: it is past its 3 startup
    trials) and is re-seeded, so it does not propose its first points again."""
    url = f"sqlite:///{fast_dir}/tpe.db"
    run_fake(fake_spec("tpe", n_trials=4), url, refit=False)
    first = [t.params for t in trials_of(url, "s")]
    seen: list[int] = []
    real = optuna.samplers.TPESampler.sample_relative

    def spy(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        seen.append(len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
        return real(self, study, trial, search_space)

    monkeypatch.setattr(optuna.samplers.TPESampler, "sample_relative", spy)
    resume_study("s", storage=url, n_trials=8, backend=LocalBackend(1), worker_fn=fakes.quadratic)
    trials = trials_of(url, "s")
    later = [t.params for t in trials[4:]]
    assert len(trials) == 8 and all(p not in first for p in later), (first, later)
    assert seen and seen[0] >= 4, seen  # the first resumed trial was sampled from the 4 stored ones
    # a fresh study with the same seed does replay those first points: the check above is meaningful
    run_fake(fake_spec("tpe", name="fresh", n_trials=4), url, refit=False)
    assert [t.params for t in trials_of(url, "fresh")] == first


# -- lease, spec change (in process) ----------------------------------------------------------------

def write_spec(path: Path, spec: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(path)


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli_main, list(args), prog_name="hpsearch")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def test_live_lease_refuses_a_second_run_and_a_stale_one_is_taken_over(fast_dir, monkeypatch) -> None:
    url = f"sqlite:///{fast_dir}/lease.db"
    study_file = write_spec(fast_dir / "s.yaml", fake_spec("grid"))
    engine = st.create_engine(url)
    other = st.Lease(engine, "s")  # another orchestrator, alive (fresh heartbeat)
    other.acquire()
    code, _, err = invoke("run", study_file, "--storage", url, "-q")
    assert code == 3
    assert_one_line_error(err, f"pid {os.getpid()}", f"host {other.host}", "since", "heartbeat")
    assert not study_exists(url, "s"), "a refused run must not write the study"
    # the other orchestrator dies: its heartbeat ages past HPSEARCH_LEASE_STALE_S
    monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", "1")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE hpsearch_leases SET heartbeat_at = heartbeat_at - 2 * interval '1 second'")
                     if engine.dialect.name == "postgresql" else
                     sqlalchemy.text("UPDATE hpsearch_leases SET heartbeat_at = datetime(heartbeat_at, '-2 seconds')"))
    res = run_fake(fake_spec("grid"), url)
    assert res.done == 6
    assert st.read_lease(engine, "s") is None, "the lease is released at the end"
    # a bad setting is a clear usage error
    monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", "soon")
    code, _, err = invoke("resume", "s", "--storage", url, "-q")
    assert code == 2
    assert_one_line_error(err, "HPSEARCH_LEASE_STALE_S='soon' must be a finite number")


def test_changed_spec_is_refused_with_a_diff_and_a_bigger_budget_is_allowed(fast_dir, monkeypatch) -> None:
    url = f"sqlite:///{fast_dir}/spec.db"
    spec = fake_spec("tpe", n_trials=3, model={"hidden": [16]})
    run_fake(spec, url)
    stored = st.study_attrs(st.create_engine(url), "s")["hpsearch_spec"]
    changed = {**spec, "training": {"max_epochs": 3}, "model": {"hidden": [32]}, "n_trials": 4}
    code, out, err = invoke("run", write_spec(fast_dir / "changed.yaml", changed), "--storage", url, "-q")
    assert code == 2
    assert_one_line_error(err, "already exists with a different spec", "training.max_epochs: 2 -> 3",
                          "model.hidden: [16] -> [32]", "--study NEW_NAME")
    assert "n_trials" not in err, "n_trials may change: it is not listed as a difference"
    assert st.study_attrs(st.create_engine(url), "s")["hpsearch_spec"] == stored
    assert len(trials_of(url, "s")) == 3
    # more trials: allowed from the file and from the flag; the CLI runs on the in-process backend here
    monkeypatch.setattr("search._api.make_backend", lambda spec, address=None: LocalBackend(2))
    code, out, err = invoke("run", write_spec(fast_dir / "more.yaml", {**spec, "n_trials": 4}), "--storage", url, "-q")
    assert code == 0, err
    assert "4/4 trials done" in out and "updated n_trials" in err
    code, out, err = invoke("resume", "s", "--n-trials", "5", "--storage", url, "-q")
    assert code == 0, err
    assert "5/5 trials done" in out
    assert st.study_attrs(st.create_engine(url), "s")["hpsearch_spec"]["n_trials"] == 5
    check_invariants(trials_of(url, "s"), budget=5, seed=3)


# -- real processes ----------------------------------------------------------------------------------

PID_DIR = Path(tempfile.gettempdir()) / f"hpsearch-test-pids-{os.getpid()}"


@pytest.fixture(scope="module")
def ray_here() -> Iterator[str]:
    """One local Ray for the module, started in this process; yields its address.

    The resumes run on it in this process, and most subprocess runs join it with ``--address``
    (a Ray start-up saved per test); the tests about Ray's own processes start a local Ray in the
    subprocess instead. Its workers inherit this environment: the slowed worker of study_proc.py
    reads ``STUDY_PROC_EPOCH_S`` and ``STUDY_PROC_PID_DIR`` there.
    """
    with local_ray() as address:
        yield address


@contextlib.contextmanager
def local_ray() -> Iterator[str]:
    """:func:`ray_here`'s local Ray, for a module fixture that sets more of its workers' environment first."""
    import ray

    saved = {k: os.environ.get(k) for k in ("STUDY_PROC_EPOCH_S", "STUDY_PROC_PID_DIR")}
    PID_DIR.mkdir(exist_ok=True)
    os.environ.update(STUDY_PROC_EPOCH_S=PROC_ENV["STUDY_PROC_EPOCH_S"], STUDY_PROC_PID_DIR=str(PID_DIR))
    started = not ray.is_initialized()
    if started:
        # 4 logical CPUs on a 2-core machine: the slowed trials mostly sleep, and a run never queues
        # behind the tasks of a killed run that Ray is still cleaning up
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False, object_store_memory=200 * 1024 * 1024)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        if started:
            ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(PID_DIR, ignore_errors=True)


def real_spec(strategy: str, name: str, **kw: Any) -> dict[str, Any]:
    """Real training, tiny: digits, a 32-unit MLP, 2 folds, 4 epochs, 2 trials at once."""
    spec: dict[str, Any] = {
        "name": name, "strategy": strategy, "seed": 5, "data": {"source": "digits"},
        "model": {"hidden": [32]}, "training": {"max_epochs": 4, "patience": 10}, "cv": {"folds": 2},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
    }
    if strategy == "grid":
        spec["space"] = {"lr": {"values": [0.02, 0.05, 0.1]}, "batch_size": {"choices": [32, 64]}}
    else:
        spec.update(n_trials=6, tpe={"n_startup_trials": 3},
                    space={"lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
                           "batch_size": {"type": "categorical", "choices": [32, 64]}})
    spec.update(kw)
    return spec


REAL_GRID = [(lr, b) for lr in (0.02, 0.05, 0.1) for b in (32, 64)]
PROC_ENV = {"STUDY_PROC_EPOCH_S": "0.25", "HPSEARCH_LEASE_STALE_S": str(STALE_S)}


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def lease_age(url: str, name: str) -> float:
    engine = st.create_engine(url)
    try:
        info = st.read_lease(engine, name)
        return float("inf") if info is None else info.heartbeat_age_s
    finally:
        engine.dispose()


def ray_core(procs: dict[int, dict[str, Any]]) -> list[str]:
    """Ray's own processes that must never outlive their driver: GCS, raylet, task workers."""
    return sorted(i["name"] for i in procs.values()
                  if i["name"] in ("gcs_server", "raylet") or i["name"].startswith("ray::_remote"))


# grid on SQLite, TPE on PostgreSQL: the storage's part of a resume is the same for both strategies, and
# the strategy's the same on both storages; each is a real process with Ray (about 25 s, 50 s beside
# another test process; CI's time is bounded)
@pytest.mark.parametrize(("strategy", "db"), [("grid", "sqlite"), ("tpe", "postgres")])
def test_sigkill_mid_study_then_resume(request, tmp_path, monkeypatch, ray_here, strategy, db) -> None:
    url = f"sqlite:///{tmp_path}/study.db" if db == "sqlite" else request.getfixturevalue("postgres_url")
    name = f"kill-{strategy}-{db}"
    study_file = write_spec(tmp_path / "study.yaml", real_spec(strategy, name))
    # one variant starts its own local Ray (what the user gets by default; its processes are checked
    # below); the others join the module's Ray
    local_ray = (strategy, db) == ("grid", "sqlite")
    where = [] if local_ray else ["--address", ray_here, "--allow-sqlite"]
    proc = StudyProc(["run", study_file, "--storage", url, "-q", *where], env=PROC_ENV)
    leftovers: list[str] = []
    try:
        # a second orchestrator is refused while the first is alive; it writes nothing
        proc.wait_for(lambda: count_states(url, name)["RUNNING"] >= 1, what="trials running")
        monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", str(STALE_S))
        stored = st.study_attrs(st.create_engine(url), name)["hpsearch_spec"]
        more = write_spec(tmp_path / "more.yaml", real_spec(strategy, name, n_trials=7 if strategy == "tpe" else 6))
        code, _, err = invoke("run", more, "--storage", url, "-q")
        assert code == 3
        assert_one_line_error(err, f"is being run by pid {proc.pid} on host", "since", "heartbeat")
        assert st.study_attrs(st.create_engine(url), name)["hpsearch_spec"] == stored, "refused, yet written"

        proc.wait_for(lambda: count_states(url, name)["COMPLETE"] >= 2, what="2 COMPLETE trials")
        proc.proc.kill()
        proc.proc.wait()
        trials = trials_of(url, name)
        before = snapshot(trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        # a trial the kill caught inside `study.ask` (params not all set yet) never ran: the resume
        # runs it in place instead of failing it; every trial that did run is failed and re-run once
        n_params = max(len(t.params) for t in trials)
        in_flight = {t.number: t for t in running if len(t.params) == n_params}
        assert in_flight, "the kill was meant to land while trials ran"
        # the dead run's lease still has a recent heartbeat, but its holder ran on this very host and
        # its process is gone: the resume takes the study over at once (before: refused for 30 s)
        monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", "600")  # so only the same-host rule can take it over
        code, out, err = invoke("resume", name, "--storage", url, "-q")
        assert code == 0, err
        assert f"from pid {proc.pid} on this host" in err and "its process no longer exists" in err, err
        assert "6/6 trials done" in out
        assert "was left running by a stopped run" in err

        checked = check_invariants(trials_of(url, name), budget=6, seed=5,
                                   grid=REAL_GRID if strategy == "grid" else None, before=before)
        assert {t.number for t in checked.failed} == set(in_flight)
        for t in checked.failed:
            assert "orchestrator stopped" in t.user_attrs["fail_reason"]
        if strategy == "tpe":  # re-seeded on resume: new trials are not the first ones replayed
            old = [tuple(t.params.values()) for t in trials]
            new = [tuple(t.params.values()) for t in checked.complete
                   if t.number not in before and "retry_of" not in t.user_attrs]
            assert new and not set(new) & set(old), (old, new)
        assert trials_of(url, name) and st.read_lease(st.create_engine(url), name) is None
        if local_ray:  # Ray's processes of the killed driver: GCS, raylet, workers die with it
            wait_until(lambda: not ray_core(session_procs(proc.pid)), 15, "Ray's core processes to exit")
    finally:
        # Known: Ray's DashboardAgent and RuntimeEnvAgent of a SIGKILLed driver outlive it
        # (re-parented to init; seen with Ray 2.60); they hold no resources hpsearch needs.
        leftovers = proc.cleanup()
    if local_ray:
        print(f"Ray processes left by the killed driver, killed now: {leftovers}")


def test_sigkill_mid_study_of_a_trainable_then_resume(tmp_path, monkeypatch, ray_here) -> None:
    """A study whose trials run the user's own training function (tests/search/trainables.py:train),
    killed with SIGKILL while trials train: the resume loses no finished trial and runs none twice."""
    url = f"sqlite:///{tmp_path}/study.db"
    name = "kill-trainable"
    spec = real_spec("tpe", name, trainable="tests.search.trainables:train", model={}, n_trials=4)
    proc = StudyProc(["run", write_spec(tmp_path / "study.yaml", spec), "--storage", url, "-q",
                      "--address", ray_here, "--allow-sqlite"], env=PROC_ENV)
    try:
        proc.wait_for(lambda: count_states(url, name)["COMPLETE"] >= 2, what="2 COMPLETE trials")
        proc.proc.kill()
        proc.proc.wait()
        trials = trials_of(url, name)
        before = snapshot(trials)
        n_params = max(len(t.params) for t in trials)
        in_flight = {t.number for t in trials if t.state == TrialState.RUNNING and len(t.params) == n_params}
        assert in_flight, "the kill was meant to land while trials ran"
        monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", "600")  # taken over as its process is gone
        code, out, err = invoke("resume", name, "--storage", url, "-q")
        assert code == 0, err
        assert "4/4 trials done" in out
        after = trials_of(url, name)
        checked = check_invariants(after, budget=4, seed=5, before=before)
        assert {t.number for t in checked.failed} == in_flight
        assert all(t.user_attrs["train_path"] == "trainable" for t in checked.complete)
        assert all(sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
                   for t in checked.complete)
        test = st.study_attrs(st.create_engine(url), name)["test_result"]
        assert test["trial"] == min(checked.complete, key=lambda t: -t.value).number and test["test_score"] > 0.5
    finally:
        proc.cleanup()


def test_ctrl_c_stops_within_seconds_records_trials_and_leaves_no_ray_process(tmp_path, ray_here) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    name = "ctrl c"  # a name with a space: the resume hint must be pasteable
    study_file = write_spec(tmp_path / "study.yaml", real_spec("grid", name))
    proc = StudyProc(["run", study_file, "--storage", url, "-q"], env=PROC_ENV)
    try:
        proc.wait_for(lambda: count_states(url, name)["COMPLETE"] >= 2, what="2 COMPLETE trials")
        ray_procs = {p: i for p, i in session_procs(proc.pid).items() if p != proc.pid}
        assert {"gcs_server", "raylet"} <= {i["name"] for i in ray_procs.values()}, ray_procs
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        code, _, err = proc.finish(timeout=60)
        took = time.monotonic() - t0
        assert code == 130, err
        assert took < 10, took
        assert_one_line_error(err, "interrupted (Ctrl-C);", "trials done", "Continue with `hpsearch resume 'ctrl c'`")
        trials = trials_of(url, name)
        states = Counter(t.state.name for t in trials)
        assert states["RUNNING"] == 0 and states["FAIL"] >= 1, states
        for t in trials:
            if t.state == TrialState.FAIL:
                assert t.user_attrs["will_retry"] is True and "interrupted (Ctrl-C)" in t.user_attrs["fail_reason"]
        assert states["WAITING"] == states["FAIL"]
        # every Ray process this run started is gone
        wait_until(lambda: not session_procs(proc.pid), 10, "the run's Ray processes to exit")
        assert not {p for p in ray_procs if p in session_procs(proc.pid)}
        before = snapshot(trials)
        res = cli(["resume", name, "--storage", url, "-q", "--address", ray_here, "--allow-sqlite"],
                  env={"HPSEARCH_LEASE_STALE_S": str(STALE_S)})
        assert res.returncode == 0, res.stderr
        assert "6/6 trials done" in res.stdout
        check_invariants(trials_of(url, name), budget=6, seed=5, grid=REAL_GRID, before=before)
    finally:
        assert not proc.cleanup(), "processes left behind after Ctrl-C"


def _sqlite_has_study(path: Path, name: str) -> bool:
    """Read-only look at a SQLite study file another process is creating (Optuna's create_storage would
    create its tables too, racing the other process)."""
    import sqlite3

    if not path.exists():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.Error:  # tables not there yet, or locked
        return False


def test_sigterm_during_start_up_exits_130_and_leaves_no_lease(tmp_path, ray_here) -> None:
    """SIGTERM while the local Ray starts (its ``ray.init`` installs its own handlers: ``sys.exit(15)``
    and a native one that dumped a stack and aborted with 134): exit 130, the lease row is deleted,
    so a resume right away is not refused, and it completes the study."""
    url = f"sqlite:///{tmp_path}/study.db"
    study_file = write_spec(tmp_path / "study.yaml", real_spec("grid", "early"))
    env = {"STUDY_PROC_EPOCH_S": "0.25"}  # the default lease staleness (30 s): a refusal would show
    proc = StudyProc(["run", study_file, "--storage", url, "-q"], env=env)
    try:
        # the study exists once the lease is held: Ray starts right after
        proc.wait_for(lambda: _sqlite_has_study(tmp_path / "study.db", "early"), what="the study to be created")
        os.kill(proc.pid, signal.SIGTERM)
        code, _, err = proc.finish(timeout=60)
        assert code == 130, err
        assert_one_line_error(err, "interrupted (SIGTERM)", "Continue with `hpsearch resume early`")
        assert lease_age(url, "early") == float("inf"), "the lease row was left behind"
    finally:
        assert not proc.cleanup(), "processes left behind after SIGTERM"
    code, _, err = invoke("resume", "early", "--storage", url, "-q")  # here, on the module's Ray (CI's time)
    assert code == 0, err
    check_invariants(trials_of(url, "early"), budget=6, seed=5, grid=REAL_GRID)


def test_ctrl_c_inside_ray_init_leaves_no_ray_process_behind(fast_dir) -> None:
    """The Python API (a notebook): a Ctrl-C arriving while ``ray.init`` starts the local Ray is held
    until it returns, then Ray is shut down and the run stops; raised inside ``ray.init`` it had left
    GCS and raylet running, beyond the reach of ``ray.shutdown``. In a subprocess of its own session
    (this process may hold a Ray connection already), whose processes must all be gone after it."""
    script = f"""
import signal, sys
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
import ray
from search import Interrupted, RayBackend, run_study
from tests.search import fakes
from tests.search.resume_checks import fake_spec

real_init = ray.init
def init_then_ctrl_c(*args, **kwargs):
    out = real_init(*args, **kwargs)
    signal.raise_signal(signal.SIGINT)  # lands before ray.init has returned to hpsearch
    return out
ray.init = init_then_ctrl_c
try:
    run_study(fake_spec("grid"), storage="sqlite:///{fast_dir}/init.db", backend=RayBackend(num_cpus=1),
              worker_fn=fakes.quadratic)
except Interrupted as e:
    print("INTERRUPTED", e)
print("INITIALIZED", ray.is_initialized())
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
        assert "INTERRUPTED interrupted (Ctrl-C)" in out, out + err
        assert "INITIALIZED False" in out
        wait_until(lambda: not session_procs(proc.pid), 15, "the local Ray's processes to exit")
    finally:
        assert not kill_session(proc.pid), "processes left behind"


def test_a_second_ctrl_c_during_the_lease_release_still_releases_it(fast_dir, monkeypatch) -> None:
    url = f"sqlite:///{fast_dir}/twice.db"
    release, calls = st.Lease.release, []

    def interrupted_once(self: st.Lease) -> None:
        calls.append(1)
        if len(calls) == 1:  # a Ctrl-C landing in the heartbeat thread's join
            self.stop_heartbeat()
            raise KeyboardInterrupt
        release(self)

    monkeypatch.setattr(st.Lease, "release", interrupted_once)
    with pytest.raises(Interrupted):  # the Ctrl-C is not lost (a script looping over studies stops)
        run_study(fake_spec("grid"), storage=url, backend=LocalBackend(2), worker_fn=fakes.quadratic, refit=False)
    assert len(calls) == 2 and lease_age(url, "s") == float("inf")
    assert Counter(t.state.name for t in trials_of(url, "s")) == {"COMPLETE": 6}


def test_killed_ray_worker_is_rerun_by_ray_under_the_same_trial_number(tmp_path, ray_here) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    name = "worker-kill"
    pid_dir = PID_DIR  # where the module Ray's workers note which process runs which trial
    for f in pid_dir.iterdir():
        f.unlink()
    spec = real_spec("grid", name, space={"lr": {"values": [0.02, 0.1]}, "batch_size": {"choices": [32, 64]}})
    study_file = write_spec(tmp_path / "study.yaml", spec)
    proc = StudyProc(["run", study_file, "--storage", url, "-q", "--address", ray_here, "--allow-sqlite"],
                     env=PROC_ENV)
    try:
        def victim() -> tuple[int, int] | None:
            """(trial number, worker pid) of a trial that has reported an epoch and is still RUNNING."""
            running = {t.number: t for t in trials_of(url, name) if t.state == TrialState.RUNNING}
            for f in sorted(pid_dir.iterdir(), key=lambda f: f.stat().st_mtime):
                number, attempt, pid = map(int, f.name.split("."))
                t = running.get(number)
                if t is not None and t.intermediate_values and attempt == 0:
                    return number, pid
            return None

        proc.wait_for(lambda: victim() is not None, what="a trial mid-way")
        _, pid = victim()  # type: ignore[misc]
        os.kill(pid, signal.SIGKILL)
        # the trial that process ran when it died: the last one it started
        number = int(max((f for f in pid_dir.iterdir() if f.name.endswith(f".{pid}")),
                         key=lambda f: f.stat().st_mtime).name.split(".")[0])
        code, _out, err = proc.finish(timeout=120)
        assert code == 0, err
        trials = trials_of(url, name)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [(t.number, t.state) for t in trials]
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]
        check_invariants(trials, budget=4, seed=5, grid=[(lr, b) for lr in (0.02, 0.1) for b in (32, 64)])
        starts = sorted(f.name for f in pid_dir.iterdir() if f.name.startswith(f"{number}."))
        assert len(starts) == 2 and str(pid) in starts[0] + starts[1], starts  # run again by Ray, new process
        victim_trial = next(t for t in trials if t.number == number)
        assert sorted(victim_trial.intermediate_values) == list(range(1, victim_trial.user_attrs["epochs"] + 1))
    finally:
        proc.cleanup()


@pytest.mark.postgres
def test_database_unreachable_beyond_the_retry_budget_exits_3_and_resume_works(
        postgres_url, tmp_path, monkeypatch, ray_here) -> None:
    """The server stays up; a TCP proxy between hpsearch and PostgreSQL is cut, so for hpsearch the
    database is gone (connections reset, new ones refused) -- longer than a retry budget of 3 attempts."""
    from sqlalchemy.engine import make_url

    target = make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    via_proxy = target.set(port=proxy.port).render_as_string(hide_password=False)
    name = "db-down"
    study_file = write_spec(tmp_path / "study.yaml", real_spec("grid", name))
    proc = StudyProc(["run", study_file, "--storage", via_proxy, "-q", "--address", ray_here],
                     env={**PROC_ENV, "HPSEARCH_DB_RETRY_ATTEMPTS": "3"})
    try:
        proc.wait_for(lambda: count_states(postgres_url, name)["COMPLETE"] >= 2, what="2 COMPLETE trials")
        proxy.cut()
        t0 = time.monotonic()
        code, _, err = proc.finish(timeout=90)
        assert code == 3, err
        assert time.monotonic() - t0 < 30
        line = assert_one_line_error(err, "stayed unreachable", "3 attempts", "hpsearch resume db-down")
        assert f":{proxy.port}/" in line
        before = snapshot(trials_of(postgres_url, name))
        assert len(before) >= 2
        proxy.restore()
        monkeypatch.setenv("HPSEARCH_LEASE_STALE_S", str(STALE_S))
        wait_until(lambda: lease_age(postgres_url, name) >= STALE_S, 15, "a stale lease")
        code, _out, err = invoke("resume", name, "--storage", via_proxy, "-q")
        assert code == 0, err
        check_invariants(trials_of(postgres_url, name), budget=6, seed=5, grid=REAL_GRID, before=before)
    finally:
        proc.cleanup()
        proxy.cut()


# Keep this test last in the file: it restarts the machine's PostgreSQL server.
PG_CLUSTER = ["pg_ctlcluster", "--skip-systemctl-redirect"]


def _pg_version() -> str | None:
    try:
        versions = sorted(os.listdir("/etc/postgresql"))
    except OSError:
        return None
    return versions[-1] if versions and shutil.which("pg_ctlcluster") else None


def _pg_ready(url: str) -> bool:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    r = subprocess.run(["pg_isready", "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432)],
                       capture_output=True, timeout=10)
    return r.returncode == 0


def _pg_start_time(url: str) -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]  # type: ignore[index]


@pytest.mark.postgres
@pytest.mark.serial  # it restarts the server every PostgreSQL test uses: never beside another test
def test_postgres_restart_mid_study_loses_nothing(postgres_url, tmp_path, ray_here) -> None:
    version = _pg_version()
    if version is None or os.geteuid() != 0:
        pytest.skip("needs the machine's PostgreSQL cluster (pg_ctlcluster) and root to restart it")
    name = "pg-restart"
    study_file = write_spec(tmp_path / "study.yaml", real_spec("grid", name))
    proc = StudyProc(["run", study_file, "--storage", postgres_url, "-q", "--address", ray_here], env=PROC_ENV)
    try:
        proc.wait_for(lambda: count_states(postgres_url, name)["COMPLETE"] >= 1, what="a COMPLETE trial")
        before = snapshot(trials_of(postgres_url, name))
        assert len(before) < 6
        started = _pg_start_time(postgres_url)
        r = subprocess.run([*PG_CLUSTER, version, "main", "restart"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        # the server is a new process (every connection of the run was cut) and the run is still going
        assert _pg_start_time(postgres_url) > started
        assert proc.proc.poll() is None, "the restart was meant to hit a running study"
        code, out, err = proc.finish(timeout=180)
        assert code == 0, err  # calls made while it was down were retried (a warning line each), if any
        assert "6/6 trials done" in out
        check_invariants(trials_of(postgres_url, name), budget=6, seed=5, grid=REAL_GRID, before=before)
    finally:
        proc.cleanup()
        if not _pg_ready(postgres_url):
            subprocess.run([*PG_CLUSTER, version, "main", "start"], capture_output=True, timeout=120)
        wait_until(lambda: _pg_ready(postgres_url), 60, "PostgreSQL to accept connections again")
