"""The orchestrator lease: at most one live orchestrator per study.

Table ``hpsearch_leases`` holds one row per running study. A lease is *live* while its
``heartbeat_at`` is younger than ``stale_after`` seconds, measured on the database clock for
PostgreSQL (hosts' clocks may differ) and on the local clock for SQLite. Taking over a stale lease
is a single conditional ``UPDATE`` (compare-and-swap on the previous owner token and the staleness
threshold), so of two concurrent acquirers exactly one wins.

A holder that runs on this very host (same hostname, kernel boot id, PID and time namespaces: see
:attr:`Lease.host_id`) and whose process is gone (its pid unused, a zombie, or reused by a process
started at another time) is taken over at once, without waiting for its heartbeat to age: after a
``kill -9``, a resume on the same machine need not wait ``stale_after``. Other holders (another
host or container, rows of older versions) are judged by their heartbeat alone.

The holder calls :meth:`Lease.ensure_valid` before every database write (as the ``before_attempt``
hook of :func:`storage.retrying`): a lease whose last good heartbeat may have gone stale (the
heartbeat thread fell behind, the database was unreachable) is re-validated first, so a retried
write never lands after an unseen takeover unless it takes longer than ``stale_after / 3`` itself.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, delete, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from storage._errors import LeaseHeld, LeaseLost, StorageError
from storage._retry import is_transient
from storage._tables import create_table

_logger = logging.getLogger(__name__)

LEASE_TABLE = "hpsearch_leases"
DEFAULT_STALE_AFTER_S = 30.0
_SAFE_FRACTION = 2 / 3
"""Share of ``stale_after`` after a good heartbeat during which :meth:`Lease.ensure_valid` trusts it.

The heartbeat runs every ``stale_after / 3``; a write that starts inside ``2/3 * stale_after``
still has ``stale_after / 3`` to land before another orchestrator may take the lease over.
"""

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
    # JSON {"owner", "pid", "host_id", "pid_start"} of the holding process (see _identity_json);
    # added after the first release: NULL in rows of older versions, added to older tables.
    Column("holder_identity", Text, nullable=True),
)

_ADDED_COLUMNS = ("holder_identity",)
"""Columns newer than the table: :func:`ensure_lease_table` adds those missing (``ADD COLUMN``)."""

_SQLSTATE_INSUFFICIENT_PRIVILEGE = "42501"


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
    host_id : str or None
        The holder's :attr:`Lease.host_id`; ``None`` when unknown (a row written by an older
        version, a system without a boot id).
    pid_start : str or None
        The holder's :attr:`Lease.pid_start`; ``None`` when unknown.
    """

    study_name: str
    owner: str
    host: str
    pid: int
    acquired_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    host_id: str | None = None
    pid_start: str | None = None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _namespace(kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")  # e.g. "pid:[4026531836]"
    except OSError:
        return None


def _host_identity() -> str | None:
    """Who can see this process's pid: the same kernel boot and the same PID namespace.

    Two lease holders with the same identity see the same processes under the same pids, so one
    can tell whether the other's process still runs. A hostname alone cannot: it repeats across
    containers and machines. The identity is the hostname, the kernel's boot id (random per
    boot, shared by the containers of one kernel), the PID namespace (containers on one kernel
    reuse pid numbers) and, where the kernel has them, the time namespace (process start times
    read from ``/proc`` are shifted by it). Anything that differs only makes a takeover wait for
    the heartbeat; a clone of a running machine (same boot id) is the case it cannot tell.

    Returns
    -------
    str or None
        ``"HOST boot_id=... pid_ns=pid:[...] time_ns=time:[...]"``, or ``None`` where there is no
        boot id or PID namespace to read (not Linux): then the heartbeat alone decides.
    """
    boot_id = _read_text("/proc/sys/kernel/random/boot_id")
    pid_ns = _namespace("pid")
    if boot_id is None or pid_ns is None:
        return None
    parts = [socket.gethostname(), f"boot_id={boot_id}", f"pid_ns={pid_ns}"]
    time_ns = _namespace("time")  # Linux >= 5.6
    if time_ns is not None:
        parts.append(f"time_ns={time_ns}")
    return " ".join(parts)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, starttime)`` from ``/proc/PID/stat`` (fields 3 and 22), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()  # the name (field 2) may hold spaces and ")"
        return fields[0].decode("ascii"), fields[19].decode("ascii")
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid``: a token equal for one process, different for a later one.

    Parameters
    ----------
    pid : int

    Returns
    -------
    str or None
        Linux: field 22 of ``/proc/PID/stat`` (clock ticks since boot). Elsewhere psutil's
        ``create_time()`` if psutil is importable. ``None`` when it cannot be read (no such
        process, ``/proc`` mounted with ``hidepid``, no psutil).
    """
    if pid <= 0:
        return None
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[1]
    if sys.platform.startswith("linux"):
        return None
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        return f"psutil:{psutil.Process(pid).create_time()!r}"
    except Exception:  # psutil.Error (no such process, access denied) and platform oddities
        return None


def _gone_reason(holder: LeaseInfo, host_id: str | None) -> str | None:
    """Why ``holder``'s process certainly no longer runs, seen from a process with ``host_id``.

    Only for a holder with exactly our identity and a known start time (else we cannot see its
    process): its pid is unused, belongs to a zombie (killed, not yet reaped), or belongs to a
    process started at another time (the pid was reused). ``None`` when it may still run.
    """
    if host_id is None or holder.host_id != host_id or holder.pid_start is None or holder.pid <= 0:
        return None
    if os.name != "posix":  # pragma: no cover - no host identity off Linux; os.kill would signal
        return None
    try:
        os.kill(holder.pid, 0)  # signal 0: existence check only (works with /proc hidepid too)
    except ProcessLookupError:
        return "its process no longer exists"
    except PermissionError:
        pass  # exists, owned by another user: its start time decides
    except OSError:
        return None
    stat = _proc_stat(holder.pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):
            return "its process has exited (zombie, not yet reaped)"
    else:
        start = _process_start(holder.pid)
        if start is None:
            return None  # cannot read it (hidden by hidepid): it may be the holder
    if start != holder.pid_start:
        return "its pid now belongs to another process"
    return None


def _identity_json(owner: str, pid: int, host_id: str | None, pid_start: str | None) -> str:
    """The ``holder_identity`` value; tied to the owner token and pid it was written with, so that
    a takeover by an older version (which leaves this column alone) cannot lend the new holder
    the previous holder's identity."""
    return json.dumps({"owner": owner, "pid": pid, "host_id": host_id, "pid_start": pid_start}, sort_keys=True)


