"""``hpsearch export``: one row per trial (csv, json or parquet), the rows of ``show -o json``.

>>> from search.inspect import export_trials
>>> rows = export_trials("digits-tpe", storage_url="sqlite:///hpsearch.db")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .._errors import UsageError
from ._views import show_study

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EXPORT_FORMATS", "export_frame", "export_trials", "write_export"]

EXPORT_FORMATS = ("csv", "json", "parquet")
"""Formats :func:`write_export` writes."""


def _finite(v: Any) -> Any:
    """``v`` with non-finite floats (also nested) replaced by ``None``."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def export_trials(name: str, *, storage_url: str | None = None) -> list[dict[str, Any]]:
    """One dict per trial of study ``name``, in trial-number order.

    The rows are the ``trials`` of :func:`search.inspect.show_study` (what ``hpsearch show NAME -o
    json`` prints): ``number, state, value, value_std, params`` (a dict), ``fold_scores`` (a list),
    ``epochs, duration_s, fail_reason, node, retry_of``; non-finite numbers are ``None``.

    Parameters
    ----------
    name : str
        Study name.
    storage_url : str, optional
        Storage URL; else ``$HPSEARCH_STORAGE``; else ``sqlite:///hpsearch.db``.

    Returns
    -------
    list[dict]

    Raises
    ------
    StudyNotFound
        No study has that name.
    """
    return [_finite(t) for t in show_study(name, storage_url)["trials"]]


def _flat_columns(rows: Sequence[dict[str, Any]]) -> tuple[list[str], int]:
    params: list[str] = []
    n_folds = 0
    for r in rows:
        for k in r.get("params") or {}:
            if k not in params:
                params.append(k)
        n_folds = max(n_folds, len(r.get("fold_scores") or []))
    return params, n_folds


def export_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Flatten :func:`export_trials` rows into a table (the csv/parquet layout).

    ``params`` become ``param_<name>`` columns and ``fold_scores`` ``fold_<i>`` columns (``i``
    from 0); a trial without a parameter or fold has an empty cell. Integer columns (``number``,
    ``epochs``, ``retry_of``) keep an integer type with missing values.

    Parameters
    ----------
    rows : sequence of dict
        What :func:`export_trials` returns.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    params, n_folds = _flat_columns(rows)
    head = ["number", "state", "value", "value_std"]
    tail = ["epochs", "duration_s", "fail_reason", "node", "retry_of"]
    extra = [k for k in (rows[0] if rows else {}) if k not in (*head, *tail, "params", "fold_scores")]
    columns = [*head, *(f"param_{p}" for p in params), *(f"fold_{i}" for i in range(n_folds)), *tail, *extra]
    cols: dict[str, list[Any]] = {c: [] for c in columns}
    for r in rows:
        for k in (*head, *tail, *extra):
            cols[k].append(r.get(k))
        for p in params:
            cols[f"param_{p}"].append((r.get("params") or {}).get(p))
        folds = r.get("fold_scores") or []
        for i in range(n_folds):
            cols[f"fold_{i}"].append(folds[i] if i < len(folds) else None)
    data: dict[str, Any] = {}
    for col, values in cols.items():
        kinds = {type(v) for v in values if v is not None}
        if col in ("value", "value_std", "duration_s") or col.startswith("fold_"):
            data[col] = pd.array([math.nan if v is None else float(v) for v in values], dtype="float64")
        elif col in ("number", "epochs", "retry_of") or (kinds and kinds <= {int}):
            data[col] = pd.array(values, dtype="Int64")
        elif kinds and kinds <= {bool}:
            data[col] = pd.array(values, dtype="boolean")
        elif kinds and kinds <= {int, float}:
            data[col] = pd.array([math.nan if v is None else float(v) for v in values], dtype="float64")
        elif len(kinds) > 1:  # mixed categorical choices: text keeps them in one typed column
            data[col] = pd.array([None if v is None else str(v) for v in values], dtype="object")
        else:
            data[col] = pd.array(values, dtype="object")
    return pd.DataFrame(data, columns=columns)


def write_export(name: str, fmt: str, out: str | Path | None = None, *, storage_url: str | None = None,
                 stream: IO[str] | None = None) -> Path | None:
    """Write the trials of study ``name`` as csv, json or parquet.

    Parameters
    ----------
    name : str
        Study name.
    fmt : {"csv", "json", "parquet"}
        ``json`` is an array of :func:`export_trials` rows (nested ``params``, list
        ``fold_scores``); ``csv``/``parquet`` is :func:`export_frame`'s flat table.
    out : str or Path, optional
        File to write. ``None`` writes csv/json to ``stream``; parquet needs a file.
    storage_url : str, optional
        Storage URL; else ``$HPSEARCH_STORAGE``; else ``sqlite:///hpsearch.db``.
    stream : text stream, optional
        Where csv/json go when ``out`` is ``None`` (default: ``sys.stdout``).

    Returns
    -------
    Path or None
        The file written, or ``None`` when written to ``stream``.

    Raises
    ------
    UsageError
        Unknown format, parquet without ``out``, or ``out``'s directory does not exist.
    StudyNotFound
        No study has that name.
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "parquet" and out is None:
        raise UsageError("parquet is a binary format; give a file with --out FILE")
    path = Path(out) if out is not None else None
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {path.parent} does not exist")
    rows = export_trials(name, storage_url=storage_url)
    if fmt == "json":
        text = json.dumps(rows, indent=2, default=str, allow_nan=False) + "\n"
    elif fmt == "csv":
        text = export_frame(rows).to_csv(index=False)
    else:
        assert path is not None
        export_frame(rows).to_parquet(path, index=False, engine="pyarrow")
        return path
    if path is None:
        (stream or sys.stdout).write(text)
        return None
    path.write_text(text, encoding="utf-8")
    return path
