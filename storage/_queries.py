"""Fast read queries for ``hpsearch ls`` / ``show`` / ``best``.

They read Optuna's RDB tables directly with SQLAlchemy Core instead of building ``FrozenTrial``
objects: no intermediate values, no system attributes, and of the trial user attributes only the
small keys a table view shows (never ``curves``). The values they return equal what Optuna's
``study.trials`` carries for the same fields; datetimes are timezone-aware UTC (Optuna's
``FrozenTrial`` holds naive local time).
"""

from __future__ import annotations

import difflib
import json
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import sqlalchemy
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy import and_, case, func, select
from sqlalchemy.engine import Connection, Engine

from storage._errors import StudyNotFound
from storage._keys import StudyAttr, TrialAttr
from storage._optuna_compat import FIXED_PARAMS, models
from storage._url import redact

_studies = models.StudyModel.__table__
_directions = models.StudyDirectionModel.__table__
_study_attrs = models.StudyUserAttributeModel.__table__
_trials = models.TrialModel.__table__
_values = models.TrialValueModel.__table__
_params = models.TrialParamModel.__table__
_trial_system_attrs = models.TrialSystemAttributeModel.__table__
_trial_attrs = models.TrialUserAttributeModel.__table__

_ValueType = models.TrialValueModel.TrialValueType

ROW_ATTRS = (
    TrialAttr.FOLD_SCORES,
    TrialAttr.VALUE_STD,
    TrialAttr.EPOCHS,
    TrialAttr.DURATION_S,
    TrialAttr.FAIL_REASON,
    TrialAttr.NODE,
    TrialAttr.RETRY_OF,
    TrialAttr.WILL_RETRY,
    TrialAttr.ATTEMPT,
    TrialAttr.CHECKPOINT,
    TrialAttr.RESUMED_FROM_EPOCH,
)
"""Trial user attributes :func:`trial_rows` reads (``curves`` and the rest are never loaded)."""

_IN_LIST_MAX = 500  # above this many trial ids, filter params/attrs by a join instead of IN (...)


@dataclass(frozen=True)
class StudySummary:
    """One line of ``hpsearch ls``.

    Attributes
    ----------
    name : str
    study_id : int
    direction : str
        ``"minimize"`` or ``"maximize"`` (comma-joined for a multi-objective study).
    n_trials : dict[str, int]
        Number of trials per state name (every ``TrialState`` name is present).
    n_fail_retried : int
        FAIL trials marked ``will_retry`` (they do not consume budget).
    best_value : float or None
        Best COMPLETE value of objective 0 in the study's direction.
    created_at : datetime.datetime or None
        Start of the first trial, UTC (Optuna stores no study creation time).
    last_completed_at : datetime.datetime or None
        Latest ``datetime_complete`` of any finished trial, UTC.
    strategy : str or None
        ``hpsearch_spec["strategy"]`` (its ``name``/``type`` when it is a mapping).
    spec : dict or None
        The decoded ``hpsearch_spec`` study attribute.
    """

    name: str
    study_id: int
    direction: str
    n_trials: dict[str, int]
    n_fail_retried: int
    best_value: float | None
    created_at: datetime | None
    last_completed_at: datetime | None
    strategy: str | None
    spec: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def total(self) -> int:
        """All trials, any state."""
        return sum(self.n_trials.values())

    @property
    def n_used(self) -> int:
        """Trials that count against the budget: COMPLETE + PRUNED + FAIL without ``will_retry``."""
        n = self.n_trials
        return n["COMPLETE"] + n["PRUNED"] + n["FAIL"] - self.n_fail_retried


