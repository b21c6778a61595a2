"""Grouped k-fold (``cv.groups``): no group sits in two folds, nor on both sides of the test split."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from trials import CVSpec, DataError, DataSpec, check_data, load_dataset
from trials._data import holdout_split

N, N_GROUPS = 240, 30


def _frame(seed: int = 0, n_groups: int = N_GROUPS) -> pd.DataFrame:
    """Rows of ``n_groups`` patients; each patient has one label (as a diagnosis would) and its own offset."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, n_groups, N)
    df = pd.DataFrame(rng.normal(size=(N, 3)) + patient[:, None] * 0.1, columns=["a", "b", "c"])
    df["label"] = patient % 3
    df["score"] = df["a"] * 2.0 + patient
    df["patient"] = [f"p{p:02d}" for p in patient]
    return df


def _write(tmp_path, df: pd.DataFrame, kind: str, target: str) -> DataSpec:
    path = tmp_path / f"g.{kind}"
    df = df.drop(columns=[c for c in ("label", "score") if c != target])  # the other target is no feature
    if kind == "csv":
        df.to_csv(path, index=False)
    elif kind == "parquet":
        df.to_parquet(path)
    else:
        features = df[["a", "b", "c"]].to_numpy()
        np.savez(path, X=features, y=df[target].to_numpy(), patient=df["patient"].to_numpy().astype(str))
        return DataSpec(source="npz", path=str(path))
    return DataSpec(source=kind, path=str(path), target=target)


def _assert_groups_whole(ds, patient: np.ndarray) -> None:
    search, test = patient[ds.index], patient[ds.test_index]
    assert not set(search) & set(test), "a group is on both sides of the test split"
    seen = []
    for train, val in ds.folds:
        assert not set(search[train]) & set(search[val]), "a group sits in a fold's train and validation rows"
        seen.extend(val.tolist())
    if len(ds.folds) > 1:
        assert sorted(seen) == list(range(len(ds.y)))  # every search row validates exactly once
    # Dataset.groups are the search rows' groups, as codes: equal codes exactly where the patient is equal
    assert ds.groups is not None and len(ds.groups) == len(ds.y)
    assert len(np.unique(ds.groups)) == len(set(search))
    for code in np.unique(ds.groups):
        assert len(set(search[ds.groups == code])) == 1


