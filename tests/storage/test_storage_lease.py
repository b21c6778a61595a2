from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, event, select, text, update
from sqlalchemy.engine import Engine, make_url

from storage import (
    Lease,
    LeaseHeld,
    LeaseInfo,
    LeaseLost,
    create_engine,
    ensure_lease_table,
    is_transient,
    read_lease,
    retrying,
)
from storage._lease import _host_identity, _identity_json, _proc_stat, _process_start, leases
from tests.conftest import _conninfo


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
    other = Lease(new_engine(), "s5")
    # taken over while the holder was silent (its heartbeat starts after: a heartbeat running during
    # the takeover could refresh the row between backdating and taking it, and the test would race)
    _backdate(holder.engine, "s5")
    other.acquire()
    assert read_lease(holder.engine, "s5").owner == other.owner  # type: ignore[union-attr]
    lost = threading.Event()
    holder.start_heartbeat(0.05, on_lost=lambda e: lost.set())
    assert lost.wait(5)
    with pytest.raises(LeaseLost):
        holder.check()
    holder.release()  # does not delete the new holder's row
    assert read_lease(holder.engine, "s5") is not None


def test_context_manager(new_engine: Callable[[], Engine]) -> None:
    with Lease(new_engine(), "s6") as lease:
        assert read_lease(lease.engine, "s6").owner == lease.owner  # type: ignore[union-attr]
    assert read_lease(lease.engine, "s6") is None


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), float("-inf")])
def test_stale_after_must_be_finite_and_positive(sqlite_url: str, bad: float) -> None:
    engine = create_engine(sqlite_url)
    with pytest.raises(ValueError, match=rf"stale_after must be a finite number of seconds > 0, got {bad!r}"):
        Lease(engine, "s", stale_after=bad)
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# ensure_valid: a lease whose last good heartbeat may have gone stale is re-validated before a write


def _count_statements(engine: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cur, stmt, *a: seen.append(stmt))
    return seen


def _short_timeout_engine(url: str) -> Engine:
    """An engine whose lock waits end after 0.2 s (a database that cannot serve it now)."""
    if url.startswith("sqlite"):
        return sqlalchemy.create_engine(url, connect_args={"timeout": 0.2})
    return sqlalchemy.create_engine(url, connect_args={"options": "-c lock_timeout=200"})