def _parse_identity(raw: str | None, owner: str, pid: int) -> tuple[str | None, str | None]:
    """``(host_id, pid_start)`` of a ``holder_identity`` value written for ``owner`` and ``pid``."""
    if not raw:
        return None, None
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(data, dict) or data.get("owner") != owner or data.get("pid") != pid:
        return None, None  # written for a previous holder
    host_id, pid_start = data.get("host_id"), data.get("pid_start")
    return (
        host_id if isinstance(host_id, str) else None,
        pid_start if isinstance(pid_start, str) else None,
    )


def _engine_of(engine: Any) -> Engine:
    """Accept an ``Engine`` or anything with an ``engine`` attribute (``RDBStorage``)."""
    return engine if isinstance(engine, Engine) else engine.engine


def ensure_lease_table(engine: Engine) -> None:
    """Create ``hpsearch_leases``, or add the columns an older version's table lacks.

    Safe when several processes race: a ``CREATE TABLE`` or ``ADD COLUMN`` that fails because
    another process did it first is not an error. Rows of older versions keep ``NULL`` in the
    new columns.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        Engine of the study storage (``RDBStorage.engine`` works too).

    Notes
    -----
    A PostgreSQL role that may write the table but not alter it (only its owner may) cannot add
    a missing column: that is logged as a warning, and leases then work as before (no holder
    identity, so no same-host takeover at once) until the owner opens the storage once.
    """
    _ensure_table(_engine_of(engine))


def _ensure_table(engine: Engine) -> bool:
    """:func:`ensure_lease_table`; True if every column is there (False: no permission to add)."""
    create_table(engine, leases)
    complete = True
    for name in _ADDED_COLUMNS:
        if name not in _columns(engine):
            complete = _add_column(engine, name) and complete
    return complete


def _columns(engine: Engine | Connection) -> set[str]:
    return {c["name"] for c in sqlalchemy.inspect(engine).get_columns(LEASE_TABLE)}


