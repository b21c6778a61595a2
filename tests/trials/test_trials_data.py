"""Data loading, validation, the test split and the folds."""

from __future__ import annotations

import dataclasses
import gzip
import json
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.permissions import run_without_dac_override
from trials import CVSpec, DataError, DataSpec, check_data, decode_labels, load_dataset


def test_test_rows_never_enter_a_fold(digits):
    test_rows = set(digits.test_index.tolist())
    assert len(test_rows) == len(digits.y_test) > 0
    seen_val = []
    for train, val in digits.folds:
        assert not test_rows & set(digits.index[train].tolist())
        assert not test_rows & set(digits.index[val].tolist())
        assert not set(train.tolist()) & set(val.tolist())
        seen_val.extend(val.tolist())
    assert sorted(seen_val) == list(range(len(digits.y)))  # every search row validates exactly once
    # the split is stratified and rows keep their labels
    from sklearn.datasets import load_digits

    X_all, y_all = load_digits(return_X_y=True)
    np.testing.assert_array_equal(y_all[digits.test_index], digits.y_test)
    np.testing.assert_array_equal(X_all[digits.index].astype(np.float32), digits.X)
    frac = np.bincount(digits.y_test) / np.bincount(y_all)
    assert np.all(np.abs(frac - 0.2) < 0.03)


def test_split_is_fixed_by_the_seed():
    a = load_dataset(DataSpec(), CVSpec(folds=3), seed=5)
    b = load_dataset(DataSpec(), CVSpec(folds=3), seed=5)
    c = load_dataset(DataSpec(), CVSpec(folds=3), seed=6)
    np.testing.assert_array_equal(a.test_index, b.test_index)
    for (ta, va), (tb, vb) in zip(a.folds, b.folds):
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(a.test_index, c.test_index)


def test_single_holdout_split():
    ds = load_dataset(DataSpec(), CVSpec(folds=1, val_fraction=0.25), seed=0)
    ((train, val),) = ds.folds
    assert abs(len(val) / len(ds.y) - 0.25) < 0.01
    assert not set(train.tolist()) & set(val.tolist())


def test_synthetic():
    spec = DataSpec(source="synthetic", n_samples=500, n_features=12, n_classes=4)
    ds = load_dataset(spec, CVSpec(folds=2), seed=1)
    assert ds.X.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.X.shape == (400, 12) and ds.X_test.shape == (100, 12) and ds.n_classes == 4


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_tables(tmp_path, kind):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    df["label"] = np.arange(60) % 3
    path = tmp_path / f"d.{kind}"
    df.to_csv(path, index=False) if kind == "csv" else df.to_parquet(path)
    ds = load_dataset(DataSpec(source=kind, path=str(path), target="label"), CVSpec(folds=3), seed=0)
    assert ds.n_features == 3 and ds.n_classes == 3
    np.testing.assert_allclose(ds.X, df[["a", "b", "c"]].to_numpy()[ds.index], rtol=1e-6)


def test_npz(tmp_path):
    X = np.random.default_rng(0).normal(size=(40, 2, 3))
    y = np.arange(40) % 2
    np.savez(tmp_path / "d.npz", X=X, y=y.astype(np.float64))  # images are flattened; 0.0/1.0 labels ok
    ds = load_dataset(DataSpec(source="npz", path=str(tmp_path / "d.npz")), CVSpec(folds=2), seed=0)
    assert ds.n_features == 6 and ds.y.dtype == np.int64


# --------------------------------------------------------------------------- labels as users have them