@contextmanager
def _lease_row_locked(url: str) -> Iterator[Callable[[], None]]:
    """Hold a write lock on the lease row (SQLite: on the whole file) until the yielded call."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(make_url(url).database, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
    else:
        con = psycopg.connect(_conninfo(url))
        con.execute("SELECT * FROM hpsearch_leases FOR UPDATE").fetchall()
    done = {"released": False}

    def unlock() -> None:
        if not done["released"]:
            done["released"] = True
            con.rollback() if not url.startswith("sqlite") else con.execute("ROLLBACK")
            con.close()

    try:
        yield unlock
    finally:
        unlock()


def test_ensure_valid_needs_no_database_inside_the_window(new_engine: Callable[[], Engine]) -> None:
    lease = Lease(new_engine(), "v1", stale_after=1.0)
    assert lease.valid_window_s == pytest.approx(2 / 3)
    with pytest.raises(LeaseLost, match="not held by this orchestrator"):
        lease.ensure_valid()  # not acquired yet
    lease.acquire()
    seen = _count_statements(lease.engine)
    lease.ensure_valid()
    assert seen == []
    assert lease.good_heartbeat_age_s is not None and lease.good_heartbeat_age_s < lease.valid_window_s
    lease.release()
    with pytest.raises(LeaseLost, match="not held by this orchestrator"):
        lease.ensure_valid()
    assert lease.good_heartbeat_age_s is None


def test_ensure_valid_revalidates_a_lease_whose_heartbeat_fell_behind(new_engine: Callable[[], Engine]) -> None:
    lease = Lease(new_engine(), "v2", stale_after=1.0)
    lease.acquire()
    lease.start_heartbeat(3600)  # a heartbeat thread that is blocked (never ticks in this test)
    time.sleep(0.75)  # past the 2/3 s window, not yet stale
    seen = _count_statements(lease.engine)
    lease.ensure_valid()  # nobody took it over: one synchronous heartbeat, and it is ours again
    assert any(s.lstrip().upper().startswith("UPDATE HPSEARCH_LEASES") for s in seen), seen
    assert lease.good_heartbeat_age_s is not None and lease.good_heartbeat_age_s < 0.5
    assert read_lease(lease.engine, "v2").heartbeat_age_s < 0.5  # type: ignore[union-attr]
    seen.clear()
    lease.ensure_valid()
    assert seen == []  # valid again for another window
    # Even past stale_after: as long as nobody took it over, the row is still ours.
    time.sleep(1.1)
    lease.ensure_valid()
    assert read_lease(lease.engine, "v2").owner == lease.owner  # type: ignore[union-attr]
    lease.release()


def test_ensure_valid_raises_lease_lost_after_an_unseen_takeover(new_engine: Callable[[], Engine]) -> None:
    first = Lease(new_engine(), "v3", stale_after=1.0)
    first.acquire()
    first.start_heartbeat(3600)  # blocked: it does not see the takeover
    time.sleep(0.75)
    _backdate(first.engine, "v3")  # stale in the database (an outage longer than stale_after)
    second = Lease(new_engine(), "v3", stale_after=1.0)
    assert second.acquire() is not None
    first.check()  # the heartbeat thread saw nothing
    writes: list[int] = []
    with pytest.raises(LeaseLost, match="taken over by pid"):
        retrying(lambda: writes.append(1), before_attempt=first.ensure_valid, base_delay=0.001)
    assert writes == []  # raised before the write
    with pytest.raises(LeaseLost):
        first.check()  # and it stays lost
    with pytest.raises(LeaseLost):
        first.ensure_valid()
    first.release()  # leaves the new holder's row alone
    assert read_lease(second.engine, "v3").owner == second.owner  # type: ignore[union-attr]


def test_ensure_valid_lets_a_database_error_through_and_retrying_waits(url: str) -> None:
    setup = create_engine(url)
    engine = _short_timeout_engine(url)
    try:
        lease = Lease(engine, "v4", stale_after=1.0)
        lease.acquire()
        time.sleep(0.75)
        writes: list[int] = []
        with _lease_row_locked(url) as unlock:
            # The database cannot confirm the lease: the error is transient and nothing is written.
            with pytest.raises(sqlalchemy.exc.OperationalError) as info:
                lease.ensure_valid()
            assert is_transient(info.value)
            retries: list[int] = []

            def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
                retries.append(attempt)
                assert writes == []
                if attempt == 2:
                    unlock()  # the database is back

            retrying(lambda: writes.append(1), before_attempt=lease.ensure_valid, base_delay=0.01,
                     on_retry=on_retry)
        assert retries == [1, 2] and writes == [1]
        assert read_lease(setup, "v4").heartbeat_age_s < 0.5  # type: ignore[union-attr]
        lease.release()
    finally:
        engine.dispose()
        setup.dispose()


# ---------------------------------------------------------------------------------------------
# Holder identity (host identity and process start time) and the migration of older tables


def _old_schema_table(engine: Engine) -> None:
    """``hpsearch_leases`` as the first release created it (no holder_identity column)."""
    old = MetaData()
    Table(
        "hpsearch_leases",
        old,
        Column("study_name", String(512), primary_key=True),
        Column("owner", String(64), nullable=False),
        Column("host", String(255), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("acquired_at", DateTime, nullable=False),
        Column("heartbeat_at", DateTime, nullable=False),
    )
    old.create_all(engine)


def _columns(engine: Engine) -> list[str]:
    return [c["name"] for c in sqlalchemy.inspect(engine).get_columns("hpsearch_leases")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="host identity and start times from /proc")
def test_the_row_records_host_identity_and_process_start(new_engine: Callable[[], Engine]) -> None:
    lease = Lease(new_engine(), "id1")
    lease.acquire()
    info = read_lease(lease.engine, "id1")
    assert info is not None
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    assert info.host_id == lease.host_id == _host_identity()
    pid_ns = os.readlink("/proc/self/ns/pid")
    assert info.host_id.startswith(f"{socket.gethostname()} boot_id={boot_id} pid_ns={pid_ns}")
    with open("/proc/self/stat") as f:
        own_start = f.read().rsplit(")", 1)[1].split()[19]
    assert info.pid_start == lease.pid_start == own_start
    # a takeover records the new holder's identity (tied to its owner token)
    _backdate(lease.engine, "id1")
    other = Lease(new_engine(), "id1")
    other.acquire()
    taken = read_lease(lease.engine, "id1")
    assert taken is not None and taken.owner == other.owner and taken.host_id == other.host_id


def test_identity_written_for_a_previous_holder_is_ignored(new_engine: Callable[[], Engine]) -> None:
    # An older version taking over updates owner, host and pid but leaves holder_identity alone:
    # the identity then describes the previous holder and must not be believed.
    lease = Lease(new_engine(), "id2")
    lease.acquire()
    with lease.engine.begin() as conn:
        conn.execute(update(leases).where(leases.c.study_name == "id2").values(owner="old-version", pid=1))
    info = read_lease(lease.engine, "id2")
    assert info is not None and info.host_id is None and info.pid_start is None


def test_an_old_schema_table_is_migrated(url: str, new_engine: Callable[[], Engine]) -> None:
    setup = new_engine()
    _old_schema_table(setup)
    with setup.begin() as conn:
        conn.execute(
            text("INSERT INTO hpsearch_leases VALUES ('old', 'old-owner', :h, 4242, :t, :t)"),
            {"h": socket.gethostname(), "t": datetime.now(timezone.utc).replace(tzinfo=None)},
        )
    # A read-only look neither fails on nor changes an old table.
    info = read_lease(setup, "old")
    assert info is not None and info.owner == "old-owner" and info.host_id is None
    assert "holder_identity" not in _columns(setup)

    # Several processes opening it at once: each adds the column or finds it added.
    engines = [new_engine() for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def open_it(engine: Engine) -> None:
        barrier.wait()
        try:
            ensure_lease_table(engine)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_it, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert _columns(setup).count("holder_identity") == 1

    # The old row is still there; it has no identity, so the heartbeat rule applies to it.
    info = read_lease(setup, "old")
    assert info is not None and info.owner == "old-owner" and info.host_id is None and info.pid_start is None
    lease = Lease(new_engine(), "old")
    with pytest.raises(LeaseHeld):
        lease.acquire()
    _backdate(setup, "old")
    assert lease.acquire() is not None
    assert read_lease(setup, "old").host_id == lease.host_id  # type: ignore[union-attr]
    ensure_lease_table(setup)  # idempotent


# ---------------------------------------------------------------------------------------------
# Same-host takeover at once when the holder's process is gone

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="host identity and /proc are Linux's")


GHOST = "ghost-owner"


def _identity(pid: int, host_id: str | None, pid_start: str | None) -> str:
    return _identity_json(GHOST, pid, host_id, pid_start)


def _write_holder(engine: Engine, study: str, *, pid: int, identity: str | None) -> None:
    """A lease row of owner GHOST with a fresh heartbeat and the given holder_identity value."""
    ensure_lease_table(engine)
    with engine.begin() as conn:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        if conn.dialect.name == "postgresql":
            now = conn.execute(text("SELECT timezone('UTC', clock_timestamp())")).scalar_one()
        conn.execute(
            leases.insert().values(
                study_name=study,
                owner=GHOST,
                host=socket.gethostname(),
                pid=pid,
                acquired_at=now,
                heartbeat_at=now,
                holder_identity=identity,
            )
        )


def _exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextmanager
def _sleeping_child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _assert_taken_at_once(lease: Lease, previous: LeaseInfo | None, pid: int) -> None:
    assert previous is not None and previous.pid == pid and previous.heartbeat_age_s < 5
    info = read_lease(lease.engine, lease.study_name)
    assert info is not None and info.owner == lease.owner and info.pid == os.getpid()
    assert info.heartbeat_age_s < 1 and info.host_id == lease.host_id
    lease.ensure_valid()


@linux_only
def test_a_same_host_holder_whose_process_exited_is_taken_over_at_once(
    new_engine: Callable[[], Engine], caplog: pytest.LogCaptureFixture
) -> None:
    engine = new_engine()
    dead = _exited_pid()
    _write_holder(engine, "k1", pid=dead, identity=_identity(dead, _host_identity(), "12345"))
    lease = Lease(new_engine(), "k1")  # default stale_after: 30 s, the heartbeat is fresh
    with caplog.at_level("WARNING", logger="storage._lease"):
        previous = lease.acquire()
    _assert_taken_at_once(lease, previous, dead)
    assert previous.owner == GHOST  # type: ignore[union-attr]
    assert f"from pid {dead} on this host" in caplog.text and "its process no longer exists" in caplog.text


@linux_only
def test_a_killed_holder_not_yet_reaped_is_taken_over_at_once(new_engine: Callable[[], Engine]) -> None:
    with _sleeping_child() as child:
        start = _process_start(child.pid)
        assert start is not None
        engine = new_engine()
        _write_holder(engine, "k2", pid=child.pid, identity=_identity(child.pid, _host_identity(), start))
        with pytest.raises(LeaseHeld):
            Lease(new_engine(), "k2").acquire()  # alive: its heartbeat decides
        os.kill(child.pid, signal.SIGKILL)  # not waited for: a zombie, pid still taken
        deadline = time.monotonic() + 10
        while _proc_stat(child.pid) is not None and _proc_stat(child.pid)[0] != "Z":  # type: ignore[index]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        lease = Lease(new_engine(), "k2")
        _assert_taken_at_once(lease, lease.acquire(), child.pid)


@linux_only
def test_a_holder_pid_reused_by_another_process_is_taken_over_at_once(new_engine: Callable[[], Engine]) -> None:
    with _sleeping_child() as child:
        start = _process_start(child.pid)
        assert start is not None
        engine = new_engine()
        # The row names the pid of a live process, but one started at another time than the holder.
        wrong = str(int(start) - 1)
        _write_holder(engine, "k3", pid=child.pid, identity=_identity(child.pid, _host_identity(), wrong))
        lease = Lease(new_engine(), "k3")
        _assert_taken_at_once(lease, lease.acquire(), child.pid)


def test_a_live_holder_in_this_very_process_is_refused(new_engine: Callable[[], Engine]) -> None:
    first, second = Lease(new_engine(), "k4"), Lease(new_engine(), "k4")
    first.acquire()
    info = read_lease(first.engine, "k4")
    assert info is not None and info.pid == os.getpid() and info.host_id == second.host_id
    assert info.pid_start == second.pid_start
    with pytest.raises(LeaseHeld):
        second.acquire()
    assert read_lease(first.engine, "k4").owner == first.owner  # type: ignore[union-attr]


@linux_only
@pytest.mark.parametrize(
    "identity",
    ["another-host", "another-boot", "another-pid-namespace", "none-recorded", "old-row", "start-unknown"],
)
def test_a_dead_pid_under_another_identity_waits_for_the_heartbeat(
    new_engine: Callable[[], Engine], identity: str
) -> None:
    ours = _host_identity()
    assert ours is not None
    host, boot, *rest = ours.split(" ")
    host_id: str | None = {
        "another-host": " ".join(["another-host", boot, *rest]),
        "another-boot": " ".join([host, "boot_id=00000000-0000-0000-0000-000000000000", *rest]),
        "another-pid-namespace": ours.replace(os.readlink("/proc/self/ns/pid"), "pid:[1]"),
        "none-recorded": None,
        "old-row": None,
        "start-unknown": ours,
    }[identity]
    engine = new_engine()
    dead = _exited_pid()
    start = None if identity == "start-unknown" else "12345"
    _write_holder(engine, "k5", pid=dead, identity=None if identity == "old-row" else _identity(dead, host_id, start))
    lease = Lease(new_engine(), "k5")
    with pytest.raises(LeaseHeld, match=f"pid {dead} on host"):
        lease.acquire()
    _backdate(engine, "k5")  # the heartbeat rule still takes it over once stale
    previous = lease.acquire()
    assert previous is not None and previous.pid == dead


@linux_only
def test_sigkill_then_acquire_at_once_on_the_same_host(url: str, new_engine: Callable[[], Engine]) -> None:
    code = (
        "import sys, time\n"
        "from storage import Lease, create_engine\n"
        "lease = Lease(create_engine(sys.argv[1]), 'k6')\n"
        "lease.acquire(); lease.start_heartbeat()\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        lease = Lease(new_engine(), "k6")
        with pytest.raises(LeaseHeld, match=f"pid {proc.pid} on host"):
            lease.acquire()  # alive
    finally:
        proc.kill()  # SIGKILL: no release, the row keeps a fresh heartbeat
        proc.wait()
    previous = lease.acquire()  # at once, well within stale_after (30 s)
    _assert_taken_at_once(lease, previous, proc.pid)


@linux_only
def test_concurrent_acquirers_of_a_dead_same_host_holder_exactly_one_wins(new_engine: Callable[[], Engine]) -> None:
    engine = new_engine()
    dead = _exited_pid()
    _write_holder(engine, "k7", pid=dead, identity=_identity(dead, _host_identity(), "12345"))
    contenders = [Lease(new_engine(), "k7") for _ in range(4)]
    results = _race(contenders)
    won = [r for r in results if isinstance(r, tuple)]
    assert len(won) == 1, results
    assert won[0][1].pid == dead  # the winner reports the dead holder
    assert sum(isinstance(r, LeaseHeld) for r in results) == 3  # the others see a live winner


@pytest.mark.postgres
def test_a_role_that_may_not_alter_the_old_table_still_gets_leases(
    postgres_url: str, postgres_admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    owner_engine = create_engine(postgres_url)
    _old_schema_table(owner_engine)
    role = f"hpsearch_limited_{uuid.uuid4().hex[:8]}"
    postgres_admin.execute(f'CREATE ROLE "{role}" LOGIN')
    with owner_engine.begin() as conn:
        conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON hpsearch_leases TO "{role}"'))
    limited = create_engine(make_url(postgres_url).set(username=role).render_as_string(hide_password=False))
    try:
        with caplog.at_level("WARNING", logger="storage._lease"):
            lease = Lease(limited, "p1")
        assert "cannot add column holder_identity" in caplog.text
        assert "holder_identity" not in _columns(owner_engine)
        assert lease.acquire() is None
        info = read_lease(limited, "p1")
        assert info is not None and info.owner == lease.owner and info.host_id is None
        lease.heartbeat()
        with pytest.raises(LeaseHeld):
            Lease(limited, "p1").acquire()
        lease.release()
        assert read_lease(limited, "p1") is None
    finally:
        limited.dispose()
        with owner_engine.begin() as conn:
            conn.execute(text(f'REVOKE ALL ON hpsearch_leases FROM "{role}"'))
        owner_engine.dispose()
        postgres_admin.execute(f'DROP ROLE "{role}"')