def _add_column(engine: Engine, name: str) -> bool:
    """``ALTER TABLE ... ADD COLUMN``; True once the column exists, False if not allowed to add it."""
    column = leases.c[name]
    ddl_type = column.type.compile(dialect=engine.dialect)
    exists = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
    stmt = sqlalchemy.text(f"ALTER TABLE {LEASE_TABLE} ADD COLUMN{exists} {name} {ddl_type}")
    try:
        with engine.begin() as conn:
            conn.execute(stmt)
    except (ProgrammingError, IntegrityError, OperationalError) as e:
        # Another process added it first (SQLite: "duplicate column name").
        if name in _columns(engine):
            return True
        if getattr(e.orig, "sqlstate", None) == _SQLSTATE_INSUFFICIENT_PRIVILEGE:
            _logger.warning(
                "cannot add column %s to table %s (%s); until the table's owner opens this storage "
                "once, a lease left by a killed run on this host is only taken over once stale",
                name,
                LEASE_TABLE,
                str(e.orig).strip().splitlines()[0] if str(e.orig).strip() else type(e.orig).__name__,
            )
            return False
        raise
    _logger.info("added column %s to table %s", name, LEASE_TABLE)
    return True


def _db_now(conn: Connection) -> datetime:
    """Current naive-UTC time: the server's clock for PostgreSQL, the local clock otherwise."""
    if conn.dialect.name == "postgresql":
        now = conn.execute(sqlalchemy.text("SELECT timezone('UTC', clock_timestamp())")).scalar_one()
        return now.replace(tzinfo=None)
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _utc(naive: datetime) -> datetime:
    return naive.replace(tzinfo=timezone.utc)


