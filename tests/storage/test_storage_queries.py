from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from sqlalchemy import event

from storage import (
    StudyNotFound,
    TrialRow,
    best_trial_row,
    create_storage,
    list_studies,
    study_attrs,
    study_overview,
    trial_rows,
)

DISTS = {
    "dropout": FloatDistribution(0.0, 0.5),
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "units": IntDistribution(16, 256, step=16),
    "batch": IntDistribution(8, 512, log=True),
    "act": CategoricalDistribution(["relu", "tanh", "gelu"]),
    "mixed": CategoricalDistribution([None, True, 3, 2.5, "x"]),
}
SPEC = {"name": "mnist", "strategy": {"name": "tpe"}, "n_trials": 20}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest) -> Iterator[optuna.storages.RDBStorage]:
    rdb = create_storage(request.getfixturevalue(f"{request.param}_url"))
    yield rdb
    rdb.engine.dispose()


def _fill(study: optuna.Study) -> None:
    """Trials in every state, with the hpsearch attribute contract (and curves, never read)."""
    for i in range(8):
        trial = study.ask(DISTS)
        trial.set_user_attr("fold_scores", [0.1 * i, 0.1 * i + 0.02])
        trial.set_user_attr("value_std", 0.01)
        trial.set_user_attr("fold_epochs", [3, 4])
        trial.set_user_attr("epochs", 4)
        trial.set_user_attr("node", f"node-{i % 2}")
        trial.set_user_attr("curves", {"val_loss": [[1.0, 0.5, 0.4], [1.0, 0.6, 0.3]]})
        if i != 2:
            trial.set_user_attr("duration_s", 1.5 + i)
        for step in range(3):
            trial.report(1.0 / (step + 1 + i), step)
        if i in (0, 1, 2, 3):
            study.tell(trial, [0.5, 0.4, 0.2, 0.2][i])  # trial 3 ties trial 2
        elif i == 4:
            study.tell(trial, state=TrialState.PRUNED)  # value = last intermediate value
        elif i == 5:
            trial.set_user_attr("fail_reason", "CUDA out of memory")
            trial.set_user_attr("will_retry", True)
            study.tell(trial, state=TrialState.FAIL)
        elif i == 6:
            trial.set_user_attr("retry_of", 5)
            trial.set_user_attr("attempt", 1)
            study.tell(trial, 0.35)
        # i == 7 stays RUNNING
    study.enqueue_trial({"units": 32})  # WAITING


def _check_row(row: TrialRow, frozen: optuna.trial.FrozenTrial) -> None:
    assert row.number == frozen.number
    assert row.trial_id == frozen._trial_id
    assert row.state == frozen.state.name
    assert row.value == frozen.value
    # a WAITING trial's params are the ones it was queued with (Optuna shows none until it is asked for)
    params = frozen.system_attrs.get("fixed_params", {}) if frozen.state == TrialState.WAITING else frozen.params
    assert row.params == params
    for name, value in row.params.items():
        assert type(value) is type(params[name]), name
    attrs = frozen.user_attrs
    assert row.fold_scores == attrs.get("fold_scores")
    assert row.value_std == attrs.get("value_std")
    assert row.epochs == attrs.get("epochs")
    assert row.node == attrs.get("node")
    assert row.fail_reason == attrs.get("fail_reason")
    assert row.retry_of == attrs.get("retry_of")
    assert row.attempt == attrs.get("attempt")
    assert row.will_retry == attrs.get("will_retry", False)

    def local(dt: datetime | None) -> datetime | None:
        return None if dt is None else dt.astimezone().replace(tzinfo=None)

    assert local(row.datetime_start) == frozen.datetime_start
    assert local(row.datetime_complete) == frozen.datetime_complete
    if "duration_s" in attrs:
        assert row.duration_s == attrs["duration_s"]
    elif frozen.datetime_complete is not None:
        assert row.duration_s == pytest.approx(frozen.duration.total_seconds())  # type: ignore[union-attr]
    else:
        assert row.duration_s is None


