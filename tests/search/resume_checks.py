"""Helpers for the resume and bad-input tests: the study invariants, subprocess and process-table tools."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

import storage as st
from trials import trial_seed

ROOT = Path(__file__).resolve().parents[2]
HPSEARCH = str(ROOT / ".venv" / "bin" / "hpsearch") if (ROOT / ".venv" / "bin" / "hpsearch").exists() else "hpsearch"


GRID_SPACE = {"lr": {"values": [0.001, 0.01, 0.1]}, "batch_size": {"choices": [32, 64]}}
GRID_POINTS = [(lr, b) for lr in (0.001, 0.01, 0.1) for b in (32, 64)]
TPE_SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
             "batch_size": {"type": "categorical", "choices": [32, 64]}}


def fake_spec(strategy: str, name: str = "s", **kw: Any) -> dict[str, Any]:
    """A study for the fake workers: the 6-point grid (or 6 TPE trials), 2 epochs, 2 folds, seed 3."""
    spec: dict[str, Any] = {"name": name, "strategy": strategy, "seed": 3, "data": {"source": "digits"},
                            "training": {"max_epochs": 2}, "cv": {"folds": 2}}
    if strategy == "grid":
        spec["space"] = GRID_SPACE
    else:
        spec.update(n_trials=6, space=TPE_SPACE, tpe={"n_startup_trials": 3})
    spec.update(kw)
    return spec


def study_exists(url: str, name: str) -> bool:
    storage = st.create_storage(url)
    try:
        return name in [s.study_name for s in storage.get_all_studies()]
    finally:
        storage.engine.dispose()


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.create_storage(url))


def trials_of(url: str, name: str) -> list[FrozenTrial]:
    engine_storage = st.create_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=engine_storage)
        return study.get_trials(deepcopy=True)
    finally:
        engine_storage.engine.dispose()


def snapshot(trials: list[FrozenTrial]) -> dict[int, tuple[Any, ...]]:
    """What must never change once a trial is COMPLETE: params, value, attributes, per-epoch values."""
    return {t.number: (t.params, t.value, t.user_attrs, t.intermediate_values)
            for t in trials if t.state == TrialState.COMPLETE}


@dataclass
class Checked:
    complete: list[FrozenTrial]
    failed: list[FrozenTrial]
    retries: list[FrozenTrial]


def check_invariants(
    trials: list[FrozenTrial],
    *,
    budget: int,
    seed: int,
    grid: list[tuple[Any, ...]] | None = None,
    keys: tuple[str, ...] = ("lr", "batch_size"),
    before: dict[int, tuple[Any, ...]] | None = None,
) -> Checked:
    """The promises of a finished (resumed) study; returns the trials by role for further checks.

    - no trial left RUNNING or WAITING; exactly ``budget`` COMPLETE (the test studies neither prune
      nor fail for real); no parameter set COMPLETE twice; for grid, every point COMPLETE once;
    - every FAIL trial is marked ``will_retry`` and has exactly one re-run: same params, same seed,
      ``retry_of`` = its number, ``attempt`` one more; ``failures`` as the FAIL trial's
      ``rerun_failures`` says, and unchanged after an interruption; every re-run points at a FAIL trial;
    - a first run's seed is derived from the study seed and its number;
    - ``before``: trials that were COMPLETE before the resume are unchanged.
    """
    by_state = Counter(t.state.name for t in trials)
    assert by_state.get("RUNNING", 0) == 0 and by_state.get("WAITING", 0) == 0, by_state
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == budget, (by_state, budget)
    points = Counter(tuple(t.params[k] for k in keys) for t in complete)
    assert max(points.values()) == 1, f"parameters COMPLETE twice: {points}"
    if grid is not None:
        assert sorted(points) == sorted(grid), (sorted(points), sorted(grid))
    by_number = {t.number: t for t in trials}
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    for f in failed:
        assert f.user_attrs.get("will_retry") is True, (f.number, f.user_attrs)
        assert f.user_attrs.get("fail_reason"), f.number
        reruns = [t for t in retries if t.user_attrs["retry_of"] == f.number]
        assert len(reruns) == 1, (f.number, [t.number for t in reruns])
        (r,) = reruns
        assert r.params == f.params, (f.number, f.params, r.params)
        assert r.user_attrs["seed"] == f.user_attrs.get("seed", trial_seed(seed, f.number)), f.number
        assert r.user_attrs["attempt"] == int(f.user_attrs.get("attempt", 0)) + 1
        if "rerun_failures" in f.user_attrs:
            assert r.user_attrs["failures"] == f.user_attrs["rerun_failures"], f.number
        if f.user_attrs["fail_reason"].startswith(("interrupted", "the orchestrator stopped")):
            # not the trial's failure: the re-run keeps every retry it had
            had = int(f.user_attrs.get("failures", f.user_attrs.get("attempt", 0)))
            assert r.user_attrs["failures"] == had, (f.number, f.user_attrs, r.user_attrs)
    for r in retries:
        assert by_number[r.user_attrs["retry_of"]].state == TrialState.FAIL, r.number
    for t in trials:
        if "retry_of" not in t.user_attrs and "seed" in t.user_attrs:
            assert t.user_attrs["seed"] == trial_seed(seed, t.number), t.number
    if before is not None:
        now = snapshot(trials)
        for number, old in before.items():
            assert now.get(number) == old, f"COMPLETE trial {number} changed on resume"
    return Checked(complete, failed, retries)


# -- processes ---------------------------------------------------------------------------------------

def proc_table() -> dict[int, dict[str, Any]]:
    """pid -> {state, ppid, pgrp, sid, name, cmd} from /proc (no psutil in the venv)."""
    out: dict[int, dict[str, Any]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        out[int(d)] = {"state": rest[0], "ppid": int(rest[1]), "pgrp": int(rest[2]), "sid": int(rest[3]),
                       "name": stat[stat.index("(") + 1:stat.rindex(")")], "cmd": cmd}
    return out


def session_procs(sid: int) -> dict[int, dict[str, Any]]:
    """Live (not zombie) processes of session ``sid``: a subprocess started with
    ``start_new_session=True`` and everything it started (Ray's gcs_server, raylet, agents,
    workers) keep its session id, even once re-parented to init."""
    return {p: i for p, i in proc_table().items() if i["sid"] == sid and i["state"] != "Z"}


def kill_session(sid: int) -> list[str]:
    """SIGKILL what is left of session ``sid``; returns the names of what was still there."""
    left = session_procs(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [i["name"] for i in left.values()]


def _base_env() -> dict[str, str]:
    """This environment without a Ray address (a subprocess starts its own local Ray)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


