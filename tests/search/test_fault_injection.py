"""A study stopped at *every* storage call, then resumed: nothing finished is lost, nothing runs twice.

Every storage call of a run goes through ``storage.retrying``; :func:`storage_calls` routes them
through a hook that stops the run at call N -- a SIGKILL just before or just after the call (what
the database holds then, copied), a real SIGINT while it runs, or every call made to fail once after
it committed (a connection lost before the reply). The invariants of
:func:`resume_checks.check_invariants` must hold after the resume of each.

On :class:`~search.SimulatedBackend` the sequence of storage calls is the same on every run (no
thread decides when an epoch report arrives), so N runs over every position of a whole study, not
a sample. In process, no Ray, SQLite on tmpfs: not ``slow``. The same interruptions in real
processes, with Ray and real training, are in test_resume.py.
"""

from __future__ import annotations

import functools
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

import storage as st
from search import Interrupted, SimulatedBackend, StudyResult, resume_study, run_study

from . import fakes
from .resume_checks import GRID_POINTS, check_invariants, fake_spec, snapshot, trials_of

pytestmark = pytest.mark.usefixtures("quiet_optuna", "optuna_head_version_once", "dataset_loaded_once")

EPOCHS = 2  # fake_spec's max_epochs


@pytest.fixture
def optuna_head_version_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna's schema check reads its head version from alembic's scripts, executing all ~70 of them,
    on every RDBStorage it opens (about 60 ms; each position below opens several): look it up once.
    The check itself (the database's version is the head) still runs."""
    from optuna.storages._rdb.storage import _VersionManager

    head = _VersionManager.get_head_version
    cached: list[str] = []

    def get_head_version(self: _VersionManager) -> str:
        if not cached:
            cached.append(head(self))
        return cached[0]

    monkeypatch.setattr(_VersionManager, "get_head_version", get_head_version)


@pytest.fixture
def dataset_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run of these tests loads the same digits split (read from its CSV each time): load it once."""
    import search._api

    monkeypatch.setattr(search._api, "load_dataset", functools.cache(search._api.load_dataset))


def run_fake(spec: dict[str, Any], url: str, **kw: Any) -> StudyResult:
    return run_study(spec, storage=url, backend=SimulatedBackend(2), worker_fn=fakes.quadratic, **kw)


def resume_fake(url: str) -> StudyResult:
    return resume_study("s", storage=url, backend=SimulatedBackend(2), worker_fn=fakes.quadratic)


@contextmanager
def storage_calls(
    monkeypatch: pytest.MonkeyPatch, hook: Callable[[int, Callable[[], Any]], Any]
) -> Iterator[list[int]]:
    """Route every storage call of run_study/resume_study (they all go through ``storage.retrying``)
    through ``hook(call_number, run_the_call)``; yields a one-element list with the call count."""
    real = st.retrying
    count = [0]

    def retrying(fn: Callable[[], Any], **kw: Any) -> Any:
        count[0] += 1
        kw["base_delay"] = 0.0001
        return hook(count[0], lambda: real(fn, **kw))

    with monkeypatch.context() as m:
        m.setattr(st, "retrying", retrying)
        yield count


def count_storage_calls(monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any], url: str) -> int:
    with storage_calls(monkeypatch, lambda n, call: call()) as count:
        run_fake(spec, url)
    return count[0]


def deterministic_call_count(monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any], fast_dir: Path) -> int:
    """The storage calls of a whole run, counted twice: the same number, or N would not mean one place."""
    counts = [count_storage_calls(monkeypatch, spec, f"sqlite:///{fast_dir}/count-{i}.db") for i in (1, 2)]
    assert counts[0] == counts[1], f"two identical runs made {counts} storage calls"
    assert counts[0] > 40, counts
    return counts[0]


class Reader:
    """Reads study ``s`` at ``url`` through one storage (opening one costs more than most reads)."""

    def __init__(self, url: str) -> None:
        self.storage = st.create_storage(url)

    def exists(self) -> bool:
        return "s" in [s.study_name for s in self.storage.get_all_studies()]

    def trials(self) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.storage.get_study_id_from_name("s"), deepcopy=True)

    def state(self) -> str:
        """Everything in the database a resume acts on -- the study's attributes and each trial's id,
        number, state, params, value, attributes and per-epoch values, and whether a lease row is
        there -- without the wall-clock times Optuna stamps (nothing reads them). Equal states resume
        alike: the backend is simulated and the worker deterministic."""
        if not self.exists():
            return "no study"
        sid = self.storage.get_study_id_from_name("s")
        trials = [(t._trial_id, t.number, t.state, t.params, t.values, t.user_attrs, t.system_attrs,
                   t.intermediate_values) for t in self.storage.get_all_trials(sid, deepcopy=False)]
        return repr((self.storage.get_study_user_attrs(sid), self.storage.get_study_system_attrs(sid), trials,
                     self.lease_left()))

    def lease_left(self) -> bool:
        return st.read_lease(self.storage.engine, "s") is not None

    def age_lease(self) -> None:
        """What waiting ``HPSEARCH_LEASE_STALE_S`` for a dead run's lease to go stale comes to."""
        with self.storage.engine.begin() as conn:
            conn.execute(sqlalchemy.text(
                "UPDATE hpsearch_leases SET heartbeat_at = datetime(heartbeat_at, '-1 hours')"))

    def close(self) -> None:
        self.storage.engine.dispose()


def resume_and_check(url: str, where: str, read: Reader | None = None, done: set[str] | None = None) -> bool:
    """Resume the study at ``url`` (or run it again when the stop came before it existed) and check it.

    With ``done`` (the states already resumed and checked): a state in it is not resumed again;
    returns whether this one was."""
    read = read or Reader(url)
    try:
        if done is not None:
            state = read.state()
            if state in done:
                return False
            done.add(state)
        if not read.exists():  # stopped before the study was created: the run starts afresh
            before = None
            res = run_fake(fake_spec("grid"), url)
        else:
            before = snapshot(read.trials())
            res = resume_fake(url)
        assert res.done == 6, res
        check_invariants(read.trials(), budget=6, seed=3, grid=GRID_POINTS, before=before)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e}") from e
    finally:
        read.close()
    return True


