"""What the API answers about studies: the ``--output json`` dicts of ``ls``/``show``/``best``, plus
the queue's keys (``state``, ``priority``, ``owner``, ...) and the progress (``done``, ``budget``)."""

from __future__ import annotations

from typing import Any

import storage as st

from ..inspect._views import progress_dict, show_study, study_progress

__all__ = ["study_detail", "study_entries", "study_trials"]

_NO_ROW = {"state": None, "priority": None, "owner": None, "submitted_at": None, "started_at": None,
           "finished_at": None, "message": None}


def _entry(summary: st.StudySummary, row: st.QueueRow | None, engine: Any) -> dict[str, Any]:
    out = progress_dict(summary, engine)
    out.update(row.to_dict() if row is not None else _NO_ROW)
    return out


def study_entries(engine: Any) -> list[dict[str, Any]]:
    """Every study in the storage (also those run by ``hpsearch run``: ``state`` null), oldest first."""
    rows = {r.study_name: r for r in st.queue_rows(engine)}
    return [_entry(s, rows.get(s.name), engine) for s in st.list_studies(engine)]


def study_detail(engine: Any, name: str) -> dict[str, Any] | None:
    """One study's entry with ``best`` (``best -o json``, null before a trial completed); None if unknown."""
    out = study_progress(name, engine=engine)
    if out is None:
        return None
    row = st.queue_row(engine, name)
    best = out.pop("best")
    out.update(row.to_dict() if row is not None else _NO_ROW)
    out["best"] = best
    return out


def study_trials(engine: Any, name: str, *, limit: int | None = None, order: str = "number") -> dict[str, Any]:
    """``show NAME -o json``."""
    return show_study(name, limit=limit, order=order, engine=engine)