@pytest.mark.parametrize(
    ("labels", "classes"),
    [
        (np.arange(60) % 10 + 1, list(range(1, 11))),  # 1 .. 10: ten outputs, not eleven
        ((np.arange(60) % 3) * 7, [0, 7, 14]),  # sparse codes: three outputs, not fifteen
        (np.arange(60) % 3 - 1, [-1, 0, 1]),
        (np.array(["dog", "cat", "bird"] * 20), ["bird", "cat", "dog"]),  # np.unique order
        ((np.arange(60) % 2).astype(bool), [False, True]),
        ((np.arange(60) % 2 + 3).astype(np.float64), [3.0, 4.0]),  # whole floats, as a csv with blanks reads
    ],
    ids=["one-based", "sparse", "negative", "strings", "bool", "whole-floats"],
)
def test_labels_map_to_codes_in_unique_order_and_back(tmp_path, labels, classes):
    spec = _npz(tmp_path, np.random.default_rng(0).normal(size=(60, 3)), labels, name="l.npz")
    ds = load_dataset(spec, CVSpec(folds=2), seed=0)
    assert ds.n_classes == len(classes) and list(ds.classes) == classes
    assert ds.y.dtype == np.int64 and set(ds.y.tolist()) | set(ds.y_test.tolist()) == set(range(len(classes)))
    # each row's code stands for its own label: the original labels come back by decode_labels
    np.testing.assert_array_equal(decode_labels(ds.y, ds.classes), labels[ds.index])
    np.testing.assert_array_equal(decode_labels(ds.y_test, ds.classes), labels[ds.test_index])
    json.dumps(list(ds.classes))  # stored with the study as JSON


def test_string_labels_in_a_csv_and_a_parquet(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(60, 2)), columns=["a", "b"]).assign(kind=["yes", "no", "maybe"] * 20)
    df.to_csv(tmp_path / "s.csv", index=False)
    df.to_parquet(tmp_path / "s.parquet")
    for kind in ("csv", "parquet"):
        spec = DataSpec(source=kind, path=str(tmp_path / f"s.{kind}"), target="kind")
        check_data(spec)
        ds = load_dataset(spec, CVSpec(folds=3), seed=0)
        assert ds.classes == ("maybe", "no", "yes") and ds.n_classes == 3
        np.testing.assert_array_equal(decode_labels(ds.y, ds.classes), df["kind"].to_numpy()[ds.index])


def test_idx_labels_are_encoded_over_train_and_test_together(tmp_path):
    arrays = _write_idx(tmp_path / "idx", gz=False, labels=(5, 9))
    ds = load_dataset(DataSpec(source="idx", path=str(tmp_path / "idx")), CVSpec(folds=2), seed=0)
    assert ds.classes == (5, 9) and ds.n_classes == 2
    np.testing.assert_array_equal(decode_labels(ds.y_test, ds.classes), arrays["t10k-labels-idx1-ubyte"])


def test_a_relabelled_file_changes_the_fingerprint_and_identity_labels_keep_it(tmp_path):
    X = np.random.default_rng(0).normal(size=(40, 3))
    a = load_dataset(_npz(tmp_path, X, np.array(["cat", "dog"] * 20), "a.npz"), CVSpec(folds=2), seed=0)
    b = load_dataset(_npz(tmp_path, X, np.array(["cow", "dog"] * 20), "b.npz"), CVSpec(folds=2), seed=0)
    assert np.array_equal(a.y, b.y) and a.fingerprint() != b.fingerprint()
    # labels already 0 .. n-1: the digest is the one stored studies hold (codes == labels)
    c = load_dataset(_npz(tmp_path, X, GOOD_Y, "c.npz"), CVSpec(folds=2), seed=0)
    assert dataclasses.replace(c, classes=None).fingerprint() == c.fingerprint()


def test_a_header_only_csv_says_no_rows_in_check_data_too(tmp_path):
    spec = _csv(tmp_path, "a,b,label\n")
    for call in (lambda: check_data(spec), lambda: load_dataset(spec, CVSpec(folds=2), seed=0)):
        with pytest.raises(DataError, match=r"has no rows \(a header only\)"):
            call()


# --------------------------------------------------------------------------- bad data


def _npz(tmp_path, X, y, name="bad.npz"):
    path = tmp_path / name
    np.savez(path, X=X, y=y)
    return DataSpec(source="npz", path=str(path))


def _csv(tmp_path, text, target="label"):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return DataSpec(source="csv", path=str(path), target=target)


