from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from storage import Lease, LeaseHeld, LeaseInfo, LeaseLost, create_engine, read_lease
from storage._lease import leases


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def new_engine(url: str) -> Iterator[Callable[[], Engine]]:
    """Make independent engines (one per simulated orchestrator); all disposed after the test."""
    made: list[Engine] = []

    def new() -> Engine:
        made.append(create_engine(url))
        return made[-1]

    yield new
    for engine in made:
        engine.dispose()


def _backdate(engine: Engine, study: str, seconds: float = 120) -> None:
    """Make the lease's heartbeat look `seconds` old (instead of sleeping)."""
    with engine.begin() as conn:
        row = conn.execute(select(leases.c.heartbeat_at).where(leases.c.study_name == study)).one()
        conn.execute(
            update(leases)
            .where(leases.c.study_name == study)
            .values(heartbeat_at=row.heartbeat_at - timedelta(seconds=seconds))
        )


def test_second_acquire_refused(new_engine: Callable[[], Engine]) -> None:
    first, second = Lease(new_engine(), "s1"), Lease(new_engine(), "s1")
    assert first.acquire() is None
    assert first.acquire() is None  # already ours
    with pytest.raises(LeaseHeld) as info:
        second.acquire()
    pattern = (
        rf"study 's1' is being run by pid {os.getpid()} on host {re.escape(socket.gethostname())} "
        r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(heartbeat \d+ s ago\); wait for it to finish, "
        r"or stop it\. A lease whose heartbeat is older than 30 s is taken over automatically\.$"
    )
    assert re.match(pattern, str(info.value)), str(info.value)
    assert info.value.holder.owner == first.owner
    assert Lease(new_engine(), "other-study").acquire() is None  # leases are per study


def test_release_lets_another_acquire(new_engine: Callable[[], Engine]) -> None:
    first, second = Lease(new_engine(), "s2"), Lease(new_engine(), "s2")
    first.acquire()
    second.release()  # not ours: no effect
    with pytest.raises(LeaseHeld):
        second.acquire()
    first.release()
    first.release()  # idempotent
    assert read_lease(first.engine, "s2") is None
    assert second.acquire() is None
    assert read_lease(first.engine, "s2").owner == second.owner  # type: ignore[union-attr]


def test_stale_lease_taken_over(new_engine: Callable[[], Engine]) -> None:
    first, second = Lease(new_engine(), "s3"), Lease(new_engine(), "s3")
    first.acquire()
    _backdate(first.engine, "s3")
    previous = second.acquire()
    assert isinstance(previous, LeaseInfo)
    assert previous.owner == first.owner and previous.pid == os.getpid()
    assert previous.heartbeat_age_s >= 119
    with pytest.raises(LeaseLost, match="taken over by pid"):
        first.heartbeat()
    with pytest.raises(LeaseHeld):
        first.acquire()


def _race(contenders: list[Lease]) -> list[object]:
    barrier = threading.Barrier(len(contenders))
    results: list[object] = [None] * len(contenders)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = ("won", contenders[i].acquire())
        except LeaseHeld as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_acquirers_exactly_one_wins(new_engine: Callable[[], Engine]) -> None:
    n = 4
    for round_ in range(3):
        study = f"race{round_}"
        holders = [Lease(new_engine(), study) for _ in range(n)]
        results = _race(holders)  # fresh insert race
        winners = [i for i, r in enumerate(results) if isinstance(r, tuple)]
        assert len(winners) == 1, results
        assert all(isinstance(r, (tuple, LeaseHeld)) for r in results)
        assert read_lease(holders[0].engine, study).owner == holders[winners[0]].owner  # type: ignore[union-attr]

        _backdate(holders[0].engine, study)
        contenders = [Lease(new_engine(), study) for _ in range(n)]
        results = _race(contenders)  # stale take-over race
        won = [r for r in results if isinstance(r, tuple)]
        assert len(won) == 1, results
        assert won[0][1].owner == holders[winners[0]].owner  # reports whom it took over from


def test_heartbeat_keeps_lease_fresh(new_engine: Callable[[], Engine]) -> None:
    holder = Lease(new_engine(), "s4", stale_after=2.0)
    holder.acquire()
    holder.start_heartbeat(0.1)
    time.sleep(2.5)  # without heartbeats the lease would now be stale
    with pytest.raises(LeaseHeld, match="older than 2 s"):
        Lease(new_engine(), "s4", stale_after=2.0).acquire()
    assert read_lease(holder.engine, "s4").heartbeat_age_s < 2.0  # type: ignore[union-attr]
    holder.check()
    holder.release()  # stops the thread too
    assert holder._heartbeat is None
    assert Lease(new_engine(), "s4").acquire() is None


def test_heartbeat_thread_reports_loss(new_engine: Callable[[], Engine]) -> None:
    holder = Lease(new_engine(), "s5")
    holder.acquire()
    lost = threading.Event()
    holder.start_heartbeat(0.05, on_lost=lambda e: lost.set())
    _backdate(holder.engine, "s5")
    Lease(new_engine(), "s5").acquire()
    assert lost.wait(5)
    with pytest.raises(LeaseLost):
        holder.check()
    holder.release()  # does not delete the new holder's row
    assert read_lease(holder.engine, "s5") is not None


def test_context_manager(new_engine: Callable[[], Engine]) -> None:
    with Lease(new_engine(), "s6") as lease:
        assert read_lease(lease.engine, "s6").owner == lease.owner  # type: ignore[union-attr]
    assert read_lease(lease.engine, "s6") is None