@dataclass(frozen=True, slots=True)
class TrialRow:
    """One trial as a table row.

    Attributes
    ----------
    number : int
    trial_id : int
    state : str
        ``TrialState`` name, e.g. ``"COMPLETE"``.
    value : float or None
        Objective 0 (PRUNED trials carry their last intermediate value, as in Optuna).
    value_std : float or None
    params : dict[str, Any]
        External values (the categorical choice itself, ``int`` for int parameters).
    fold_scores : list[float] or None
    epochs : int or None
    duration_s : float or None
        The ``duration_s`` attribute, else ``datetime_complete - datetime_start``.
    fail_reason : str or None
    node : str or None
    retry_of : int or None
    will_retry : bool
    attempt : int or None
    datetime_start, datetime_complete : datetime.datetime or None
        UTC, timezone-aware.
    checkpoint : str or None
        The artifact id of the trial's checkpoint (``checkpoint`` in the study file), else None.
    resumed_from_epoch : int or None
        The epoch of the checkpoint the trial went on from; None when it started at epoch 1.
    """

    number: int
    trial_id: int
    state: str
    value: float | None
    value_std: float | None
    params: dict[str, Any]
    fold_scores: list[float] | None
    epochs: int | None
    duration_s: float | None
    fail_reason: str | None
    node: str | None
    retry_of: int | None
    will_retry: bool
    attempt: int | None
    datetime_start: datetime | None
    datetime_complete: datetime | None
    checkpoint: str | None = None
    resumed_from_epoch: int | None = None


@dataclass(frozen=True)
class StudyOverview:
    """One study as :func:`study_overview` reads it.

    Attributes
    ----------
    summary : StudySummary
        Its line of ``hpsearch ls``.
    attrs : dict[str, Any]
        Its user attributes, JSON-decoded (as :func:`study_attrs`).
    best : TrialRow or None
        Its best COMPLETE trial (as :func:`best_trial_row`); ``None`` before one completed.
    """

    summary: StudySummary
    attrs: dict[str, Any]
    best: TrialRow | None


def _engine_of(engine: Any) -> Engine:
    return engine if isinstance(engine, Engine) else engine.engine


@contextmanager
def _connect(engine: Any) -> Iterator[Connection]:
    """A read transaction; a consistent snapshot (REPEATABLE READ) on PostgreSQL."""
    engine = _engine_of(engine)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def _utc(naive: datetime | None) -> datetime | None:
    return None if naive is None else naive.replace(tzinfo=timezone.utc)


def _value(value: float | None, value_type: Any) -> float | None:
    if value_type is None:
        return None
    if value_type == _ValueType.INF_POS:
        return float("inf")
    if value_type == _ValueType.INF_NEG:
        return float("-inf")
    return value


_HAS_TABLES: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def _has_studies_table(conn: Connection) -> bool:
    """Whether Optuna's tables exist (remembered per engine once they do: they are never dropped,
    and reflecting them cost every request of ``hpsearch serve`` a query)."""
    engine = conn.engine
    if _HAS_TABLES.get(engine):
        return True
    found = sqlalchemy.inspect(conn).has_table("studies")
    if found:
        _HAS_TABLES[engine] = True
    return found


def _study_names(conn: Connection) -> list[str]:
    if not _has_studies_table(conn):
        return []
    return list(conn.execute(select(_studies.c.study_name).order_by(_studies.c.study_id)).scalars())


def study_names(engine: Engine) -> list[str]:
    """Names of all studies in the storage, oldest first.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        Engine of the study storage (``RDBStorage.engine``; an ``RDBStorage`` is accepted too).

    Returns
    -------
    list[str]
    """
    with _connect(engine) as conn:
        return _study_names(conn)


def _not_found(conn: Connection, study_name: str) -> StudyNotFound:
    names = _study_names(conn)
    where = redact(conn.engine.url)
    if not names:
        msg = f"no study named '{study_name}' in storage {where}: the storage holds no studies"
    else:
        listed = ", ".join(names[:10]) + (f" (and {len(names) - 10} more)" if len(names) > 10 else "")
        msg = f"no study named '{study_name}' in storage {where}; existing studies: {listed}"
        close = difflib.get_close_matches(study_name, names, n=1)
        if close:
            msg += f". Did you mean '{close[0]}'?"
    return StudyNotFound(msg, study_name=study_name, existing=names)