@pytest.mark.parametrize("strategy", ["grid", "tpe"])
def test_every_storage_call_repeated_after_it_committed(monkeypatch, fast_dir, strategy) -> None:
    """A connection lost after the server committed but before the reply: the retry repeats the call.
    Every single call is made to fail that way once; the study must still come out exact."""
    url = f"sqlite:///{fast_dir}/twice.db"
    real = st.retrying
    calls = [0]

    def retrying(fn: Callable[[], Any], **kw: Any) -> Any:
        calls[0] += 1
        first = [True]

        def committed_then_lost() -> Any:
            out = fn()
            if first[0]:
                first[0] = False
                raise sqlalchemy.exc.OperationalError(
                    "COMMIT", {}, Exception("server closed the connection unexpectedly"))
            return out

        return real(committed_then_lost, **{**kw, "base_delay": 0.0001})

    monkeypatch.setattr(st, "retrying", retrying)
    res = run_fake(fake_spec(strategy), url)
    assert res.done == 6 and calls[0] > 40, calls
    check_invariants(trials_of(url, "s"), budget=6, seed=3, grid=GRID_POINTS if strategy == "grid" else None)


def backup(src: Path, dst: Path) -> None:
    """A consistent copy of SQLite database ``src`` (what a reader sees now: committed writes only)."""
    with closing(sqlite3.connect(src)) as source, closing(sqlite3.connect(dst)) as target:
        source.backup(target)


def test_killed_at_any_storage_call_resumes_exactly(monkeypatch, fast_dir) -> None:
    """Killed just before or just after any storage call N of a whole grid study: the resume leaves
    every grid point COMPLETE exactly once, every interrupted trial re-run once with its params and
    seed, and every trial finished before the kill unchanged.

    A SIGKILL runs no handler: all it leaves is what the database held at that moment, and between
    two storage calls nothing else writes it. So one run copies the database before call 1 and after
    every call (killed just before call N+1 leaves what killed just after call N does; killed inside
    a call, its transaction rolls back: the state before it), and each copy is resumed, with the
    dead run's lease row aged past ``HPSEARCH_LEASE_STALE_S`` as waiting for it would. A copy equal
    to one resumed already (a call that only read) is not resumed twice."""
    spec = fake_spec("grid")
    total = deterministic_call_count(monkeypatch, spec, fast_dir)
    db = fast_dir / "killed.db"
    states: list[Path] = []

    def copy_around(k: int, call: Callable[[], Any]) -> Any:
        if k == 1:
            states.append(fast_dir / "kill-before-1.db")
            backup(db, states[-1])
        out = call()
        states.append(fast_dir / f"kill-after-{k}.db")
        backup(db, states[-1])
        return out

    with storage_calls(monkeypatch, copy_around):
        run_fake(spec, f"sqlite:///{db}")
    assert len(states) == total + 1
    leased = 0
    done: set[str] = set()
    for n, path in enumerate(states):
        url = f"sqlite:///{path}"
        read = Reader(url)
        if read.lease_left():  # the dead run's, with a fresh heartbeat: a resume now would be refused
            leased += 1
            read.age_lease()
        where = "killed before storage call 1" if n == 0 else f"killed after storage call {n} of {total}"
        resume_and_check(url, where, read, done)
    assert len(done) > total // 2, (len(done), total)  # each write makes a new state
    assert leased >= total - 4, (leased, total)  # from taking the lease to releasing it, just before the last call