@pytest.mark.parametrize("kind", ["csv", "parquet", "npz"])
@pytest.mark.parametrize(("task", "target"), [("classification", "label"), ("regression", "score")])
def test_no_group_crosses_folds_or_the_test_split(tmp_path, kind, task, target):
    df = _frame()
    spec = _write(tmp_path, df, kind, target)
    cv = CVSpec(folds=4, groups="patient")
    check_data(spec, task, None, cv, seed=3)
    ds = load_dataset(spec, cv, seed=3, task=task)
    assert ds.n_features == 3  # the groups column is not a feature
    _assert_groups_whole(ds, df["patient"].to_numpy())
    assert 0.1 < len(ds.test_index) / N < 0.3  # close to data.test_fraction
    if task == "classification":  # stratified: every class in every fold's validation rows
        for _, val in ds.folds:
            assert set(ds.y[val].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_holdout_and_the_refit_split_keep_groups_whole(tmp_path, task):
    df = _frame()
    spec = _write(tmp_path, df, "csv", "label" if task == "classification" else "score")
    ds = load_dataset(spec, CVSpec(folds=1, val_fraction=0.25, groups="patient"), seed=0, task=task)
    assert len(ds.folds) == 1
    _assert_groups_whole(ds, df["patient"].to_numpy())
    tr, va = holdout_split(ds.y, 0.25, 0, stratify=task == "classification", groups=ds.groups)
    assert len(va) > 0 and not set(ds.groups[tr]) & set(ds.groups[va])


def test_grouped_folds_are_fixed_by_the_seed_and_differ_from_plain_folds(tmp_path):
    spec = _write(tmp_path, _frame(), "npz", "label")
    a = load_dataset(spec, CVSpec(folds=3, groups="patient"), seed=5)
    b = load_dataset(spec, CVSpec(folds=3, groups="patient"), seed=5)
    c = load_dataset(spec, CVSpec(folds=3, groups="patient"), seed=6)
    plain = load_dataset(spec, CVSpec(folds=3), seed=5)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.fingerprint() != plain.fingerprint() and plain.groups is None
    assert dataclasses.replace(a, groups=None).fingerprint() != a.fingerprint()  # the groups count too


def test_regrouped_rows_change_the_fingerprint(tmp_path):
    df = _frame()
    a = load_dataset(_write(tmp_path, df, "npz", "label"), CVSpec(folds=3, groups="patient"), seed=0)
    df2 = df.assign(patient=np.where(df["patient"] == "p01", "p02", df["patient"]))  # two patients merged
    (tmp_path / "g.npz").unlink()
    b = load_dataset(_write(tmp_path, df2, "npz", "label"), CVSpec(folds=3, groups="patient"), seed=0)
    assert a.fingerprint() != b.fingerprint()


# --------------------------------------------------------------------------- bad groups


def _both(spec: DataSpec, cv: CVSpec, task: str = "classification"):
    """check_data (before Ray starts) and load_dataset must refuse alike."""
    return (lambda: check_data(spec, task, None, cv, seed=0), lambda: load_dataset(spec, cv, seed=0, task=task))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_fewer_groups_than_folds_names_both_numbers_and_the_fix(tmp_path, task):
    spec = _write(tmp_path, _frame(n_groups=8), "csv", "label" if task == "classification" else "score")
    for call in _both(spec, CVSpec(folds=8, groups="patient"), task):
        with pytest.raises(DataError, match=r"search split of .*g\.csv \(test groups removed\) has \d group\(s\) in "
                                            r"cv\.groups 'patient', fewer than the 8 cv\.folds=8 needs .*; lower "
                                            r"cv\.folds to \d or fewer, or add groups"):
            call()


def test_too_few_groups_for_the_test_split(tmp_path):
    df = _frame(n_groups=3)
    for call in _both(_write(tmp_path, df, "csv", "label"), CVSpec(folds=2, groups="patient")):
        with pytest.raises(DataError, match=r"has 3 group\(s\) in cv.groups 'patient', fewer than the 5 a "
                                            r"data\.test_fraction=0\.2 split needs \(it is one of 5 stratified group "
                                            r"folds\); raise data\.test_fraction or add groups"):
            call()


def test_a_missing_groups_column_is_named_with_the_columns_there_are(tmp_path):
    spec = _write(tmp_path, _frame(), "parquet", "label")
    for call in _both(spec, CVSpec(folds=3, groups="user")):
        with pytest.raises(DataError, match=r"groups column 'user' \(cv\.groups\) not found in .*g\.parquet'; "
                                            r"columns are: a, b, c, label, patient"):
            call()


def test_a_missing_groups_array_of_an_npz_is_named(tmp_path):
    spec = _write(tmp_path, _frame(), "npz", "label")
    for call in _both(spec, CVSpec(folds=3, groups="user")):
        with pytest.raises(DataError, match=r"cv\.groups 'user' is not an array of .*g\.npz'; it holds \['X', 'y', "
                                            r"'patient'\]\. Save the groups beside X and y"):
            call()


@pytest.mark.parametrize("missing", [np.nan, None])
def test_a_missing_group_value_names_the_row(tmp_path, missing):
    df = _frame()
    df["patient"] = df["patient"].astype(object)
    df.loc[17, "patient"] = missing
    for call in _both(_write(tmp_path, df, "csv", "label"), CVSpec(folds=3, groups="patient")):
        with pytest.raises(DataError, match=r"cv\.groups 'patient': group missing \(NaN/None\) at row 17; give every "
                                            r"row a group"):
            call()


def test_the_target_cannot_be_the_groups(tmp_path):
    for call in _both(_write(tmp_path, _frame(), "csv", "label"), CVSpec(folds=3, groups="label")):
        with pytest.raises(DataError, match=r"cv\.groups 'label' is the target column"):
            call()


def test_a_source_without_groups_is_refused():
    with pytest.raises(DataError, match=r"cv\.groups 'patient' is set, but data\.source 'digits' has no groups"):
        load_dataset(DataSpec(source="digits"), CVSpec(folds=3, groups="patient"), seed=0)
    from search import SpecError, parse_spec

    with pytest.raises(SpecError, match=r"data\.source 'synthetic' has no groups; grouped folds need data\.source "
                                        r"csv or parquet"):
        parse_spec({"name": "g", "n_trials": 1, "space": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
                    "data": {"source": "synthetic"}, "cv": {"groups": "patient"}})


def test_an_empty_groups_name_is_refused():
    with pytest.raises(ValidationError, match="at least 1 character"):
        CVSpec(groups="")