def _study(conn: Connection, study_name: str) -> tuple[int, StudyDirection]:
    """Return (study_id, direction of objective 0) or raise :class:`StudyNotFound`."""
    row = None
    if _has_studies_table(conn):
        row = conn.execute(
            select(_studies.c.study_id, _directions.c.direction)
            .select_from(
                _studies.outerjoin(
                    _directions,
                    and_(_directions.c.study_id == _studies.c.study_id, _directions.c.objective == 0),
                )
            )
            .where(_studies.c.study_name == study_name)
        ).first()
    if row is None:
        raise _not_found(conn, study_name)
    return row.study_id, row.direction or StudyDirection.MINIMIZE


def _strategy(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return None
    strategy = spec.get("strategy")
    if isinstance(strategy, dict):
        strategy = strategy.get("name") or strategy.get("type") or strategy.get("kind")
    return None if strategy is None else str(strategy)


def _best(direction: StudyDirection, by_type: dict[Any, tuple[float | None, float | None]]) -> float | None:
    """Best value from per-value-type (min, max) aggregates of COMPLETE trials."""
    if direction == StudyDirection.MAXIMIZE:
        if _ValueType.INF_POS in by_type:
            return float("inf")
        if _ValueType.FINITE in by_type:
            return by_type[_ValueType.FINITE][1]
        return float("-inf") if _ValueType.INF_NEG in by_type else None
    if _ValueType.INF_NEG in by_type:
        return float("-inf")
    if _ValueType.FINITE in by_type:
        return by_type[_ValueType.FINITE][0]
    return float("inf") if _ValueType.INF_POS in by_type else None


def list_studies(engine: Engine) -> list[StudySummary]:
    """Summaries of all studies, oldest first, with a handful of aggregate queries.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        Engine of the study storage (``RDBStorage.engine``; an ``RDBStorage`` is accepted too).

    Returns
    -------
    list[StudySummary]
        Empty when the storage holds no studies (or no Optuna tables yet).
    """
    with _connect(engine) as conn:
        if not _has_studies_table(conn):
            return []
        studies = conn.execute(
            select(_studies.c.study_id, _studies.c.study_name).order_by(_studies.c.study_id)
        ).all()
        return _summaries(conn, [(sid, name) for sid, name in studies])


def _summaries(
    conn: Connection, studies: list[tuple[int, str]], *, only: int | None = None,
    specs: dict[int, Any] | None = None,
) -> list[StudySummary]:
    """The :class:`StudySummary` of ``studies`` ((id, name) pairs); ``only``: they are that one
    study, and every query is restricted to it; ``specs``: their decoded specs, read already."""

    def restrict(stmt: Any, column: Any) -> Any:
        return stmt if only is None else stmt.where(column == only)

    directions: dict[int, list[StudyDirection]] = {}
    for sid, _, direction in conn.execute(
        restrict(select(_directions.c.study_id, _directions.c.objective, _directions.c.direction),
                 _directions.c.study_id).order_by(_directions.c.study_id, _directions.c.objective)
    ):
        directions.setdefault(sid, []).append(direction)
    counts: dict[int, dict[str, int]] = {}
    times: dict[int, tuple[datetime | None, datetime | None]] = {}
    for sid, state, n, first, last in conn.execute(
        restrict(
            select(
                _trials.c.study_id,
                _trials.c.state,
                func.count(),
                func.min(_trials.c.datetime_start),
                func.max(_trials.c.datetime_complete),
            ),
            _trials.c.study_id,
        ).group_by(_trials.c.study_id, _trials.c.state)
    ):
        counts.setdefault(sid, {})[state.name] = n
        was_first, was_last = times.get(sid, (None, None))
        times[sid] = (
            first if was_first is None or (first is not None and first < was_first) else was_first,
            last if was_last is None or (last is not None and last > was_last) else was_last,
        )
    best: dict[int, dict[Any, tuple[float | None, float | None]]] = {}
    for sid, value_type, vmin, vmax in conn.execute(
        restrict(
            select(_trials.c.study_id, _values.c.value_type, func.min(_values.c.value), func.max(_values.c.value))
            .select_from(_trials.join(_values, _values.c.trial_id == _trials.c.trial_id))
            .where(_trials.c.state == TrialState.COMPLETE, _values.c.objective == 0),
            _trials.c.study_id,
        ).group_by(_trials.c.study_id, _values.c.value_type)
    ):
        best.setdefault(sid, {})[value_type] = (vmin, vmax)
    retried = dict(
        conn.execute(
            restrict(
                select(_trials.c.study_id, func.count())
                .select_from(_trials.join(_trial_attrs, _trial_attrs.c.trial_id == _trials.c.trial_id))
                .where(
                    _trials.c.state == TrialState.FAIL,
                    _trial_attrs.c.key == TrialAttr.WILL_RETRY,
                    _trial_attrs.c.value_json == "true",
                ),
                _trials.c.study_id,
            ).group_by(_trials.c.study_id)
        ).all()
    )
    if specs is None:
        specs = {
            sid: json.loads(value_json)
            for sid, value_json in conn.execute(
                restrict(
                    select(_study_attrs.c.study_id, _study_attrs.c.value_json).where(
                        _study_attrs.c.key == StudyAttr.SPEC
                    ),
                    _study_attrs.c.study_id,
                )
            )
        }

    summaries = []
    for sid, name in studies:
        dirs = directions.get(sid) or [StudyDirection.MINIMIZE]
        n_trials = {state.name: 0 for state in TrialState}
        n_trials.update(counts.get(sid, {}))
        first, last = times.get(sid, (None, None))
        spec = specs.get(sid)
        summaries.append(
            StudySummary(
                name=name,
                study_id=sid,
                direction=",".join(d.name.lower() for d in dirs),
                n_trials=n_trials,
                n_fail_retried=retried.get(sid, 0),
                best_value=_best(dirs[0], best.get(sid, {})),
                created_at=_utc(first),
                last_completed_at=_utc(last),
                strategy=_strategy(spec),
                spec=spec if isinstance(spec, dict) else None,
            )
        )
    return summaries


def study_overview(engine: Engine, study_name: str) -> StudyOverview:
    """One study's summary, user attributes and best trial, read in one transaction.

    What ``hpsearch serve`` answers for ``GET /studies/NAME``: the queries of :func:`list_studies`,
    :func:`study_attrs` and :func:`best_trial_row`, restricted to this study.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
    study_name : str

    Returns
    -------
    StudyOverview

    Raises
    ------
    StudyNotFound
        No study has that name.
    """
    with _connect(engine) as conn:
        study_id, direction = _study(conn, study_name)
        attrs = _study_attrs_of(conn, study_id)
        (summary,) = _summaries(conn, [(study_id, study_name)], only=study_id,
                                specs={study_id: attrs[StudyAttr.SPEC]} if StudyAttr.SPEC in attrs else {})
        best = None
        if summary.n_trials["COMPLETE"]:
            rows = _trial_rows(conn, study_id, direction, [TrialState.COMPLETE], 1, "best")
            best = rows[0] if rows else None
    return StudyOverview(summary=summary, attrs=attrs, best=best)


def _state_list(states: Iterable[TrialState | str] | None) -> list[TrialState] | None:
    if states is None:
        return None
    return [s if isinstance(s, TrialState) else TrialState[str(s).upper()] for s in states]


def _best_order(direction: StudyDirection) -> list[Any]:
    """ORDER BY for "best first": COMPLETE with a value by value, then the rest by number."""
    has_value = and_(_trials.c.state == TrialState.COMPLETE, _values.c.value_type.is_not(None))
    maximize = direction == StudyDirection.MAXIMIZE
    inf_first, inf_last = (
        (_ValueType.INF_POS, _ValueType.INF_NEG) if maximize else (_ValueType.INF_NEG, _ValueType.INF_POS)
    )
    rank = case(
        (_values.c.value_type == inf_first, -1),
        (_values.c.value_type == inf_last, 1),
        else_=0,
    )
    value = func.coalesce(_values.c.value, 0.0)
    return [
        case((has_value, 0), else_=1),
        case((has_value, rank), else_=0),
        case((has_value, -value if maximize else value), else_=0.0),
        _trials.c.number,
    ]


def trial_rows(
    engine: Engine,
    study_name: str,
    *,
    states: Iterable[TrialState | str] | None = None,
    limit: int | None = None,
    order: Literal["number", "best"] = "number",
) -> list[TrialRow]:
    """The trials of a study as table rows.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        Engine of the study storage (``RDBStorage.engine``; an ``RDBStorage`` is accepted too).
    study_name : str
    states : iterable of TrialState or str, optional
        Only trials in these states (names like ``"COMPLETE"`` are accepted).
    limit : int, optional
        At most this many rows (after ordering).
    order : {"number", "best"}, default "number"
        ``"best"``: COMPLETE trials best first in the study's direction (ties: lowest number),
        then all other trials by number.

    Returns
    -------
    list[TrialRow]

    Raises
    ------
    StudyNotFound
        No study has that name.
    """
    if order not in ("number", "best"):
        raise ValueError(f"order must be 'number' or 'best', not {order!r}")
    state_list = _state_list(states)
    with _connect(engine) as conn:
        study_id, direction = _study(conn, study_name)
        return _trial_rows(conn, study_id, direction, state_list, limit, order)


def _trial_rows(
    conn: Connection, study_id: int, direction: StudyDirection, state_list: list[TrialState] | None,
    limit: int | None, order: str,
) -> list[TrialRow]:
    """:func:`trial_rows` of the study with id ``study_id``, inside ``conn``'s transaction."""
    query = (
        select(
            _trials.c.trial_id,
            _trials.c.number,
            _trials.c.state,
            _trials.c.datetime_start,
            _trials.c.datetime_complete,
            _values.c.value,
            _values.c.value_type,
        )
        .select_from(
            _trials.outerjoin(
                _values, and_(_values.c.trial_id == _trials.c.trial_id, _values.c.objective == 0)
            )
        )
        .where(_trials.c.study_id == study_id)
    )
    if state_list is not None:
        query = query.where(_trials.c.state.in_(state_list))
    query = query.order_by(*(_best_order(direction) if order == "best" else [_trials.c.number]))
    if limit is not None:
        query = query.limit(limit)
    rows = conn.execute(query).all()
    ids = [r.trial_id for r in rows]
    if not ids:
        return []

    def restrict(stmt: Any, table: Any) -> Any:
        if len(ids) <= _IN_LIST_MAX:
            return stmt.where(table.c.trial_id.in_(ids))
        stmt = stmt.join(_trials, _trials.c.trial_id == table.c.trial_id).where(
            _trials.c.study_id == study_id
        )
        return stmt if state_list is None else stmt.where(_trials.c.state.in_(state_list))

    params: dict[int, dict[str, Any]] = {}
    dists: dict[str, BaseDistribution] = {}
    param_query = select(
        _params.c.trial_id, _params.c.param_name, _params.c.param_value, _params.c.distribution_json
    ).select_from(_params)
    for trial_id, name, internal, dist_json in conn.execute(
        restrict(param_query, _params).order_by(_params.c.param_id)
    ):
        dist = dists.get(dist_json)
        if dist is None:
            dist = dists[dist_json] = json_to_distribution(dist_json)
        params.setdefault(trial_id, {})[name] = dist.to_external_repr(internal)

    # a WAITING trial (a queued re-run) has no params rows yet: Optuna keeps them in its
    # FIXED_PARAMS system attribute until the trial is asked for
    waiting = [r.trial_id for r in rows if r.state == TrialState.WAITING and r.trial_id not in params]
    if waiting:
        fixed_query = select(_trial_system_attrs.c.trial_id, _trial_system_attrs.c.value_json).where(
            _trial_system_attrs.c.key == FIXED_PARAMS, _trial_system_attrs.c.trial_id.in_(waiting))
        for trial_id, value_json in conn.execute(fixed_query):
            params[trial_id] = dict(json.loads(value_json))

    attrs: dict[int, dict[str, Any]] = {}
    attr_query = (
        select(_trial_attrs.c.trial_id, _trial_attrs.c.key, _trial_attrs.c.value_json)
        .select_from(_trial_attrs)
        .where(_trial_attrs.c.key.in_(ROW_ATTRS))
    )
    for trial_id, key, value_json in conn.execute(restrict(attr_query, _trial_attrs)):
        attrs.setdefault(trial_id, {})[key] = json.loads(value_json)

    result = []
    for r in rows:
        a = attrs.get(r.trial_id, {})
        start, complete = _utc(r.datetime_start), _utc(r.datetime_complete)
        duration = a.get(TrialAttr.DURATION_S)
        # absent: the span in the database; stored as null: unknown (a trial whose orchestrator died)
        if TrialAttr.DURATION_S not in a and start is not None and complete is not None:
            duration = (complete - start).total_seconds()
        result.append(
            TrialRow(
                number=r.number,
                trial_id=r.trial_id,
                state=r.state.name,
                value=_value(r.value, r.value_type),
                value_std=a.get(TrialAttr.VALUE_STD),
                params=params.get(r.trial_id, {}),
                fold_scores=a.get(TrialAttr.FOLD_SCORES),
                epochs=a.get(TrialAttr.EPOCHS),
                duration_s=duration,
                fail_reason=a.get(TrialAttr.FAIL_REASON),
                node=a.get(TrialAttr.NODE),
                retry_of=a.get(TrialAttr.RETRY_OF),
                will_retry=bool(a.get(TrialAttr.WILL_RETRY, False)),
                attempt=a.get(TrialAttr.ATTEMPT),
                datetime_start=start,
                datetime_complete=complete,
                checkpoint=a.get(TrialAttr.CHECKPOINT),
                resumed_from_epoch=a.get(TrialAttr.RESUMED_FROM_EPOCH),
            )
        )
    return result


def best_trial_row(engine: Engine, study_name: str) -> TrialRow | None:
    """The best COMPLETE trial in the study's direction (ties: lowest number), or ``None``.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
    study_name : str

    Returns
    -------
    TrialRow or None
        ``None`` when no trial is COMPLETE.

    Raises
    ------
    StudyNotFound
        No study has that name.
    """
    rows = trial_rows(engine, study_name, states=[TrialState.COMPLETE], limit=1, order="best")
    return rows[0] if rows else None


def study_attrs(engine: Engine, study_name: str) -> dict[str, Any]:
    """The study's user attributes, JSON-decoded (``hpsearch_spec``, ``test_result``, ...).

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
    study_name : str

    Returns
    -------
    dict[str, Any]

    Raises
    ------
    StudyNotFound
        No study has that name.
    """
    with _connect(engine) as conn:
        study_id, _ = _study(conn, study_name)
        return _study_attrs_of(conn, study_id)


def _study_attrs_of(conn: Connection, study_id: int) -> dict[str, Any]:
    return {
        key: json.loads(value_json)
        for key, value_json in conn.execute(
            select(_study_attrs.c.key, _study_attrs.c.value_json).where(_study_attrs.c.study_id == study_id)
        )
    }
