"""One stop mechanism (search/_stop.py): a first signal asks, a second one stops at once."""

from __future__ import annotations

import re
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy.exc

from search import Callbacks, Interrupted, LocalBackend, StopRequested, StopToken, resume_study, run_study
from search._stop import stop_on_signals

from . import fakes

REPO = Path(__file__).resolve().parents[2]


def states(url: str, name: str = "t") -> Counter[str]:
    study = optuna.load_study(study_name=name, storage=url)
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def test_only_the_stop_module_installs_signal_handlers() -> None:
    users = sorted(str(p.relative_to(REPO)) for p in (REPO / "search").rglob("*.py")
                   if re.search(r"\bsignal\.signal\(", p.read_text(encoding="utf-8")))
    assert users == ["search/_stop.py"]


def test_token_check_and_sleep() -> None:
    token = StopToken()
    token.check()
    token.sleep(0.0)
    token.set("Ctrl-C")
    token.set("SIGTERM")  # the first reason is kept
    with pytest.raises(StopRequested) as e:
        token.check()
    assert e.value.reason == "Ctrl-C" and isinstance(e.value, KeyboardInterrupt)
    with pytest.raises(StopRequested):
        token.sleep(3600)  # returns at once: the stop was asked for


def test_sleep_ends_when_another_thread_stops() -> None:
    token = StopToken()
    threading.Timer(0.05, token.set, ("cancelled",)).start()
    with pytest.raises(StopRequested, match="cancelled"):
        token.sleep(3600)


def test_first_signal_asks_second_stops_at_once_handlers_restored() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    token = StopToken()
    with stop_on_signals(token):
        signal.raise_signal(signal.SIGTERM)  # asks: nothing is raised here
        assert token.is_set and token.reason == "SIGTERM" and not token.forced
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert token.forced
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGINT)
    seen: list[Any] = []

    def body() -> None:
        with stop_on_signals(StopToken()) as token:
            seen.append((token, signal.getsignal(signal.SIGINT)))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen[0][1] is before


def test_a_stop_during_database_retries_ends_the_backoff_at_once(make_spec, sqlite_url, monkeypatch) -> None:
    """Ctrl-C while the study opens and the database keeps failing: before, the signal was held
    until the retries gave up (about 60 s); now the backoff ends at the stop."""
    import search._api as api

    attempts: list[int] = []

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            signal.raise_signal(signal.SIGINT)
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    monkeypatch.setattr(api, "open_study", unreachable)
    monkeypatch.setenv("HPSEARCH_DB_RETRY_ATTEMPTS", "8")
    with pytest.raises(Interrupted, match=r"interrupted \(Ctrl-C\).*hpsearch resume t"):
        run_study(make_spec(), storage=sqlite_url, backend=LocalBackend(1), worker_fn=fakes.quadratic)
    assert len(attempts) == 1


def test_a_second_signal_inside_ray_init_stops_at_once_and_shuts_ray_down(monkeypatch) -> None:
    """ray.init is not held back from a forced stop: the second Ctrl-C raises inside it, and what it
    started is shut down."""
    import ray

    from search import RayBackend

    calls: list[str] = []

    def slow_init(*args: Any, **kwargs: Any) -> None:
        calls.append("init")
        signal.raise_signal(signal.SIGINT)  # asks
        signal.raise_signal(signal.SIGINT)  # forces: raises here, inside "ray.init"
        calls.append("init returned")

    monkeypatch.setattr(ray, "init", slow_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    token = StopToken()
    with stop_on_signals(token), pytest.raises(KeyboardInterrupt):
        RayBackend().start()
    assert calls == ["init", "shutdown"] and token.forced


def test_a_token_stops_a_run_in_another_thread_and_records_its_trials(make_spec, sqlite_url) -> None:
    """No signal reaches a thread: a service stops a study with its token, as Ctrl-C would."""
    token = StopToken()

    class StopAtFirstEnd(Callbacks):
        def on_trial_end(self, trial, done, budget) -> None:  # type: ignore[no-untyped-def]
            token.set("cancelled by the test")

    errors: list[BaseException] = []

    def body() -> None:
        try:
            run_study(make_spec(n_trials=4), storage=sqlite_url, backend=LocalBackend(2), worker_fn=fakes.quadratic,
                      callbacks=StopAtFirstEnd(), refit=False, stop=token)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join(120)
    assert len(errors) == 1 and isinstance(errors[0], Interrupted), errors
    assert "cancelled by the test" in str(errors[0])
    counts = states(sqlite_url)
    assert counts["RUNNING"] == 0 and counts["COMPLETE"] >= 1
    resume_study("t", storage=sqlite_url, backend=LocalBackend(2), worker_fn=fakes.quadratic, refit=False)
    assert states(sqlite_url)["COMPLETE"] == 4


def test_a_token_set_by_code_does_not_turn_the_first_signal_into_a_forced_one() -> None:
    token = StopToken()
    with stop_on_signals(token):
        token.set("cancelled")
        signal.raise_signal(signal.SIGINT)  # the first signal: asks (nothing raised)
        assert not token.forced
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_a_signal_ignored_by_the_parent_stays_ignored() -> None:
    """`trap '' INT` (or a background job of a script): the run must not stop on a SIGINT it was
    started to ignore."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        token = StopToken()
        with stop_on_signals(token):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            assert not token.is_set
    finally:
        signal.signal(signal.SIGINT, before)


def test_after_a_stop_recording_the_in_flight_trials_is_retried(make_spec, sqlite_url, monkeypatch) -> None:
    """Before, once a stop was asked for every backoff ended at once, so one transient error while
    the in-flight trials were recorded left them RUNNING."""
    import storage as st
    from search import SimulatedBackend

    token = StopToken()
    real, failed = st.retrying, []

    def retrying(fn: Any, **kw: Any) -> Any:
        def once_after_the_stop() -> Any:
            if token.draining and not failed:  # a write recording the in-flight trials
                failed.append(1)
                raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("database is locked"))
            return fn()

        return real(once_after_the_stop, **{**kw, "base_delay": 0.001})

    class StopAtFirstEnd(Callbacks):
        def on_trial_end(self, trial, done, budget) -> None:  # type: ignore[no-untyped-def]
            token.set("cancelled")

    monkeypatch.setattr(st, "retrying", retrying)
    with pytest.raises(Interrupted, match=r"interrupted \(cancelled\); \d/4 trials done"):
        # trials of different lengths: when the first one ends, another is in flight to be recorded
        backend = SimulatedBackend(2, epoch_s=lambda job: 1.0 + job.number)
        run_study(make_spec(n_trials=4), storage=sqlite_url, backend=backend, worker_fn=fakes.quadratic,
                  callbacks=StopAtFirstEnd(), refit=False, stop=token)
    assert failed and states(sqlite_url)["RUNNING"] == 0