GOOD_X = np.random.default_rng(0).normal(size=(40, 3))
GOOD_Y = np.arange(40) % 2


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_npz", r"not found: .*nope\.npz.*data\.path"),
        ("missing_csv", r"not found: .*nope\.csv"),
        ("missing_idx_dir", r"not found"),
        ("corrupt_npz", r"cannot read .*bad\.npz.* as npz"),
        ("corrupt_parquet", r"cannot read .*bad\.parquet.* as parquet"),
        ("npz_without_arrays", r"arrays named 'X'.*'y'"),
        ("npy_as_npz", r"bad\.npz' is a single array \(\.npy\), not an npz archive.*np\.savez"),
        ("nan_features", r"NaN/inf.*row 3, column 1"),
        ("inf_in_csv", r"NaN/inf"),
        ("fractional_labels", r"labels must be discrete classes, found the float 0\.5 at row 7; .*task: regression"),
        ("missing_label", r"label missing \(NaN\) at row 7"),
        ("header_only_csv", r"bad\.csv' has no rows \(a header only\)"),
        ("length_mismatch", r"differ in length \(40 feature rows vs 39 labels\)"),
        ("rare_class", r"class 2 has only 3 sample\(s\).*cv\.folds=5"),
        ("missing_target", r"target column 'label' \(data\.target\) not found.*columns are: a, b"),
        ("non_numeric_feature", r"must be numeric; not numeric: \['b'\]"),
        ("single_class", r"only one class \(label 3\)"),
    ],
)
def test_bad_data(tmp_path, case, message):
    X, y = GOOD_X.copy(), GOOD_Y.copy()
    if case == "missing_npz":
        spec = DataSpec(source="npz", path=str(tmp_path / "nope.npz"))
    elif case == "missing_csv":
        spec = DataSpec(source="csv", path=str(tmp_path / "nope.csv"), target="label")
    elif case == "missing_idx_dir":
        spec = DataSpec(source="idx", path=str(tmp_path / "nodir"))
    elif case == "corrupt_npz":
        (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
        spec = DataSpec(source="npz", path=str(tmp_path / "bad.npz"))
    elif case == "corrupt_parquet":
        (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage garbage")
        spec = DataSpec(source="parquet", path=str(tmp_path / "bad.parquet"), target="label")
    elif case == "npz_without_arrays":
        np.savez(tmp_path / "bad.npz", features=X, labels=y)
        spec = DataSpec(source="npz", path=str(tmp_path / "bad.npz"))
    elif case == "npy_as_npz":
        with open(tmp_path / "bad.npz", "wb") as fh:
            np.save(fh, X)
        spec = DataSpec(source="npz", path=str(tmp_path / "bad.npz"))
    elif case == "nan_features":
        X[3, 1] = np.nan
        spec = _npz(tmp_path, X, y)
    elif case == "inf_in_csv":
        spec = _csv(tmp_path, "a,b,label\n" + "".join(f"{i},{'inf' if i == 5 else i},{i % 2}\n" for i in range(40)))
    elif case == "fractional_labels":
        spec = _npz(tmp_path, X, np.where(np.arange(40) == 7, 0.5, y))
    elif case == "missing_label":
        spec = _npz(tmp_path, X, np.where(np.arange(40) == 7, np.nan, y))
    elif case == "header_only_csv":
        spec = _csv(tmp_path, "a,b,label\n")
    elif case == "length_mismatch":
        spec = _npz(tmp_path, X, y[:39])
    elif case == "rare_class":
        y = np.array([0] * 27 + [1] * 27 + [2] * 4)
        spec = _npz(tmp_path, np.zeros((58, 3)), y)
        cv = CVSpec(folds=5)
        with pytest.raises(DataError, match=message):
            # 4 rows of class 2: after the test split 3 remain, fewer than 5 folds
            load_dataset(DataSpec(source="npz", path=spec.path, test_fraction=0.25), cv, seed=0)
        return
    elif case == "single_class":
        spec = _npz(tmp_path, X, np.full(40, 3))
    elif case == "missing_target":
        spec = _csv(tmp_path, "a,b\n1,2\n3,4\n")
    elif case == "non_numeric_feature":
        spec = _csv(tmp_path, "a,b,label\n" + "".join(f"{i},x{i},{i % 2}\n" for i in range(40)))
    else:  # pragma: no cover
        raise AssertionError(case)
    with pytest.raises(DataError, match=message):
        load_dataset(spec, CVSpec(folds=2), seed=0)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- IDX


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[arr.dtype]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_idx(directory, gz: bool, n_train=30, n_test=12, rows=4, cols=5, labels=(0, 1, 2)):
    rng = np.random.default_rng(0)
    lab = np.array(labels, dtype=np.uint8)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, rows, cols), dtype=np.uint8),
        "train-labels-idx1-ubyte": lab[np.arange(n_train) % len(lab)],
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, rows, cols), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": lab[np.arange(n_test) % len(lab)],
    }
    directory.mkdir(exist_ok=True)
    for stem, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx(tmp_path, gz):
    arrays = _write_idx(tmp_path / "mnist", gz)
    ds = load_dataset(DataSpec(source="idx", path=str(tmp_path / "mnist")), CVSpec(folds=3), seed=0)
    # images keep their shape [n, rows, cols]; N-D samples are scaled globally unless data.scaling says otherwise
    assert ds.X.shape == (30, 4, 5) and ds.X_test.shape == (12, 4, 5) and ds.n_classes == 3
    assert ds.input_shape == (4, 5) and ds.n_features == 20 and ds.scaling == "global"
    np.testing.assert_allclose(ds.X, arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.X_test, arrays["t10k-images-idx3-ubyte"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert set(ds.test_index.tolist()) == set(range(30, 42))  # the t10k files are the test split


def test_idx_errors(tmp_path):
    d = tmp_path / "mnist"
    _write_idx(d, gz=False)
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        load_dataset(DataSpec(source="idx", path=str(d)), CVSpec(folds=3), seed=0)
    _write_idx(d, gz=False)
    data = (d / "train-images-idx3-ubyte").read_bytes()
    (d / "train-images-idx3-ubyte").write_bytes(data[:-7])  # truncated
    with pytest.raises(DataError, match=r"corrupt IDX file .*train-images.*header says shape \(30, 4, 5\)"):
        load_dataset(DataSpec(source="idx", path=str(d)), CVSpec(folds=3), seed=0)
    (d / "train-images-idx3-ubyte").write_bytes(b"\x01\x02" + data[2:])
    with pytest.raises(DataError, match="bad magic"):
        load_dataset(DataSpec(source="idx", path=str(d)), CVSpec(folds=3), seed=0)
    (d / "train-images-idx3-ubyte").unlink()
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(DataError, match="corrupt IDX file"):
        load_dataset(DataSpec(source="idx", path=str(d)), CVSpec(folds=3), seed=0)


def _imported(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter, then print whether it imported scikit-learn and torch."""

    code += "\nimport sys; print('sklearn' in sys.modules, 'torch' in sys.modules)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_workers_import_trials_without_scikit_learn() -> None:
    """Ray workers import ``trials`` to train; scikit-learn (~1.7 s to import) is only for the driver's splits."""
    assert _imported("from trials import run_trial, run_trials, refit_and_test, TrialOutOfMemory") == ["False", "True"]


def test_import_trials_does_not_import_torch() -> None:
    """Torch (~2.5 s) loads with the training entry points, not with specs, data checks and hyperparameters."""
    assert _imported("import trials; trials.resolve_hyperparams(trials.TrialSettings(), {})") == ["False", "False"]
    assert _imported("import trials; trials.run_trial") == ["False", "True"]
    import trials

    with pytest.raises(AttributeError, match="'trials' has no attribute 'nope'"):
        trials.nope  # noqa: B018


def test_fingerprint_changes_with_any_value_or_split() -> None:
    """Resume compares it: equal for the same data and split, different for one changed value or other folds."""
    a = load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=0)
    assert a.fingerprint() == load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=0).fingerprint()
    assert a.fingerprint() != load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=1).fingerprint()
    assert a.fingerprint() != load_dataset(DataSpec(source="digits"), CVSpec(folds=4), seed=0).fingerprint()
    a.X[5, 7] += 1.0
    assert a.fingerprint() != load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=0).fingerprint()


