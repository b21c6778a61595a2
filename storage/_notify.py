"""Where ``hpsearch serve`` sends a study's notifications: table ``hpsearch_notify``.

A study file's ``notify`` section (its webhook URL often is a secret) is never stored with the
study, whose attributes the dashboard shows; the server keeps it here, one row per study, so that
a restarted server still notifies. Nothing in the API reads this table back.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, Text, delete, select
from sqlalchemy.engine import Engine

from storage._tables import create_table

__all__ = ["NOTIFY_TABLE", "ensure_notify_table", "notify_config", "set_notify_config"]

NOTIFY_TABLE = "hpsearch_notify"

_metadata = MetaData()
_notify = Table(
    NOTIFY_TABLE,
    _metadata,
    Column("study_name", String(512), primary_key=True),
    Column("config", Text, nullable=False),  # the study file's notify section, as JSON
)


def ensure_notify_table(engine: Engine) -> None:
    """Create ``hpsearch_notify`` if it is missing (safe when several processes race)."""
    create_table(engine, _notify)


def set_notify_config(engine: Engine, study_name: str, config: dict[str, Any] | None) -> None:
    """Keep ``config`` as study ``study_name``'s notify section (None: it has none)."""
    with engine.begin() as conn:
        conn.execute(delete(_notify).where(_notify.c.study_name == study_name))
        if config is not None:
            conn.execute(_notify.insert().values(study_name=study_name, config=json.dumps(config)))


def notify_config(engine: Engine, study_name: str) -> dict[str, Any] | None:
    """Study ``study_name``'s notify section, or None."""
    with engine.connect() as conn:
        raw = conn.execute(select(_notify.c.config).where(_notify.c.study_name == study_name)).scalar()
    return json.loads(raw) if raw is not None else None