class StudyProc:
    """``hpsearch`` (through tests/search/study_proc.py: slowed epochs) in its own session."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 module: str = "tests.search.study_proc") -> None:
        full_env = {**_base_env(), "PYTHONPATH": str(ROOT), **(env or {})}
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=full_env, cwd=str(cwd or ROOT),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        self.pid = self.proc.pid

    def wait_for(self, cond: Callable[[], bool], timeout: float = 90.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"process ended (rc {self.proc.returncode}) before {what}:\n{out}\n{err}")
            try:
                if cond():
                    return
            except Exception:  # the study may not exist yet
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def cleanup(self) -> list[str]:
        """Kill the process and whatever it left in its session; names of Ray leftovers."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        return kill_session(self.pid)


def count_states(url: str, name: str) -> Counter[str]:
    return Counter(t.state.name for t in trials_of(url, name))


def cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 180,
        cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``hpsearch`` script."""
    full_env = {**_base_env(), **(env or {})}
    return subprocess.run([HPSEARCH, *args], env=full_env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd or ROOT))


def assert_one_line_error(stderr: str, *contains: str) -> str:
    """stderr holds exactly one ``hpsearch: error:`` line (continuation lines are indented), no traceback
    and no raw log line of Ray's C++ core (``[2026-12-02 07:26:00,670 E 24188 24411] task_manager.cc:1545:
    Failed to push error to driver ...``, printed when a cancelled task's death was seen during the shutdown)."""
    assert "Traceback" not in stderr, stderr
    assert not re.search(r"^\[\d{4}-\d\d-\d\d [^]]*\] \w+\.cc:\d+:", stderr, re.MULTILINE), stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("hpsearch: error:")]
    assert len(lines) == 1, stderr
    err_at = stderr.index("hpsearch: error:")
    after = stderr[err_at:].splitlines()[1:]
    assert all(ln.startswith("  ") or not ln.strip() for ln in after), stderr
    for c in contains:
        assert c in stderr, (c, stderr)
    return lines[0]


class TcpProxy:
    """A TCP forwarder ``127.0.0.1:port -> target``, to make a database unreachable for one client
    without touching the server: :meth:`cut` closes every forwarded connection and stops listening
    (new connections are refused), :meth:`restore` listens on the same port again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = self._listen(0)

    def _listen(self, port: int) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return s.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self._listen(self.port)