# --------------------------------------------------------------------------- check_data


def _good_files(tmp_path) -> dict[str, DataSpec]:
    """One valid data set of every source."""
    df = pd.DataFrame(GOOD_X, columns=["a", "b", "c"]).assign(label=GOOD_Y)
    df.to_csv(tmp_path / "good.csv", index=False)
    df.to_parquet(tmp_path / "good.parquet")
    np.savez(tmp_path / "good.npz", X=GOOD_X, y=GOOD_Y)
    _write_idx(tmp_path / "idx", gz=False)
    _write_idx(tmp_path / "idx_gz", gz=True)
    return {
        "csv": DataSpec(source="csv", path=str(tmp_path / "good.csv"), target="label"),
        "parquet": DataSpec(source="parquet", path=str(tmp_path / "good.parquet"), target="label"),
        "npz": DataSpec(source="npz", path=str(tmp_path / "good.npz")),
        "idx": DataSpec(source="idx", path=str(tmp_path / "idx")),
        "idx_gz": DataSpec(source="idx", path=str(tmp_path / "idx_gz")),
        "digits": DataSpec(source="digits"),
        "synthetic": DataSpec(source="synthetic", n_samples=100),
    }


def test_check_data_passes_what_loads(tmp_path):
    for spec in _good_files(tmp_path).values():
        check_data(spec)
        load_dataset(spec, CVSpec(folds=2), seed=0)


