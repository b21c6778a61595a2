"""The orchestrator lease: at most one live orchestrator per study.

Table ``hpsearch_leases`` holds one row per running study. A lease is *live* while its
``heartbeat_at`` is younger than ``stale_after`` seconds, measured on the database clock for
PostgreSQL (hosts' clocks may differ) and on the local clock for SQLite. Taking over a stale lease
is a single conditional ``UPDATE`` (compare-and-swap on the previous owner token and the staleness
threshold), so of two concurrent acquirers exactly one wins.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, delete, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from storage._errors import LeaseHeld, LeaseLost, StorageError
from storage._retry import is_transient

_logger = logging.getLogger(__name__)

LEASE_TABLE = "hpsearch_leases"
DEFAULT_STALE_AFTER_S = 30.0

metadata = MetaData()
leases = Table(
    LEASE_TABLE,
    metadata,
    Column("study_name", String(512), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("acquired_at", DateTime, nullable=False),  # naive UTC, like Optuna's own columns
    Column("heartbeat_at", DateTime, nullable=False),  # naive UTC
)


@dataclass(frozen=True)
class LeaseInfo:
    """A lease row as read from the database.

    Attributes
    ----------
    study_name : str
    owner : str
        Random token of the holding :class:`Lease` object.
    host : str
    pid : int
    acquired_at : datetime.datetime
        When the holder acquired it (timezone-aware, UTC).
    heartbeat_at : datetime.datetime
        The holder's last heartbeat (timezone-aware, UTC).
    heartbeat_age_s : float
        Seconds between the last heartbeat and the time the row was read.
    """

    study_name: str
    owner: str
    host: str
    pid: int
    acquired_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float


def _engine_of(engine: Any) -> Engine:
    """Accept an ``Engine`` or anything with an ``engine`` attribute (``RDBStorage``)."""
    return engine if isinstance(engine, Engine) else engine.engine


def ensure_lease_table(engine: Engine) -> None:
    """Create ``hpsearch_leases`` if it does not exist (safe when several processes race).

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        Engine of the study storage (``RDBStorage.engine`` works too).
    """
    engine = _engine_of(engine)
    try:
        metadata.create_all(engine, tables=[leases], checkfirst=True)
    except (ProgrammingError, IntegrityError, OperationalError):
        # Another process created it between our check and our CREATE TABLE.
        if not sqlalchemy.inspect(engine).has_table(LEASE_TABLE):
            raise


def _db_now(conn: Connection) -> datetime:
    """Current naive-UTC time: the server's clock for PostgreSQL, the local clock otherwise."""
    if conn.dialect.name == "postgresql":
        now = conn.execute(sqlalchemy.text("SELECT timezone('UTC', clock_timestamp())")).scalar_one()
        return now.replace(tzinfo=None)
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _utc(naive: datetime) -> datetime:
    return naive.replace(tzinfo=timezone.utc)


def _read(conn: Connection, study_name: str) -> LeaseInfo | None:
    row = conn.execute(select(leases).where(leases.c.study_name == study_name)).one_or_none()
    if row is None:
        return None
    now = _db_now(conn)
    return LeaseInfo(
        study_name=row.study_name,
        owner=row.owner,
        host=row.host,
        pid=row.pid,
        acquired_at=_utc(row.acquired_at),
        heartbeat_at=_utc(row.heartbeat_at),
        heartbeat_age_s=max(0.0, (now - row.heartbeat_at).total_seconds()),
    )


def read_lease(engine: Engine, study_name: str) -> LeaseInfo | None:
    """Return the current lease row of ``study_name`` (live or stale), or ``None``.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        Engine of the study storage. A missing lease table reads as "no lease".
    study_name : str

    Returns
    -------
    LeaseInfo or None
    """
    engine = _engine_of(engine)
    with engine.connect() as conn:
        if not sqlalchemy.inspect(conn).has_table(LEASE_TABLE):
            return None
        return _read(conn, study_name)