def _read(conn: Connection, study_name: str, *, identity: bool = True) -> LeaseInfo | None:
    """The lease row; ``identity=False`` for a table not migrated yet (read-only callers)."""
    columns = [c for c in leases.c if identity or c.name not in _ADDED_COLUMNS]
    row = conn.execute(select(*columns).where(leases.c.study_name == study_name)).one_or_none()
    if row is None:
        return None
    now = _db_now(conn)
    host_id, pid_start = _parse_identity(row.holder_identity if identity else None, row.owner, row.pid)
    return LeaseInfo(
        study_name=row.study_name,
        owner=row.owner,
        host=row.host,
        pid=row.pid,
        acquired_at=_utc(row.acquired_at),
        heartbeat_at=_utc(row.heartbeat_at),
        heartbeat_age_s=max(0.0, (now - row.heartbeat_at).total_seconds()),
        host_id=host_id,
        pid_start=pid_start,
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
        # Read-only: a table of an older version is read as it is, not migrated.
        return _read(conn, study_name, identity="holder_identity" in _columns(conn))


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
        Seconds without heartbeat after which another orchestrator may take the lease over; a
        finite number > 0.

    Attributes
    ----------
    owner : str
        Random token of this object, written to the row.
    host, pid : str, int
        Hostname and process id, written to the row and shown in messages.
    host_id : str or None
        Who can see this process under this pid: hostname, kernel boot id, PID namespace and
        (where the kernel has them) time namespace, e.g. ``"h boot_id=... pid_ns=pid:[...]
        time_ns=time:[...]"``. Hostnames repeat across containers and machines, pids across PID
        namespaces; a holder with the same ``host_id`` is on the same kernel and sees the same
        pids. ``None`` where there is no boot id or PID namespace (not Linux).
    pid_start : str or None
        Start time of this process (Linux: clock ticks since boot, field 22 of
        ``/proc/PID/stat``; elsewhere psutil's ``create_time()`` if installed), telling this
        process apart from a later one with the same pid. ``None`` when it cannot be read.

    Raises
    ------
    ValueError
        ``stale_after`` is not a finite number > 0 (NaN would make every lease live for ever,
        infinity would never let a dead orchestrator's lease go).

    Examples
    --------
    >>> lease = Lease(storage.engine, "mnist")          # doctest: +SKIP
    >>> previous = lease.acquire()                        # raises LeaseHeld if live elsewhere
    >>> lease.start_heartbeat()                           # every stale_after / 3 seconds
    >>> retrying(write, before_attempt=lease.ensure_valid)  # LeaseLost if taken over
    >>> ...; lease.check()                                # LeaseLost the heartbeat thread found
    >>> lease.release()                                   # also stops the heartbeat thread
    """

    def __init__(
        self, engine: Engine, study_name: str, *, stale_after: float = DEFAULT_STALE_AFTER_S
    ) -> None:
        if not (math.isfinite(stale_after) and stale_after > 0):
            raise ValueError(f"stale_after must be a finite number of seconds > 0, got {stale_after!r}")
        self.engine = _engine_of(engine)
        self.study_name = study_name
        self.stale_after = float(stale_after)
        self.owner = secrets.token_hex(16)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.host_id = _host_identity()
        self.pid_start = _process_start(self.pid)
        self._heartbeat: HeartbeatThread | None = None
        self._state_lock = threading.Lock()
        self._held = False  # acquired, and neither released nor found lost since
        self._good_at: float | None = None  # time.monotonic() when the last good heartbeat started
        self._lost: LeaseLost | None = None
        self._has_identity_column = _ensure_table(self.engine)

    @property
    def valid_window_s(self) -> float:
        """Seconds after a good heartbeat during which :meth:`ensure_valid` needs no database.

        Two thirds of ``stale_after``: a write that starts inside the window still has at least
        ``stale_after / 3`` seconds to land before another orchestrator may take the lease over.
        """
        return self.stale_after * _SAFE_FRACTION

    @property
    def good_heartbeat_age_s(self) -> float | None:
        """Seconds (local monotonic clock) since the last successful heartbeat or acquire started.

        ``None`` when the lease is not held (never acquired, released, or found lost).
        """
        with self._state_lock:
            good_at = self._good_at if self._held else None
        return None if good_at is None else time.monotonic() - good_at

    @property
    def _identity_values(self) -> dict[str, str]:
        """The ``holder_identity`` column's value, where the table has it."""
        if not self._has_identity_column:
            return {}
        return {"holder_identity": _identity_json(self.owner, self.pid, self.host_id, self.pid_start)}

    def _mark_good(self, started: float) -> None:
        """Record a heartbeat (or acquire) that started at ``started`` and committed."""
        with self._state_lock:
            if self._held and (self._good_at is None or started > self._good_at):
                self._good_at = started

    def _mark_lost(self, error: LeaseLost) -> LeaseLost:
        with self._state_lock:
            self._lost = error
            self._held = False
        return error

    def _mark_acquired(self, started: float) -> None:
        with self._state_lock:
            self._lost = None
            self._held = True
            self._good_at = started

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

        A lease whose heartbeat is older than ``stale_after`` is taken over. So is, at once, the
        lease of a holder with exactly this :attr:`host_id` (same kernel boot, same PID namespace)
        whose process is gone: no process has its pid, it is a zombie, or the pid belongs to a
        process started at another time than the holder's (``pid_start``). Any doubt (another
        host identity, a row of an older version, a process whose start time cannot be read)
        leaves it to the heartbeat.

        Returns
        -------
        LeaseInfo or None
            The previous holder when its lease was taken over (log it: its RUNNING trials are
            orphans), else ``None`` (the lease was free, or already ours).

        Raises
        ------
        LeaseHeld
            Another orchestrator holds a live lease.
        """
        for _ in range(10):
            started = time.monotonic()
            with self.engine.begin() as conn:
                now = _db_now(conn)
                values = {
                    "study_name": self.study_name,
                    "owner": self.owner,
                    "host": self.host,
                    "pid": self.pid,
                    "acquired_at": now,
                    "heartbeat_at": now,
                    **self._identity_values,
                }
                try:
                    inserted = _insert_if_absent(conn, values)
                except IntegrityError:
                    inserted = False
            if inserted:
                self._mark_acquired(started)
                return None
            with self.engine.connect() as conn:
                current = _read(conn, self.study_name, identity=self._has_identity_column)
            if current is None:
                continue  # released in between: try inserting again
            started = time.monotonic()
            with self.engine.begin() as conn:
                now = _db_now(conn)
                if current.owner == self.owner:
                    stmt = (
                        update(leases)
                        .where(leases.c.study_name == self.study_name, leases.c.owner == self.owner)
                        .values(heartbeat_at=now)
                    )
                    won = conn.execute(stmt).rowcount == 1
                    previous = gone = None
                else:
                    gone = None
                    if current.heartbeat_age_s < self.stale_after:
                        gone = _gone_reason(current, self.host_id)
                        if gone is None:
                            raise LeaseHeld(self._held_message(current), holder=current)
                    # Compare-and-swap: only if the holder is still the holder (and, unless its
                    # process is gone from this very host, still stale).
                    conditions = [leases.c.study_name == self.study_name, leases.c.owner == current.owner]
                    if gone is None:
                        conditions.append(leases.c.heartbeat_at < now - timedelta(seconds=self.stale_after))
                    stmt = (
                        update(leases)
                        .where(*conditions)
                        .values(
                            owner=self.owner,
                            host=self.host,
                            pid=self.pid,
                            acquired_at=now,
                            heartbeat_at=now,
                            **self._identity_values,
                        )
                    )
                    won = conn.execute(stmt).rowcount == 1
                    previous = current
            if not won:
                continue  # lost a race (someone else took over, or the holder came back): look again
            self._mark_acquired(started)
            if previous is not None and gone is not None:
                _logger.warning(
                    "took over the lease of study '%s' from pid %d on this host (%s) at once: %s "
                    "(last heartbeat %.0f s ago)",
                    self.study_name,
                    previous.pid,
                    previous.host,
                    gone,
                    previous.heartbeat_age_s,
                )
            elif previous is not None:
                _logger.warning(
                    "took over the stale lease of study '%s' from pid %d on host %s "
                    "(last heartbeat %.0f s ago)",
                    self.study_name,
                    previous.pid,
                    previous.host,
                    previous.heartbeat_age_s,
                )
            return previous
        raise StorageError(f"could not acquire the lease of study '{self.study_name}': too much contention")

    def heartbeat(self) -> None:
        """Refresh ``heartbeat_at``.

        Raises
        ------
        LeaseLost
            The lease is no longer ours (taken over after our heartbeat went stale, or removed);
            from then on :meth:`check` and :meth:`ensure_valid` raise it too.
        Exception
            A database error (transient or not), unchanged; the lease state is left as it was.
        """
        started = time.monotonic()
        with self.engine.begin() as conn:
            now = _db_now(conn)
            stmt = (
                update(leases)
                .where(leases.c.study_name == self.study_name, leases.c.owner == self.owner)
                .values(heartbeat_at=now)
            )
            refreshed = conn.execute(stmt).rowcount == 1
            current = None if refreshed else _read(conn, self.study_name, identity=self._has_identity_column)
        if refreshed:
            self._mark_good(started)  # only once committed
            return
        if current is None:
            raise self._mark_lost(
                LeaseLost(
                    f"the lease of study '{self.study_name}' was removed while this orchestrator "
                    f"(pid {self.pid}) held it; stop this run and resume it"
                )
            )
        raise self._mark_lost(
            LeaseLost(
                f"the lease of study '{self.study_name}' was taken over by pid {current.pid} on host "
                f"{current.host} at {current.acquired_at:%Y-%m-%d %H:%M:%S} UTC because this "
                f"orchestrator's heartbeat was older than {self.stale_after:g} s; this run must stop "
                "(the other orchestrator continues the study)"
            )
        )

    def ensure_valid(self) -> None:
        """Return only if the lease is certainly still ours; call it before every database write.

        Within :attr:`valid_window_s` (``2/3 * stale_after``) of the start of the last good
        heartbeat this needs no database: that heartbeat set ``heartbeat_at`` to a database time
        after its start, so nobody can take the lease over before ``stale_after`` seconds after
        the start have passed, and a write starting now still has at least ``stale_after / 3``
        seconds (one heartbeat interval) to land. Later (the heartbeat thread fell behind, the
        database was unreachable), one heartbeat is run here, synchronously: if the row is still
        ours the lease is valid again.

        It is a guard, not a fence: a write that takes longer than ``stale_after / 3`` to land
        after this returned (a connection stuck in TCP retransmission, say) can still land after a
        takeover, and the window assumes that the local and the database clock run at the same
        rate.

        Raises
        ------
        LeaseLost
            The lease was taken over or removed (found now or by an earlier heartbeat), or is not
            held by this object (never acquired, or released).
        Exception
            The database error of the re-validating heartbeat, unchanged: with
            ``retrying(..., before_attempt=lease.ensure_valid)`` a transient one is retried like
            a failed write (the write is not attempted meanwhile).
        """
        self.check()
        age = self.good_heartbeat_age_s
        if age is None:
            raise LeaseLost(
                f"the lease of study '{self.study_name}' is not held by this orchestrator "
                f"(pid {self.pid}): it was never acquired, or was released"
            )
        if age < self.valid_window_s:
            return
        self.heartbeat()

    def release(self) -> None:
        """Stop the heartbeat thread (if any) and delete the lease row if it is still ours.

        From its start, :meth:`ensure_valid` raises :class:`LeaseLost` (until acquired again).
        """
        self.stop_heartbeat()
        with self._state_lock:
            self._held = False
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
        """The :class:`LeaseLost` error a heartbeat (the thread's or a direct one) found, else ``None``.

        Cleared by a successful :meth:`acquire`.
        """
        return self._lost

    def check(self) -> None:
        """Raise :class:`LeaseLost` if a heartbeat found the lease taken over (no database access).

        Use :meth:`ensure_valid` before a write: it also catches a lease gone stale unseen.
        """
        if self._lost is not None:
            raise self._lost

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