def _bad_spec(tmp_path, case: str) -> DataSpec:
    good = _good_files(tmp_path)
    if case.startswith("missing_"):  # missing_npz, missing_csv, missing_parquet, missing_idx
        source = case.removeprefix("missing_")
        return DataSpec(source=source, path=str(tmp_path / f"nope.{source}"), target="label")
    if case == "directory_as_file":
        return DataSpec(source="csv", path=str(tmp_path / "idx"), target="label")
    if case == "file_as_idx_directory":
        return DataSpec(source="idx", path=good["npz"].path)
    if case in ("corrupt_npz", "not_a_zip_npz", "empty_npz"):
        content = {"corrupt_npz": b"PK\x03\x04 this is not a zip file", "not_a_zip_npz": b"hello", "empty_npz": b""}
        (tmp_path / "bad.npz").write_bytes(content[case])
        return DataSpec(source="npz", path=str(tmp_path / "bad.npz"))
    if case == "npz_without_arrays":
        np.savez(tmp_path / "bad.npz", features=GOOD_X, y=GOOD_Y)
        return DataSpec(source="npz", path=str(tmp_path / "bad.npz"))
    if case == "npy_as_npz":
        with open(tmp_path / "bad.npz", "wb") as fh:
            np.save(fh, GOOD_X)
        return DataSpec(source="npz", path=str(tmp_path / "bad.npz"))
    if case == "corrupt_parquet":
        (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage garbage")
        return DataSpec(source="parquet", path=str(tmp_path / "bad.parquet"), target="label")
    if case == "empty_csv":
        (tmp_path / "bad.csv").write_text("")
        return DataSpec(source="csv", path=str(tmp_path / "bad.csv"), target="label")
    if case in ("csv_without_target", "parquet_without_target"):
        return good[case.split("_")[0]].model_copy(update={"target": "Label"})
    if case == "parquet_target_is_the_index":  # stored as a column, read back by pandas as the index
        df = pd.DataFrame(GOOD_X, columns=["a", "b", "c"]).assign(label=GOOD_Y).set_index("label")
        df.to_parquet(tmp_path / "bad.parquet")
        return DataSpec(source="parquet", path=str(tmp_path / "bad.parquet"), target="label")
    if case in ("idx_without_a_file", "idx_gz_without_a_file"):
        spec = good[case.removesuffix("_without_a_file")]
        next((tmp_path / spec.path).glob("t10k-images*")).unlink()
        return spec
    raise AssertionError(case)  # pragma: no cover


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_npz", r"data file not found: .*nope\.npz.*\(data\.path\)"),
        ("missing_csv", r"data file not found: .*nope\.csv"),
        ("missing_parquet", r"data file not found: .*nope\.parquet"),
        ("missing_idx", r"IDX directory not found: .*nope\.idx"),
        ("directory_as_file", r"data file not found: .*idx'"),
        ("file_as_idx_directory", r"IDX directory not found: .*good\.npz"),
        ("corrupt_npz", r"cannot read .*bad\.npz.* as npz: BadZipFile"),
        ("not_a_zip_npz", r"cannot read .*bad\.npz.* as npz: ValueError"),
        ("empty_npz", r"cannot read .*bad\.npz.* as npz: EOFError"),
        ("npz_without_arrays", r"arrays named 'X'.*'y' \(labels\); it holds \['features', 'y'\]"),
        ("npy_as_npz", r"single array \(\.npy\)"),
        ("corrupt_parquet", r"cannot read .*bad\.parquet.* as parquet"),
        ("empty_csv", r"cannot read .*bad\.csv.* as csv: EmptyDataError"),
        ("csv_without_target", r"target column 'Label' \(data\.target\) not found in .*good\.csv.*: a, b, c, label$"),
        ("parquet_without_target", r"target column 'Label' \(data\.target\) not found .*: a, b, c, label$"),
        ("parquet_target_is_the_index", r"target column 'label' \(data\.target\) not found .*: a, b, c$"),
        ("idx_without_a_file", r"IDX file t10k-images-idx3-ubyte\[\.gz\] not found in .*idx'"),
        ("idx_gz_without_a_file", r"IDX file t10k-images-idx3-ubyte\[\.gz\] not found in .*idx_gz'"),
    ],
)
def test_check_data_raises_what_load_dataset_raises(tmp_path, case, message):
    spec = _bad_spec(tmp_path, case)
    with pytest.raises(DataError, match=message) as checked:
        check_data(spec)
    with pytest.raises(DataError) as loaded:
        load_dataset(spec, CVSpec(folds=2), seed=0)
    assert str(checked.value) == str(loaded.value)


