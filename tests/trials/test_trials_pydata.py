"""``data.source: python``: a data factory's arrays or Dataset, read once and split like an npz archive."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from trials import CVSpec, DataError, DataSpec, check_data, decode_labels, load_dataset

from . import data_factories as f

MOD = "tests.trials.data_factories"


def _spec(name: str, **kw) -> DataSpec:
    return DataSpec(source="python", factory=f"{MOD}:{name}", **kw)


def _rows(ds) -> np.ndarray:
    return ds.X.reshape(len(ds.X), -1)


@pytest.mark.parametrize("name", ["arrays", "tensors_with_groups", "dataset", "dataset_without_groups", "stream"])
def test_each_kind_of_return_is_read_as_the_same_data(name):
    """Arrays, tensors, a map-style and an iterable Dataset: the same rows, labels and split."""
    groups = "groups" if name in ("tensors_with_groups", "dataset") else None
    ds = load_dataset(_spec(name), CVSpec(folds=3, groups=groups), seed=0)
    X, y, g = f._arrays()
    assert len(ds.y) + len(ds.y_test) == f.N and ds.n_classes == 3
    np.testing.assert_allclose(_rows(ds), X.reshape(f.N, -1)[ds.index], rtol=1e-6)
    np.testing.assert_array_equal(decode_labels(ds.y, ds.classes), y[ds.index])
    assert ds.name == f"{MOD}:{name}"
    if groups:
        assert not set(g[ds.index]) & set(g[ds.test_index])
        for train, val in ds.folds:
            assert not set(g[ds.index][train]) & set(g[ds.index][val])
    else:
        assert ds.groups is None


def test_a_mapping_names_its_groups_and_keeps_string_labels():
    ds = load_dataset(_spec("mapping"), CVSpec(folds=3, groups="site"), seed=0)
    _, _, g = f._arrays()
    assert ds.classes == ("class-0", "class-1", "class-2")
    assert not set(g[ds.index]) & set(g[ds.test_index])


def test_a_callable_is_accepted_and_named_by_its_qualname_in_json():
    spec = DataSpec(source="python", factory=f.arrays)
    assert spec.factory is f.arrays
    assert spec.model_dump(mode="json")["factory"] == f"python callable {MOD}:arrays"
    ds = load_dataset(spec, CVSpec(folds=2), seed=0)
    assert ds.name == f"{MOD}:arrays" and len(ds.y) == 96
    stored = spec.model_dump(mode="json")
    refused = r"data\.factory was the Python callable .*:arrays, which a stored study names but cannot import; " \
              r"continue it from Python"
    with pytest.raises(ValidationError, match=refused):  # in a study file
        DataSpec(**stored)
    # a stored spec keeps the name (its study is shown, its model loads); loading its data is refused alike
    kept = DataSpec.model_validate(stored, context={"stored": True})
    for call in (lambda: check_data(kept), lambda: load_dataset(kept, CVSpec(folds=2), seed=0)):
        with pytest.raises(DataError, match=refused):
            call()


def test_check_data_imports_the_factory_without_calling_it():
    f.CALLS.clear()
    check_data(_spec("arrays"), cv=CVSpec(), seed=0)
    assert f.CALLS == []
    with pytest.raises(DataError, match=r"has no attribute 'nope'"):
        check_data(_spec("nope"), cv=CVSpec(), seed=0)


def test_changed_data_from_the_same_factory_changes_the_fingerprint(monkeypatch):
    a = load_dataset(_spec("from_env"), CVSpec(folds=2), seed=0).fingerprint()
    assert load_dataset(_spec("from_env"), CVSpec(folds=2), seed=0).fingerprint() == a
    monkeypatch.setenv("HPSEARCH_TEST_DATA_SEED", "1")
    assert load_dataset(_spec("from_env"), CVSpec(folds=2), seed=0).fingerprint() != a


def test_a_dataset_over_the_preload_limit_streams_and_an_iterable_one_is_refused_naming_its_size():
    """A map-style Dataset over data.max_preload_mb streams (tests/trials/test_trials_stream.py); an
    iterable one cannot (the folds pick samples by index): refused, naming its size and the fix."""
    ds = load_dataset(_spec("dataset", max_preload_mb=0.001), CVSpec(folds=2, groups="groups"), seed=0)
    assert ds.stream is not None and len(ds.X) == 0 and len(ds.y) + len(ds.y_test) == f.N
    with pytest.raises(DataError, match=r"\(\d+ samples of shape \(1, 4, 4\)\), more than data\.max_preload_mb=0\.001, "
                                        r"and an iterable Dataset cannot stream .* return a map-style Dataset"):
        load_dataset(_spec("stream", max_preload_mb=0.001), CVSpec(folds=2), seed=0)  # no len(): counted as read


@pytest.mark.parametrize(
    ("name", "cv", "message"),
    [
        ("missing_function", {}, r"data\.factory 'tests\.trials\.data_factories:missing_function': module "
                                 r"'tests\.trials\.data_factories' has no attribute 'missing_function'"),
        ("NOT_CALLABLE", {}, r"is a int, not a function"),
        ("raises", {}, r"data\.factory '.*:raises' raised FileNotFoundError: /data/visits\.parquet when called as "
                       r"factory\(\) on the driver; fix the factory"),
        ("wrong", {}, r"returned a mapping with keys \['features'\], without 'X' and 'y'; expected \(X, y\), "
                      r"\(X, y, groups\)"),
        ("number", {}, r"returned a builtins\.int; expected \(X, y\), \(X, y, groups\), a mapping .* or a "
                       r"torch\.utils\.data\.Dataset"),
        ("tensors_with_groups", {}, r"returned groups \(a third element\) but cv\.groups is not set; set cv\.groups: "
                                    r"groups"),
        ("arrays", {"groups": "groups"}, r"cv\.groups 'groups': .* returned no groups; return \(X, y, groups\)"),
        ("mapping", {"groups": "user"}, r"cv\.groups 'user': .* returned keys \['X', 'extra', 'site', 'y'\]"),
        ("unreadable_label", {}, r"the label of sample 7 is a Tensor of shape \(2,\), not one value; return \(x, y\)"),
        ("failing_item", {}, r"the Dataset fails on sample 3: KeyError: 'image-3\.png'; fix its __getitem__"),
        ("bare_samples", {}, r"sample 0 of the Dataset is a torch\.Tensor, so its label cannot be read"),
        ("ragged", {}, r"sample 5 has features of shape \(4,\), sample 0 of shape \(3,\); every sample needs one "
                       r"shape"),
        ("empty", {}, r"returned an empty Dataset"),
    ],
)
def test_a_factory_that_cannot_serve_is_refused_saying_what_it_returned(name, cv, message):
    with pytest.raises(DataError, match=message):
        load_dataset(_spec(name), CVSpec(folds=2, **cv), seed=0)


def test_a_module_that_does_not_import_is_named():
    for call in (lambda: check_data(DataSpec(source="python", factory="no_such_pkg.data:load")),
                 lambda: load_dataset(DataSpec(source="python", factory="no_such_pkg.data:load"), CVSpec(), 0)):
        with pytest.raises(DataError, match=r"data\.factory 'no_such_pkg\.data:load': cannot import module "
                                            r"'no_such_pkg\.data' \(ModuleNotFoundError"):
            call()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"source": "python"}, r"data\.factory .* is required when data\.source is 'python'"),
        ({"source": "digits", "factory": f"{MOD}:arrays"}, r"data\.factory is set, but data\.source is 'digits'"),
        ({"source": "python", "factory": "not a path"}, r"data\.factory must be an import path of the form "
                                                        r"'package\.module:function'"),
    ],
)
def test_the_spec_refuses_a_factory_without_its_source_and_the_reverse(kw, message):
    with pytest.raises(ValidationError, match=message):
        DataSpec(**kw)
