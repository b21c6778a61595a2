"""``hpsearch serve`` as a real process: killed with SIGKILL mid-study and restarted; on real Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import storage as st
from search.service import Client, Refused, Unreachable
from tests.search.resume_checks import (
    GRID_POINTS,
    ROOT,
    StudyProc,
    _base_env,
    check_invariants,
    fake_spec,
    kill_session,
    proc_table,
    trials_of,
)
from tests.search.service.conftest import free_port, wait_until


def _up(base: str) -> bool:
    try:
        Client(base).studies()
        return True
    except Unreachable:
        return False


def _states(url: str) -> dict[str, str]:
    engine = st.create_engine(url)
    try:
        return {r.study_name: r.state for r in st.queue_rows(engine)}
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigkill_of_the_server_mid_two_studies_then_restart_completes_both_exactly(url: str) -> None:
    env = {"FAKE_EPOCH_S": "0.1"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = StudyProc([url, str(port), "2"], env=env, module="tests.search.service.server_proc")
    try:
        first.wait_for(lambda: _up(base), 60, "the server to answer")
        for name in ("k1", "k2"):
            Client(base).submit(json.dumps(fake_spec("grid", name, training={"max_epochs": 4})))
        first.wait_for(lambda: all(s["n_complete"] >= 1 and s["n_running"] >= 1 for s in Client(base).studies()),
                       60, "both studies with a COMPLETE and a RUNNING trial")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.communicate()
    finally:
        first.cleanup()
    assert _states(url) == {"k1": "running", "k2": "running"}  # what the kill left: no state in the process
    # what was in flight at the kill, read from the database (a trial seen running may have finished
    # before the signal landed, so the count comes from what the kill left, not from the poll above).
    # A RUNNING trial without all its params was being created (study.ask is several writes): it never
    # ran, and the resume runs it as the next trial instead of failing it.
    cut = {name: sum(t.state.name == "RUNNING" and {"lr", "batch_size"} <= set(t.params) for t in trials_of(url, name))
           for name in ("k1", "k2")}
    second = StudyProc([url, str(port), "2"], env=env, module="tests.search.service.server_proc")
    try:
        second.wait_for(lambda: _states(url) == {"k1": "done", "k2": "done"}, 90, "both studies done")
    finally:
        second.cleanup()
    for name in ("k1", "k2"):
        checked = check_invariants(trials_of(url, name), budget=6, seed=3, grid=GRID_POINTS)
        assert len(checked.failed) == cut[name], name  # each trial the kill cut short failed, and re-ran once


def _children(pid: int) -> list[int]:
    return [p for p, info in proc_table().items() if info["ppid"] == pid and info["state"] != "Z"]


def _resubmitted(client: Client, spec: dict[str, object]) -> bool:
    try:
        client.submit(json.dumps(spec))
        return True
    except Refused as e:
        assert e.status == 409 and "is being run by pid" in e.detail, e
        return False


def _alive(pid: int) -> bool:
    info = proc_table().get(pid)
    return info is not None and info["state"] != "Z"


@pytest.mark.slow
def test_the_studies_run_in_a_process_of_their_own_that_a_cancel_reaches_and_a_sigkill_ends(sqlite_url: str) -> None:
    """``serve`` forks the process that runs the studies (search.service._runner): a cancel written by
    the API's process stops the run there, a resubmit resumes it, and a SIGKILL of the API's process
    ends the runner too (no orphan keeps running the studies). On SQLite only: the processes are
    under test here, and the SIGKILL test above runs the same queue on PostgreSQL."""
    url = sqlite_url
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = StudyProc([url, str(port), "1"], env={"FAKE_EPOCH_S": "0.3"}, module="tests.search.service.server_proc")
    try:
        proc.wait_for(lambda: _up(base), 60, "the server to answer")
        runners = _children(proc.pid)
        assert len(runners) == 1, runners  # the forked runner (in-process backends: no Ray below it)
        client = Client(base)
        client.submit(json.dumps(fake_spec("grid", "c1", training={"max_epochs": 6})))
        proc.wait_for(lambda: Client(base).study("c1")["n_running"] >= 1, 60, "a trial running")
        assert client.cancel("c1")["state"] == "cancelled"
        # the run in the runner stops and records its in-flight trial, then releases the study's lease:
        # until then a resubmit is refused as run by the runner's pid
        proc.wait_for(lambda: _resubmitted(client, fake_spec("grid", "c1", training={"max_epochs": 6})), 60,
                      "the runner's run of c1 to stop, and a resubmit to be accepted")
        proc.wait_for(lambda: _states(url) == {"c1": "done"}, 120, "c1 resumed and done")
        checked = check_invariants(trials_of(url, "c1"), budget=6, seed=3, grid=GRID_POINTS)
        assert len(checked.failed) >= 1  # the trial the cancel cut short, re-run once
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.communicate()
        wait_until(lambda: not _alive(runners[0]), 10, "the runner to die with the API's process")
    finally:
        proc.cleanup()


@pytest.mark.slow
def test_a_runner_that_dies_stops_the_api_with_exit_3_and_a_restart_resumes(sqlite_url: str) -> None:
    """The studies' process killed under a running API: the API stops (no server that accepts studies
    it cannot run), `hpsearch serve` exits 3 naming what happened, and a new server resumes the study
    (SQLite only, as above)."""
    url = sqlite_url
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"FAKE_EPOCH_S": "0.2"}
    first = StudyProc([url, str(port), "1"], env=env, module="tests.search.service.server_proc")
    try:
        first.wait_for(lambda: _up(base), 60, "the server to answer")
        Client(base).submit(json.dumps(fake_spec("grid", "d1", training={"max_epochs": 4})))
        first.wait_for(lambda: Client(base).study("d1")["n_running"] >= 1, 60, "a trial running")
        (runner,) = _children(first.pid)
        os.kill(runner, signal.SIGKILL)
        code, _, err = first.finish(60)
        assert code == 3, err
        assert "the process running the studies ended (exit status -9); restart `hpsearch serve`" in err, err
        assert "Traceback" not in err, err
    finally:
        first.cleanup()
    assert _states(url) == {"d1": "running"}
    second = StudyProc([url, str(port), "1"], env=env, module="tests.search.service.server_proc")
    try:
        second.wait_for(lambda: _states(url) == {"d1": "done"}, 120, "d1 resumed and done")
    finally:
        second.cleanup()
    check_invariants(trials_of(url, "d1"), budget=6, seed=3, grid=GRID_POINTS)


REAL = {"name": "real", "strategy": "grid", "space": {"lr": {"values": [0.01, 0.1]}}, "model": {"hidden": [32]},
        "training": {"max_epochs": 3}, "cv": {"folds": 2}, "resources": {"max_concurrent": 2}}


@pytest.mark.slow
def test_hpsearch_serve_on_real_ray_runs_two_studies_and_best_matches_the_local_best(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/serve.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    files = {}
    for name, extra in (("real", {}), ("real2", {}), ("gpu", {"resources": {"gpus_per_trial": 1}})):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump({**REAL, "name": name, **extra}))
    proc = subprocess.Popen([sys.executable, "-c", "from search.cli import main; main()", "serve", "--storage", url,
                             "--port", str(port), "--slots", "2"], env={**_base_env(), "PYTHONPATH": str(ROOT)},
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or _up(base), 120, "the server to answer")
        assert proc.poll() is None, proc.communicate()
        client = Client(base)
        with pytest.raises(Refused) as e:  # a study the cluster can never run is refused at submit
            client.submit(files["gpu"].read_text(), filename=str(files["gpu"]))
        assert e.value.status == 400
        assert e.value.detail.startswith("resources.gpus_per_trial: 1 GPU per trial requested, but the Ray cluster")
        for name in ("real", "real2"):
            client.submit(files[name].read_text(), filename=str(files[name]))
        done = {}
        for name in ("real", "real2"):
            for _event, study in client.events(name, interval=0.2):
                done[name] = study
        for name, study in done.items():
            assert study["state"] == "done" and study["done"] == 2, study
            local = subprocess.run([sys.executable, "-c", "from search.cli import main; main()", "best", name,
                                    "--storage", url, "-o", "json"], env={**_base_env(), "PYTHONPATH": str(ROOT)},
                                   capture_output=True, text=True, check=True)
            assert study["best"] == json.loads(local.stdout)
            assert study["best"]["test_score"] is not None  # refit on the server's Ray too
        assert "gpu" not in _states(url)
        proc.send_signal(signal.SIGTERM)  # stops like Ctrl-C: uvicorn, then the scheduler and Ray
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        left = kill_session(proc.pid)
        print("left after the server:", left)