def _insert_if_absent(conn: Connection, values: dict[str, Any]) -> bool:
    """INSERT the row unless the study already has one; True if inserted."""
    name = conn.dialect.name
    if name in ("postgresql", "sqlite"):
        dialect_insert = pg_dialect.insert if name == "postgresql" else sqlite_dialect.insert
        stmt = (
            dialect_insert(leases)
            .values(**values)
            .on_conflict_do_nothing(index_elements=[leases.c.study_name])
        )
        return conn.execute(stmt).rowcount == 1
    conn.execute(leases.insert().values(**values))  # other dialects: IntegrityError on conflict
    return True


class Lease:
    """The lease of one orchestrator on one study.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        Engine of the study storage (``RDBStorage.engine``; an ``RDBStorage`` is accepted too).
    study_name : str
    stale_after : float, default 30.0
        Seconds without heartbeat after which another orchestrator may take the lease over.

    Examples
    --------
    >>> lease = Lease(storage.engine, "mnist")          # doctest: +SKIP
    >>> previous = lease.acquire()                        # raises LeaseHeld if live elsewhere
    >>> lease.start_heartbeat()                           # every stale_after / 3 seconds
    >>> ...; lease.check()                                # raises LeaseLost if taken over
    >>> lease.release()                                   # also stops the heartbeat thread
    """

    def __init__(
        self, engine: Engine, study_name: str, *, stale_after: float = DEFAULT_STALE_AFTER_S
    ) -> None:
        if stale_after <= 0:
            raise ValueError("stale_after must be > 0")
        self.engine = _engine_of(engine)
        self.study_name = study_name
        self.stale_after = float(stale_after)
        self.owner = secrets.token_hex(16)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._heartbeat: HeartbeatThread | None = None
        ensure_lease_table(self.engine)

    def _held_message(self, holder: LeaseInfo) -> str:
        since = holder.acquired_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"study '{self.study_name}' is being run by pid {holder.pid} on host {holder.host} "
            f"since {since} (heartbeat {holder.heartbeat_age_s:.0f} s ago); wait for it to "
            f"finish, or stop it. A lease whose heartbeat is older than {self.stale_after:g} s "
            "is taken over automatically."
        )

    def acquire(self) -> LeaseInfo | None:
        """Take the lease.

        Returns
        -------
        LeaseInfo or None
            The previous holder when its stale lease was taken over (log it: its RUNNING trials
            are orphans), else ``None`` (the lease was free, or already ours).

        Raises
        ------
        LeaseHeld
            Another orchestrator holds a live lease.
        """
        for _ in range(10):
            with self.engine.begin() as conn:
                now = _db_now(conn)
                values = {
                    "study_name": self.study_name,
                    "owner": self.owner,
                    "host": self.host,
                    "pid": self.pid,
                    "acquired_at": now,
                    "heartbeat_at": now,
                }
                try:
                    inserted = _insert_if_absent(conn, values)
                except IntegrityError:
                    inserted = False
            if inserted:
                return None
            with self.engine.connect() as conn:
                current = _read(conn, self.study_name)
            if current is None:
                continue  # released in between: try inserting again
            with self.engine.begin() as conn:
                now = _db_now(conn)
                if current.owner == self.owner:
                    stmt = (
                        update(leases)
                        .where(leases.c.study_name == self.study_name, leases.c.owner == self.owner)
                        .values(heartbeat_at=now)
                    )
                    if conn.execute(stmt).rowcount == 1:
                        return None
                    continue
                if current.heartbeat_age_s < self.stale_after:
                    raise LeaseHeld(self._held_message(current), holder=current)
                # Compare-and-swap: only if the stale holder is still the holder and still stale.
                threshold = now - timedelta(seconds=self.stale_after)
                stmt = (
                    update(leases)
                    .where(
                        leases.c.study_name == self.study_name,
                        leases.c.owner == current.owner,
                        leases.c.heartbeat_at < threshold,
                    )
                    .values(
                        owner=self.owner,
                        host=self.host,
                        pid=self.pid,
                        acquired_at=now,
                        heartbeat_at=now,
                    )
                )
                if conn.execute(stmt).rowcount == 1:
                    _logger.warning(
                        "took over the stale lease of study '%s' from pid %d on host %s "
                        "(last heartbeat %.0f s ago)",
                        self.study_name,
                        current.pid,
                        current.host,
                        current.heartbeat_age_s,
                    )
                    return current
            # Lost a race (someone else took over, or the holder came back): look again.
        raise StorageError(f"could not acquire the lease of study '{self.study_name}': too much contention")

    def heartbeat(self) -> None:
        """Refresh ``heartbeat_at``.

        Raises
        ------
        LeaseLost
            The lease is no longer ours (taken over after our heartbeat went stale, or removed).
        """
        with self.engine.begin() as conn:
            now = _db_now(conn)
            stmt = (
                update(leases)
                .where(leases.c.study_name == self.study_name, leases.c.owner == self.owner)
                .values(heartbeat_at=now)
            )
            if conn.execute(stmt).rowcount == 1:
                return
            current = _read(conn, self.study_name)
        if current is None:
            raise LeaseLost(
                f"the lease of study '{self.study_name}' was removed while this orchestrator "
                f"(pid {self.pid}) held it; stop this run and resume it"
            )
        raise LeaseLost(
            f"the lease of study '{self.study_name}' was taken over by pid {current.pid} on host "
            f"{current.host} at {current.acquired_at:%Y-%m-%d %H:%M:%S} UTC because this "
            f"orchestrator's heartbeat was older than {self.stale_after:g} s; this run must stop "
            "(the other orchestrator continues the study)"
        )

    def release(self) -> None:
        """Stop the heartbeat thread (if any) and delete the lease row if it is still ours."""
        self.stop_heartbeat()
        with self.engine.begin() as conn:
            conn.execute(
                delete(leases).where(leases.c.study_name == self.study_name, leases.c.owner == self.owner)
            )

    def start_heartbeat(
        self, interval: float | None = None, *, on_lost: Callable[[LeaseLost], None] | None = None
    ) -> HeartbeatThread:
        """Start a daemon thread calling :meth:`heartbeat` every ``interval`` seconds.

        Parameters
        ----------
        interval : float, optional
            Defaults to ``stale_after / 3``.
        on_lost : callable, optional
            Called (in the heartbeat thread) with the :class:`LeaseLost` error when the lease was
            taken over; the thread then ends. :meth:`check` raises it in the caller's thread.

        Returns
        -------
        HeartbeatThread
            The started thread; :meth:`stop_heartbeat` or ``.stop()`` ends it.
        """
        self.stop_heartbeat()
        thread = HeartbeatThread(self, interval or self.stale_after / 3, on_lost)
        thread.start()
        self._heartbeat = thread
        return thread

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread started by :meth:`start_heartbeat`, if any."""
        thread, self._heartbeat = self._heartbeat, None
        if thread is not None:
            thread.stop()

    @property
    def lost(self) -> LeaseLost | None:
        """The error of the heartbeat thread if it found the lease taken over, else ``None``."""
        return self._heartbeat.lost if self._heartbeat is not None else None

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the heartbeat thread found the lease taken over."""
        if self.lost is not None:
            raise self.lost

    def __enter__(self) -> Lease:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class HeartbeatThread(threading.Thread):
    """Daemon thread refreshing a :class:`Lease`; created by :meth:`Lease.start_heartbeat`.

    Transient database errors are logged and retried at the next tick; if they last longer than
    ``stale_after`` the lease may be taken over, which the next successful tick reports.
    """

    def __init__(self, lease: Lease, interval: float, on_lost: Callable[[LeaseLost], None] | None) -> None:
        super().__init__(name=f"hpsearch-lease-{lease.study_name}", daemon=True)
        self.lease = lease
        self.interval = float(interval)
        self.on_lost = on_lost
        self.lost: LeaseLost | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.lease.heartbeat()
            except LeaseLost as e:
                self.lost = e
                _logger.error("%s", e)
                if self.on_lost is not None:
                    self.on_lost(e)
                return
            except Exception as e:
                level = logging.WARNING if is_transient(e) else logging.ERROR
                _logger.log(level, "lease heartbeat of study '%s' failed: %s", self.lease.study_name, e)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the thread to end and wait for it (not when called from the thread itself)."""
        self._stop_event.set()
        if threading.current_thread() is not self and self.is_alive():
            self.join(timeout)
