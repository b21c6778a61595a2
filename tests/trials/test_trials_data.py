"""Data loading, validation, the test split and the folds."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pandas as pd
import pytest

from trials import CVSpec, DataError, DataSpec, load_dataset


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
        ("nan_features", r"NaN/inf.*row 3, column 1"),
        ("inf_in_csv", r"NaN/inf"),
        ("fractional_labels", r"labels must be integers, found 0\.5"),
        ("negative_labels", r"non-negative, found -1"),
        ("string_labels", r"non-negative integers, found \['cat'"),
        ("length_mismatch", r"differ in length \(40 feature rows vs 39 labels\)"),
        ("rare_class", r"class 2 has only 3 sample\(s\).*cv\.folds=5"),
        ("missing_target", r"target column 'label' \(data\.target\) not found.*columns are: a, b"),
        ("non_numeric_feature", r"must be numeric; not numeric: \['b'\]"),
        ("single_class", r"only one class \(label 3\)"),
        ("huge_label", r"label 1000000000 at row 7 is implausibly large"),
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
    elif case == "nan_features":
        X[3, 1] = np.nan
        spec = _npz(tmp_path, X, y)
    elif case == "inf_in_csv":
        spec = _csv(tmp_path, "a,b,label\n" + "".join(f"{i},{'inf' if i == 5 else i},{i % 2}\n" for i in range(40)))
    elif case == "fractional_labels":
        spec = _npz(tmp_path, X, np.where(np.arange(40) == 7, 0.5, y))
    elif case == "negative_labels":
        spec = _npz(tmp_path, X, np.where(np.arange(40) == 7, -1, y))
    elif case == "string_labels":
        spec = _npz(tmp_path, X, np.array(["cat", "dog"] * 20))
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
    elif case == "huge_label":
        spec = _npz(tmp_path, X, np.where(np.arange(40) == 7, 10**9, y))
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


def _write_idx(directory, gz: bool, n_train=30, n_test=12, rows=4, cols=5):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, rows, cols), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 3).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, rows, cols), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 3).astype(np.uint8),
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
    assert ds.X.shape == (30, 20) and ds.X_test.shape == (12, 20) and ds.n_classes == 3
    np.testing.assert_allclose(ds.X, arrays["train-images-idx3-ubyte"].reshape(30, -1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.X_test, arrays["t10k-images-idx3-ubyte"].reshape(12, -1) / 255.0, rtol=1e-6)
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


def test_workers_import_trials_without_scikit_learn() -> None:
    """Ray workers import ``trials`` to train; scikit-learn (~1.7 s to import) is only for the driver's splits."""
    import subprocess
    import sys

    code = "import sys, trials; print('sklearn' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_fingerprint_changes_with_any_value_or_split() -> None:
    """Resume compares it: equal for the same data and split, different for one changed value or other folds."""
    a = load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=0)
    assert a.fingerprint() == load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=0).fingerprint()
    assert a.fingerprint() != load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=1).fingerprint()
    assert a.fingerprint() != load_dataset(DataSpec(source="digits"), CVSpec(folds=4), seed=0).fingerprint()
    a.X[5, 7] += 1.0
    assert a.fingerprint() != load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed=0).fingerprint()
