"""The scheduler of ``hpsearch serve`` on in-process backends: fair share, cancel, restart, submit checks."""

from __future__ import annotations

import json

import pytest

import storage as st
from search import SpecError, load_spec
from search.service import Conflict, Demand, Forbidden, NotFound, User, fair_shares
from tests.search.resume_checks import GRID_POINTS, check_invariants, fake_spec, trials_of
from tests.search.service.conftest import wait_until
from trials import DataError


def test_fair_shares_split_evenly_by_priority_within_caps_and_never_starve() -> None:
    assert fair_shares([Demand("a", 1, 8), Demand("b", 1, 8)], 2) == {"a": 1, "b": 1}
    assert fair_shares([Demand("a", 1, 8), Demand("b", 1, 8)], 5) == {"a": 3, "b": 2}  # ties: first started
    assert fair_shares([Demand("a", 2, 8), Demand("b", 1, 8)], 6) == {"a": 4, "b": 2}
    assert fair_shares([Demand("a", 100, 8), Demand("b", 1, 8)], 4) == {"a": 3, "b": 1}  # b still gets one
    assert fair_shares([Demand("a", 1, 1), Demand("b", 1, 8)], 6) == {"a": 1, "b": 5}  # a's max_concurrent
    assert fair_shares([Demand("a", 1, 1)], 4) == {"a": 1}  # nobody can use the rest
    assert fair_shares([], 4) == {}


def test_two_studies_at_once_share_the_slots_and_both_complete(url: str, make_server) -> None:
    server = make_server(url, slots=2)
    server.submit(json.dumps(fake_spec("grid", "a")))
    server.submit(json.dumps(fake_spec("tpe", "b")))
    server.start()  # both were queued before the first tick: they start together
    assert server.wait_idle(60)
    # every trial started within its study's share at that moment, and both studies ran
    assert {name for name, _, _ in server.log} == {"a", "b"}
    assert all(inflight <= share for _, inflight, share in server.log), server.log
    first = {name: share for name, _, share in reversed(server.log)}  # each study's first submit
    assert first == {"a": 1, "b": 1}
    for name, strategy in (("a", "grid"), ("b", "tpe")):
        row = server.row(name)
        assert row is not None and row.state == "done" and row.message == "6/6 trials done"
        check_invariants(trials_of(url, name), budget=6, seed=3, grid=GRID_POINTS if strategy == "grid" else None)


def test_more_studies_than_slots_wait_queued_in_priority_order(sqlite_url: str, make_server) -> None:
    server = make_server(sqlite_url, slots=1)
    for name, prio in (("low", 1), ("high", 3), ("mid", 2)):
        server.submit(json.dumps(fake_spec("tpe", name, n_trials=2)), priority=prio)
    server.start()
    assert server.wait_idle(90)
    rows = {r.study_name: r for r in st.queue_rows(server.engine)}
    assert all(r.state == "done" for r in rows.values())
    order = sorted(rows, key=lambda n: rows[n].started_at)  # type: ignore[arg-type, return-value]
    assert order == ["high", "mid", "low"]
    assert rows["high"].finished_at <= rows["mid"].started_at  # type: ignore[operator]


def test_cancel_records_in_flight_trials_and_a_resubmit_resumes(url: str, make_server) -> None:
    server = make_server(url, slots=2)
    text = json.dumps(fake_spec("grid", "c", training={"max_epochs": 6}))
    server.submit(text, user=User("ann"))
    server.start()
    wait_until(lambda: st.list_studies(server.engine)[0].n_trials["RUNNING"] >= 1, 30, "a running trial")
    with pytest.raises(Forbidden, match="study 'c' belongs to ann; only its owner or an admin token may cancel it"):
        server.cancel("c", User("bob"))
    with pytest.raises(NotFound, match="no study named 'nope'"):
        server.cancel("nope", User("ann"))
    row = server.cancel("c", User("ann"))
    assert row.state == "cancelled" and row.message == "cancelled by ann"
    wait_until(lambda: not server.running(), 30, "the cancelled run to stop")
    assert st.list_studies(server.engine)[0].n_trials["RUNNING"] == 0  # in-flight trials were recorded
    assert server.row("c").state == "cancelled"  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="study 'c' is cancelled, not queued or running"):
        server.cancel("c", User(None, admin=True))
    server.submit(text, user=User("bob"))  # anyone may submit it again: it resumes
    assert server.wait_idle(60)
    assert server.row("c").state == "done"  # type: ignore[union-attr]
    check_invariants(trials_of(url, "c"), budget=6, seed=3, grid=GRID_POINTS)


def test_a_queued_study_cancelled_never_starts(sqlite_url: str, make_server) -> None:
    server = make_server(sqlite_url, slots=1)
    server.submit(json.dumps(fake_spec("grid", "q")))
    assert server.cancel("q", User(None, admin=True)).state == "cancelled"
    server.start()
    server.submit(json.dumps(fake_spec("tpe", "other", n_trials=1)))
    assert server.wait_idle(60)
    assert st.list_studies(server.engine)[0].name == "q"
    assert sum(st.list_studies(server.engine)[0].n_trials.values()) == 0


def test_a_restarted_server_resumes_running_studies_and_keeps_queued_ones(url: str, make_server) -> None:
    first = make_server(url, slots=2)
    for name in ("r1", "r2"):
        first.submit(json.dumps(fake_spec("grid", name, training={"max_epochs": 6})))
    first.start()
    wait_until(lambda: sum(s.n_trials["COMPLETE"] for s in st.list_studies(first.engine)) >= 2, 30, "2 trials")
    first.submit(json.dumps(fake_spec("tpe", "r3", n_trials=2)))  # no free slot: it stays queued
    first.close()
    states = {r.study_name: r.state for r in st.queue_rows(first.engine)}
    assert states == {"r1": "running", "r2": "running", "r3": "queued"}
    second = make_server(url, slots=2).start()
    assert second.wait_idle(90)
    for name in ("r1", "r2", "r3"):
        assert second.row(name).state == "done"  # type: ignore[union-attr]
        check_invariants(trials_of(url, name), budget=2 if name == "r3" else 6, seed=3,
                         grid=None if name == "r3" else GRID_POINTS)


def test_submit_refuses_what_hpsearch_run_refuses_with_its_messages(tmp_path, sqlite_url: str, make_server) -> None:
    server = make_server(sqlite_url)
    bad = "name: x\nstrategy: foo\nn_trials: 3\nspace: {}\n"
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(SpecError) as local:
        load_spec(path)
    with pytest.raises(SpecError) as served:
        server.submit(bad, source=str(path))
    assert str(served.value) == str(local.value)
    missing = fake_spec("grid", "m", data={"source": "npz", "path": str(tmp_path / "no.npz")})
    with pytest.raises(DataError, match=r"no\.npz"):
        server.submit(json.dumps(missing))
    server.submit(json.dumps(fake_spec("grid", "s")))
    with pytest.raises(Conflict, match="study 's' is queued already"):
        server.submit(json.dumps(fake_spec("grid", "s")))
    assert not [r for r in st.queue_rows(server.engine) if r.study_name in ("x", "m")]


def test_an_unwritable_artifact_directory_is_refused_at_open(tmp_path, sqlite_url: str, make_server) -> None:
    from search import UsageError

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UsageError, match="is not writable"):
        make_server(sqlite_url, artifacts=str(tmp_path / "a-file" / "models"))