def test_rows_match_optuna(storage: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=storage, study_name="q", direction="minimize")
    study.set_user_attr("hpsearch_spec", SPEC)
    study.set_user_attr("test_result", {"trial": 2, "test_accuracy": 0.9})
    _fill(study)
    frozen = optuna.load_study(study_name="q", storage=storage).trials
    assert {t.state for t in frozen} == set(TrialState)

    rows = trial_rows(storage.engine, "q")
    assert len(rows) == len(frozen) == 9
    for row, trial in zip(rows, frozen, strict=True):
        _check_row(row, trial)
    assert not hasattr(rows[0], "curves")

    best = best_trial_row(storage.engine, "q")
    assert best is not None and best.number == 2  # tie with trial 3 -> lowest number
    assert best.value == study.best_value == study.best_trial.value
    _check_row(best, frozen[2])

    by_best = trial_rows(storage, "q", order="best")  # RDBStorage accepted as well
    assert [r.number for r in by_best] == [2, 3, 6, 1, 0, 4, 5, 7, 8]
    assert [r.number for r in trial_rows(storage.engine, "q", order="best", limit=2)] == [2, 3]
    assert [r.number for r in trial_rows(storage.engine, "q", states=["FAIL", TrialState.PRUNED])] == [4, 5]
    assert [r.number for r in trial_rows(storage.engine, "q", limit=3)] == [0, 1, 2]

    assert study_attrs(storage.engine, "q") == study.user_attrs


def test_list_studies(storage: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=storage, study_name="q")
    study.set_user_attr("hpsearch_spec", SPEC)
    _fill(study)
    maxi = optuna.create_study(storage=storage, study_name="m", direction="maximize")
    maxi.add_trial(create_trial(value=1.0))
    maxi.add_trial(create_trial(value=3.0))
    optuna.create_study(storage=storage, study_name="empty")

    summaries = {s.name: s for s in list_studies(storage.engine)}
    assert list(summaries) == ["q", "m", "empty"]
    q = summaries["q"]
    assert q.direction == "minimize" and q.strategy == "tpe" and q.spec == SPEC
    assert q.n_trials == {"RUNNING": 1, "COMPLETE": 5, "PRUNED": 1, "FAIL": 1, "WAITING": 1}
    assert q.total == 9 and q.n_fail_retried == 1 and q.n_used == 6
    assert q.best_value == pytest.approx(study.best_value)
    frozen = study.trials
    assert q.created_at.astimezone().replace(tzinfo=None) == min(
        t.datetime_start for t in frozen if t.datetime_start
    )  # type: ignore[union-attr]
    assert q.last_completed_at.astimezone().replace(tzinfo=None) == max(  # type: ignore[union-attr]
        t.datetime_complete for t in frozen if t.datetime_complete
    )
    assert summaries["m"].best_value == 3.0 and summaries["m"].direction == "maximize"
    assert summaries["m"].strategy is None
    empty = summaries["empty"]
    assert empty.total == 0 and empty.best_value is None and empty.created_at is None
    assert best_trial_row(storage.engine, "empty") is None
    assert trial_rows(storage.engine, "empty") == []


def test_infinite_values(storage: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=storage, study_name="inf", direction="maximize")
    for value in (1.0, float("inf"), float("-inf")):
        study.add_trial(create_trial(value=value))
    rows = trial_rows(storage.engine, "inf", order="best")
    assert [r.value for r in rows] == [math.inf, 1.0, -math.inf]
    assert best_trial_row(storage.engine, "inf").number == study.best_trial.number == 1  # type: ignore[union-attr]
    assert list_studies(storage.engine)[0].best_value == math.inf


def test_study_not_found(storage: optuna.storages.RDBStorage) -> None:
    with pytest.raises(StudyNotFound, match="holds no studies"):
        trial_rows(storage.engine, "nope")
    for i in range(12):
        optuna.create_study(storage=storage, study_name=f"study-{i:02d}")
    with pytest.raises(StudyNotFound) as info:
        best_trial_row(storage.engine, "study-1")
    msg = str(info.value)
    assert "no study named 'study-1'" in msg
    assert "study-00, study-01" in msg and "study-09 (and 2 more)" in msg and "study-10," not in msg
    assert "Did you mean" in msg
    assert info.value.existing[-1] == "study-11"
    with pytest.raises(StudyNotFound):
        study_attrs(storage.engine, "nope")