@pytest.mark.parametrize("source", ["npz", "csv", "parquet", "idx"])
def test_check_data_refuses_an_unreadable_file(tmp_path, source):
    spec = _good_files(tmp_path)[source]
    files = sorted((tmp_path / "idx").iterdir()) if source == "idx" else [tmp_path / spec.path]
    files[0].chmod(0)
    try:
        try:
            files[0].open("rb").close()
            pytest.skip("this process reads files without read permission (root): "
                        "test_unreadable_files_as_root_without_dac_override runs these cases")
        except PermissionError:
            pass
        with pytest.raises(DataError, match="Permission denied") as checked:
            check_data(spec)
        with pytest.raises(DataError) as loaded:
            load_dataset(spec, CVSpec(folds=2), seed=0)
        assert str(checked.value) == str(loaded.value)
    finally:
        files[0].chmod(0o644)


@pytest.mark.slow
def test_unreadable_files_as_root_without_dac_override():
    """Root reads a file whatever its mode (CI runs as root): the cases above then run in a child
    process without the capabilities that bypass file permissions."""
    out = run_without_dac_override(f"{__file__}::test_check_data_refuses_an_unreadable_file")
    assert out.returncode == 0 and "4 passed" in out.stdout, out.stdout + out.stderr


def test_check_data_reads_names_not_values(tmp_path):
    """Values are load_dataset's to check: a header, a schema or an archive's member names pass."""
    (tmp_path / "text.csv").write_text("a,label\n" + "".join(f"x{i},{i % 2}\n" for i in range(40)))
    pd.DataFrame({"a": ["x"] * 40, "label": GOOD_Y}).to_parquet(tmp_path / "text.parquet")
    np.savez(tmp_path / "flat.npz", X=np.arange(40.0), y=GOOD_Y)
    (tmp_path / "idx").mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images.idx3-ubyte.gz"):
        (tmp_path / "idx" / stem).write_bytes(b"not idx")
    (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not idx")
    for spec in [
        DataSpec(source="csv", path=str(tmp_path / "text.csv"), target="label"),
        DataSpec(source="parquet", path=str(tmp_path / "text.parquet"), target="label"),
        DataSpec(source="npz", path=str(tmp_path / "flat.npz")),
        DataSpec(source="idx", path=str(tmp_path / "idx")),
    ]:
        check_data(spec)
        with pytest.raises(DataError):
            load_dataset(spec, CVSpec(folds=2), seed=0)


def test_check_data_imports_neither_torch_nor_scikit_learn(tmp_path):
    specs = [spec.model_dump() for spec in _good_files(tmp_path).values()]
    code = f"import trials\nfor d in {specs!r}:\n    trials.check_data(trials.DataSpec(**d))"
    assert _imported(code) == ["False", "False"]
