"""Read-only views of studies (``ls``, ``show``, ``best``) as JSON-able dicts.

These dicts are the ``--output json`` contract documented in the README; keys are only ever added.
They read the database with :mod:`storage`'s direct queries, which skip learning curves and
intermediate values, so they stay fast on studies with many thousands of trials.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import storage as st

__all__ = ["best_of", "list_studies", "show_study"]

_TRIAL_KEYS = ("number", "state", "value", "value_std", "params", "fold_scores", "epochs", "duration_s",
               "fail_reason", "node", "retry_of")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _engine(storage: str | None) -> Any:
    return st.create_engine(st.resolve_url(storage), create=False)


def list_studies(storage: str | None = None) -> list[dict[str, Any]]:
    """One dict per study: name, strategy, direction, trial counts by state, best value."""
    out = []
    for s in st.list_studies(_engine(storage)):
        n = s.n_trials
        out.append({
            "name": s.name,
            "direction": s.direction,
            "strategy": s.strategy,
            "n_complete": n.get("COMPLETE", 0),
            "n_pruned": n.get("PRUNED", 0),
            "n_fail": n.get("FAIL", 0),
            "n_running": n.get("RUNNING", 0),
            "n_waiting": n.get("WAITING", 0),
            "best_value": _clean(s.best_value),
            "created_at": s.created_at.isoformat() if s.created_at else None,
            "last_completed_at": s.last_completed_at.isoformat() if s.last_completed_at else None,
        })
    return out


def _trial_dict(row: Any) -> dict[str, Any]:
    d = dataclasses.asdict(row)
    return {k: _clean(d.get(k)) for k in _TRIAL_KEYS}


def show_study(name: str, storage: str | None = None, *, limit: int | None = None,
               order: str = "number") -> dict[str, Any]:
    """``{"study", "direction", "metric", "trials": [{"number", "state", "value", "params", ...}]}``."""
    engine = _engine(storage)
    attrs = st.study_attrs(engine, name)
    spec = attrs.get("hpsearch_spec") or {}
    rows = st.trial_rows(engine, name, limit=limit, order=order)
    direction = spec.get("direction") or ("maximize" if spec.get("metric") == "val_accuracy" else "minimize")
    return {
        "study": name,
        "direction": direction,
        "metric": spec.get("metric"),
        "strategy": spec.get("strategy"),
        "trials": [_trial_dict(r) for r in rows],
    }


def best_of(name: str, storage: str | None = None) -> dict[str, Any]:
    """``{"study", "number", "value", "params", "fold_scores", "test_score", ...}`` of the best trial."""
    from ._errors import UsageError

    engine = _engine(storage)
    attrs = st.study_attrs(engine, name)
    row = st.best_trial_row(engine, name)
    if row is None:
        raise UsageError(f"study {name!r} has no completed trial yet; see `hpsearch show {name!r}`")
    test = attrs.get("test_result") or None
    same = bool(test) and test.get("trial") == row.number
    return {
        "study": name,
        "metric": (attrs.get("hpsearch_spec") or {}).get("metric"),
        **_trial_dict(row),
        "test_score": test.get("test_score") if same else None,
        "test_result": test if same else None,
    }