def test_table_views_skip_heavy_data(storage: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=storage, study_name="q")
    _fill(study)
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(f"{statement} {parameters}")

    event.listen(storage.engine, "before_cursor_execute", record)
    try:
        list_studies(storage.engine)
        trial_rows(storage.engine, "q")
        trial_rows(storage.engine, "q", limit=2)
        best_trial_row(storage.engine, "q")
    finally:
        event.remove(storage.engine, "before_cursor_execute", record)
    assert statements
    joined = "\n".join(statements)
    assert "trial_intermediate_values" not in joined
    # system attributes are read for WAITING trials' queued params only
    assert all("'fixed_params'" in st or "fixed_params" in st for st in statements if "trial_system_attributes" in st)
    assert "curves" not in joined and "fold_epochs" not in joined


def test_a_queued_re_run_shows_its_params_and_an_unknown_duration_stays_unknown(
    storage: optuna.storages.RDBStorage,
) -> None:
    """Before: a WAITING re-run listed empty params (Optuna keeps them in a system attribute until
    it is asked for), and a trial whose orchestrator died counted the downtime as its seconds."""
    study = optuna.create_study(study_name="queued", storage=storage)
    dead = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)})
    dead.set_user_attr("duration_s", None)
    dead.set_user_attr("retry_of", None)
    study.tell(dead, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial({"lr": dead.params["lr"]}, user_attrs={"retry_of": dead.number})
    rows = {r.number: r for r in trial_rows(storage.engine, "queued")}
    assert rows[1].state == "WAITING" and rows[1].params == {"lr": dead.params["lr"]} and rows[1].retry_of == 0
    assert rows[0].duration_s is None


def test_study_overview_is_what_the_separate_queries_give_for_that_study_alone(
    storage: optuna.storages.RDBStorage,
) -> None:
    """``GET /studies/NAME``'s one read: the study's ``list_studies`` entry, ``study_attrs`` and
    ``best_trial_row``, and nothing of the other studies (before: every study was summarised)."""
    study = optuna.create_study(storage=storage, study_name="q")
    study.set_user_attr("hpsearch_spec", SPEC)
    study.set_user_attr("test_result", {"trial": 2, "test_score": 0.9})
    _fill(study)
    other = optuna.create_study(storage=storage, study_name="other", direction="maximize")
    other.add_trial(create_trial(value=7.0))
    inf = optuna.create_study(storage=storage, study_name="inf", direction="maximize")
    for value in (1.0, float("inf")):
        inf.add_trial(create_trial(value=value))
    multi = optuna.create_study(storage=storage, study_name="multi", directions=["maximize", "minimize"])
    multi.add_trial(create_trial(values=[1.0, 2.0]))
    empty = optuna.create_study(storage=storage, study_name="empty")
    empty.set_user_attr("hpsearch_spec", SPEC)
    summaries = {s.name: s for s in list_studies(storage.engine)}
    for name in summaries:
        view = study_overview(storage.engine, name)
        assert view.summary == summaries[name], name
        assert view.summary.spec == summaries[name].spec, name  # not compared by ==
        assert view.attrs == study_attrs(storage.engine, name), name
        assert view.best == best_trial_row(storage.engine, name), name
    assert study_overview(storage.engine, "q").best.number == 2  # type: ignore[union-attr]
    assert study_overview(storage.engine, "inf").best.value == math.inf  # type: ignore[union-attr]
    assert study_overview(storage.engine, "multi").summary.direction == "maximize,minimize"
    assert study_overview(storage.engine, "empty").best is None

    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(storage.engine, "before_cursor_execute", record)
    try:
        study_overview(storage.engine, "other")
    finally:
        event.remove(storage.engine, "before_cursor_execute", record)
    # every statement but the name lookup is restricted to the study's id (none reads all studies)
    lookups = [s for s in statements if "study_name" in s]
    assert len(lookups) == 1
    assert all("study_id = " in s or "trial_id IN" in s for s in statements if s not in lookups), statements
    with pytest.raises(StudyNotFound, match="Did you mean 'other'"):
        study_overview(storage.engine, "othr")
