"""Read-only views of studies (``ls``, ``show``, ``best``) as JSON-able dicts.

These dicts are the ``--output json`` contract documented in the README; keys are only ever added.
They read the database with :mod:`storage`'s direct queries, which skip learning curves and
intermediate values, so they stay fast on studies with many thousands of trials.
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import lru_cache
from typing import Any

import storage as st
from storage import StudyAttr
from trials import metric_direction

__all__ = ["best_of", "list_studies", "progress_dict", "show_study", "study_progress", "summary_dict"]

_TRIAL_KEYS = ("number", "state", "value", "value_std", "params", "fold_scores", "epochs", "duration_s",
               "fail_reason", "node", "retry_of", "resumed_from_epoch")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _engine(storage: str | None, engine: Any = None) -> Any:
    """``engine`` if given (a server reuses its own), else one for ``storage``."""
    return engine if engine is not None else st.create_engine(st.resolve_url(storage), create=False)


def list_studies(storage: str | None = None, *, engine: Any = None) -> list[dict[str, Any]]:
    """One dict per study: name, strategy, direction, trial counts by state, best value.

    ``engine`` (a SQLAlchemy engine of the storage) is used instead of ``storage`` when given.
    """
    return [summary_dict(s) for s in st.list_studies(_engine(storage, engine))]


def summary_dict(s: st.StudySummary) -> dict[str, Any]:
    """One study of ``ls -o json``, from its :class:`storage.StudySummary`."""
    n = s.n_trials
    return {
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
    }


@lru_cache(maxsize=1024)
def _budget_of(raw: str) -> int | None:
    from .._spec import SpecError, parse_spec

    try:
        return parse_spec(json.loads(raw), stored=True).budget
    except SpecError:
        return None


def progress_dict(s: st.StudySummary, engine: Any) -> dict[str, Any]:
    """:func:`summary_dict` plus the progress: ``done`` (trials that count against the budget) and
    ``budget`` (from the stored spec; None if it has none)."""
    out = summary_dict(s)
    n = s.n_trials
    out["done"] = n.get("COMPLETE", 0) + n.get("PRUNED", 0) + n.get("FAIL", 0) - s.n_fail_retried
    # the summary carries the stored spec (engine: kept for callers; nothing more to read)
    out["budget"] = _budget_of(json.dumps(s.spec, sort_keys=True)) if s.spec is not None else None
    return out


def study_progress(name: str, storage: str | None = None, *, engine: Any = None) -> dict[str, Any] | None:
    """:func:`progress_dict` of study ``name`` with ``best`` (:func:`best_of`, None before a trial
    completed); None if there is no such study. One read transaction (:func:`storage.study_overview`)."""
    engine = _engine(storage, engine)
    try:
        view = st.study_overview(engine, name)
    except st.StudyNotFound:
        return None
    out = progress_dict(view.summary, engine)
    out["best"] = _best_dict(name, view.attrs, view.best) if view.best is not None else None
    return out


def _trial_dict(row: Any) -> dict[str, Any]:
    d = dataclasses.asdict(row)
    return {k: _clean(d.get(k)) for k in _TRIAL_KEYS}


def show_study(name: str, storage: str | None = None, *, limit: int | None = None,
               order: str = "number", engine: Any = None) -> dict[str, Any]:
    """``{"study", "direction", "metric", "strategy", "test_result", "trials": [{"number", "state", "value",
    "params", ...}]}`` (``test_result``: the final refit's, as ``best`` shows it, else None)."""
    engine = _engine(storage, engine)
    attrs = st.study_attrs(engine, name)
    spec = attrs.get(StudyAttr.SPEC) or {}
    rows = st.trial_rows(engine, name, limit=limit, order=order)
    direction = spec.get("direction") or metric_direction(spec.get("metric") or "val_accuracy")
    return {
        "study": name,
        "direction": direction,
        "metric": spec.get("metric"),
        "strategy": spec.get("strategy"),
        "test_result": attrs.get(StudyAttr.TEST_RESULT) or None,
        "trials": [_trial_dict(r) for r in rows],
        "checkpoints": checkpoint_usage(rows, attrs.get(StudyAttr.ARTIFACT_STORE) or _artifact_dir(engine),
                                        attrs.get(StudyAttr.KEPT_CHECKPOINT)),
    }


def _artifact_dir(engine: Any) -> str | None:
    """The artifact store a run on this storage uses by default (``$HPSEARCH_ARTIFACTS`` or beside SQLite)."""
    from .._artifacts import resolve_artifacts

    url = getattr(getattr(engine, "url", None), "render_as_string", None)
    return resolve_artifacts(url(hide_password=True) if url else "", None)


def checkpoint_usage(rows: Any, directory: str | None, kept: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Disk use of the checkpoints of ``rows`` in the artifact store ``directory`` (a directory, or
    ``s3://BUCKET/PREFIX/``): ``{"directory", "files", "bytes", "kept"}``;
    None when no trial has a checkpoint. A finished trial's checkpoint is deleted, so this is what the trials
    still running (or waiting to go on) hold: at most one file per trial in flight (per fold with
    ``resources.parallel_folds``), and with ``checkpoint.keep_best`` the best trial's: ``kept`` is
    ``{"trial", "checkpoint", "directory"}`` of it (the study attribute ``hpsearch_kept_checkpoint``), else None."""
    from trials import checkpoint_sizes_of

    ids = {r.checkpoint for r in rows if getattr(r, "checkpoint", None)}
    if not ids:
        return None
    files, size = 0, 0
    if directory is not None:  # one listing of the store, not one per trial (a bucket: one request)
        for sizes in checkpoint_sizes_of(directory, ids).values():
            files += len(sizes)
            size += sum(sizes.values())
    return {"directory": directory, "files": files, "bytes": size, "kept": kept or None}


def best_of(name: str, storage: str | None = None, *, engine: Any = None) -> dict[str, Any]:
    """``{"study", "number", "value", "params", "fold_scores", "test_score", ...}`` of the best trial."""
    from .._errors import UsageError

    engine = _engine(storage, engine)
    attrs = st.study_attrs(engine, name)
    row = st.best_trial_row(engine, name)
    if row is None:
        raise UsageError(f"study {name!r} has no completed trial yet; see `hpsearch show {name!r}`")
    return _best_dict(name, attrs, row)


def _best_dict(name: str, attrs: dict[str, Any], row: st.TrialRow) -> dict[str, Any]:
    """:func:`best_of`'s dict from the study's attributes and its best trial's row."""
    test = attrs.get(StudyAttr.TEST_RESULT) or None
    same = bool(test) and test.get("trial") == row.number
    failed = attrs.get(StudyAttr.REFIT_ERROR) or None
    return {
        "study": name,
        "metric": (attrs.get(StudyAttr.SPEC) or {}).get("metric"),
        **_trial_dict(row),
        "test_score": test.get("test_score") if same else None,
        "test_result": test if same else None,
        "refit_error": failed.get("reason") if failed and failed.get("trial") == row.number else None,
    }
