"""The service's queue: table ``hpsearch_queue``, one row per study submitted to ``hpsearch serve``.

The row says what the server should do with a study (``queued``: run it when slots free up;
``running``: a server runs it, or ran it until it was killed, and resumes it; ``done``,
``failed``, ``cancelled``: nothing). Everything else about the study (spec, trials, progress) is
in Optuna's tables: a restarted server needs nothing but these rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from storage._tables import create_table

__all__ = [
    "ACTIVE_STATES",
    "QUEUE_STATES",
    "QUEUE_TABLE",
    "QueueRow",
    "ensure_queue_table",
    "queue_row",
    "queue_rows",
    "queue_submit",
    "queue_transition",
]

QUEUE_TABLE = "hpsearch_queue"
QUEUE_STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
"""States in which the server still has work to do for the study (a new submit is refused)."""

_metadata = MetaData()
_queue = Table(
    QUEUE_TABLE,
    _metadata,
    Column("study_name", String(512), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("owner", String(255), nullable=True),  # the submitting token's name; NULL: no token
    Column("seq", Integer, nullable=False),  # submission order (first come, first served)
    Column("submitted_at", DateTime, nullable=False),  # naive UTC, like Optuna's columns
    Column("started_at", DateTime, nullable=True),
    Column("finished_at", DateTime, nullable=True),
    Column("message", Text, nullable=True),  # how it ended: a summary, the error, who cancelled it
)


@dataclass(frozen=True)
class QueueRow:
    """One study's queue entry."""

    study_name: str
    state: str
    priority: int
    owner: str | None
    seq: int
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    message: str | None

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-able values (times as ISO 8601 UTC)."""
        def iso(t: datetime | None) -> str | None:
            return t.replace(tzinfo=timezone.utc).isoformat() if t is not None else None

        return {"state": self.state, "priority": self.priority, "owner": self.owner,
                "submitted_at": iso(self.submitted_at), "started_at": iso(self.started_at),
                "finished_at": iso(self.finished_at), "message": self.message}


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def ensure_queue_table(engine: Engine) -> None:
    """Create ``hpsearch_queue`` if it is missing (safe when several processes race)."""
    create_table(engine, _queue)


def _row(r: Any) -> QueueRow:
    return QueueRow(r.study_name, r.state, r.priority, r.owner, r.seq, r.submitted_at, r.started_at,
                    r.finished_at, r.message)


def queue_rows(engine: Engine, states: tuple[str, ...] | None = None) -> list[QueueRow]:
    """The rows (in ``states``, if given), highest priority first, then in submission order."""
    q = select(_queue).order_by(_queue.c.priority.desc(), _queue.c.seq)
    if states is not None:
        q = q.where(_queue.c.state.in_(states))
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(q)]


def queue_row(engine: Engine, study_name: str) -> QueueRow | None:
    """Study ``study_name``'s row, or None if it was never submitted."""
    with engine.connect() as conn:
        r = conn.execute(select(_queue).where(_queue.c.study_name == study_name)).first()
    return _row(r) if r is not None else None


def queue_submit(engine: Engine, study_name: str, *, priority: int, owner: str | None) -> QueueRow | None:
    """Queue ``study_name``: insert its row, or re-queue a finished, failed or cancelled one.

    Returns the new row, or None if the study is queued or running already (nothing changed).
    The check and the write are one transaction (a conditional ``UPDATE``, or an ``INSERT`` that
    a concurrent one makes fail), so two submits of one study queue it once.
    """
    now = _now()
    with engine.begin() as conn:
        seq = (conn.execute(select(sqlalchemy.func.max(_queue.c.seq))).scalar() or 0) + 1
        values = dict(state="queued", priority=priority, owner=owner, seq=seq, submitted_at=now,
                      started_at=None, finished_at=None, message=None)
        res = conn.execute(update(_queue).where(_queue.c.study_name == study_name,
                                                _queue.c.state.not_in(ACTIVE_STATES)).values(**values))
        if res.rowcount == 0:
            if conn.execute(select(_queue.c.state).where(_queue.c.study_name == study_name)).first() is not None:
                return None
            try:
                with conn.begin_nested():
                    conn.execute(_queue.insert().values(study_name=study_name, **values))
            except IntegrityError:  # a concurrent submit inserted it first
                return None
    return queue_row(engine, study_name)


def queue_transition(engine: Engine, study_name: str, to: str, *, only_from: tuple[str, ...],
                     message: str | None = None) -> bool:
    """Move the row to state ``to`` if it is in one of ``only_from``; True if it moved.

    ``running`` stamps ``started_at``; ``done``, ``failed`` and ``cancelled`` stamp ``finished_at``.
    """
    if to not in QUEUE_STATES:
        raise ValueError(f"unknown queue state {to!r}; one of {', '.join(QUEUE_STATES)}")
    values: dict[str, Any] = {"state": to}
    if to == "running":
        values["started_at"] = _now()
    elif to in ("done", "failed", "cancelled"):
        values["finished_at"] = _now()
        values["message"] = message
    with engine.begin() as conn:
        res = conn.execute(update(_queue).where(_queue.c.study_name == study_name,
                                                _queue.c.state.in_(only_from)).values(**values))
    return res.rowcount == 1