def complete_whole(t: FrozenTrial) -> bool:
    """A COMPLETE trial recorded in full: every epoch's value and the attributes of its outcome."""
    return (sorted(t.intermediate_values) == list(range(1, EPOCHS + 1)) and t.user_attrs.get("epochs") == EPOCHS
            and len(t.user_attrs.get("fold_scores", [])) == 2 and "seed" in t.user_attrs)


def test_ctrl_c_at_any_storage_call_records_in_flight_trials(monkeypatch, fast_dir) -> None:
    """A real SIGINT delivered while storage call N runs, for every N of a whole grid study. The run
    stops at its next stop check (between polls in the trial loop; between the steps of start-up and
    in the final refit) with :class:`Interrupted` naming the resume command, and leaves no trial
    RUNNING: what ``Orchestrator._interrupt`` records, a trial in flight (started, or asked and waiting
    for a lane) is FAIL ``will_retry`` with ``interrupted (Ctrl-C) ...`` and one queued re-run; a trial
    told before the stop is COMPLETE in full. No SIGINT is lost, not even one in the very last call
    (the summary read after the lease is released; that run used to end as if none came). The resume
    then completes the study exactly (resumed once per distinct recorded state: a SIGINT anywhere
    between two stop checks is recorded alike)."""
    spec = fake_spec("grid")
    total = deterministic_call_count(monkeypatch, spec, fast_dir)
    done: set[str] = set()
    for n in range(1, total + 1):
        url = f"sqlite:///{fast_dir}/int-{n}.db"
        where = f"SIGINT at storage call {n} of {total}"

        def interrupt_at(k: int, call: Callable[[], Any], n: int = n) -> Any:
            out = call()
            if k == n:
                signal.raise_signal(signal.SIGINT)
            return out

        with storage_calls(monkeypatch, interrupt_at), pytest.raises(Interrupted) as stopped:
            run_fake(spec, url)
        assert "Continue with `hpsearch resume s`" in str(stopped.value), (where, str(stopped.value))
        read = Reader(url)
        trials = read.trials() if read.exists() else []
        states = Counter(t.state.name for t in trials)
        assert states["RUNNING"] == 0, (where, states)
        waiting = {w.user_attrs.get("retry_of") for w in trials if w.state == TrialState.WAITING}
        for t in trials:
            if t.state == TrialState.FAIL:
                assert t.user_attrs["will_retry"] is True, (where, t.number, t.user_attrs)
                assert t.user_attrs["fail_reason"].startswith("interrupted (Ctrl-C) "), (where, t.user_attrs)
                assert t.number in waiting, (where, t.number, "no queued re-run")
            elif t.state == TrialState.COMPLETE:
                assert complete_whole(t), (where, t.number, t.user_attrs, t.intermediate_values)
        assert states["WAITING"] == states["FAIL"], (where, states)
        resume_and_check(url, where, read, done)
    assert len(done) >= 10, len(done)


def test_a_ctrl_c_in_the_last_storage_call_is_not_lost(monkeypatch, fast_dir) -> None:
    """The last call reads the summary after the lease is released: a Ctrl-C there raises
    :class:`Interrupted` (it used to be dropped, the run returning as if none came, so a script
    looping over studies went on), and the finished study is left as it was."""
    spec = fake_spec("grid")
    total = count_storage_calls(monkeypatch, spec, f"sqlite:///{fast_dir}/count.db")
    url = f"sqlite:///{fast_dir}/last.db"

    def interrupt_last(k: int, call: Callable[[], Any]) -> Any:
        out = call()
        if k == total:
            signal.raise_signal(signal.SIGINT)
        return out

    with storage_calls(monkeypatch, interrupt_last), \
            pytest.raises(Interrupted, match=r"interrupted \(Ctrl-C\); finished trials are saved"):
        run_fake(spec, url)
    check_invariants(trials_of(url, "s"), budget=6, seed=3, grid=GRID_POINTS)
    assert resume_fake(url).done == 6
