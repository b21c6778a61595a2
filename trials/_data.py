"""Loading and validating a data set, the test split and the CV folds."""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from ._config import CVSpec, DataSpec
from ._idx import find_idx_file, read_idx

__all__ = ["DataError", "Dataset", "load_dataset"]


class DataError(ValueError):
    """The data cannot be used as given; the message names the file or value and the fix."""


@dataclass
class Dataset:
    """A validated data set with its test split set aside and its CV folds.

    Attributes
    ----------
    X, y
        The search part (test rows removed): features ``float32 [n, d]`` (not standardized;
        each fold standardizes with statistics of its own training rows during training) and
        labels ``int64 [n]`` in ``0 .. n_classes-1``.
    X_test, y_test
        The test split, touched only by the final refit's single evaluation.
    index, test_index
        Row numbers of ``X`` / ``X_test`` in the original full data (for IDX, train rows come
        first, then the t10k rows).
    folds
        ``(train_idx, val_idx)`` pairs of positions into ``X``.
    n_features, n_classes, name
        Width of ``X``, number of output classes (``max label + 1``), a short description.
    """

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    index: np.ndarray
    test_index: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    n_features: int
    n_classes: int
    name: str

    def fingerprint(self) -> str:
        """A digest of what trials are scored on: every array, with its dtype and shape, and the folds.

        Equal for the same data split the same way; different when a file under the same path holds
        other rows or values, or when a library version splits the same rows differently.
        """
        h = hashlib.blake2b(digest_size=16)
        arrays = [self.X, self.y, self.X_test, self.y_test, self.index, self.test_index]
        arrays += [a for fold in self.folds for a in fold]
        for a in arrays:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape};".encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()


# --------------------------------------------------------------------------------------- sources


def _missing(path: str, what: str = "data file") -> DataError:
    return DataError(f"{what} not found: {path!r} (data.path); check the path or mount the file")


def _unreadable(path: str, exc: BaseException, kind: str) -> DataError:
    return DataError(
        f"cannot read {path!r} as {kind}: {type(exc).__name__}: {exc}. "
        f"Check that the file is a valid, complete {kind} file (data.path, data.source)"
    )


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise _missing(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if "X" not in keys or "y" not in keys:
                raise DataError(
                    f"{path!r} must hold arrays named 'X' (features) and 'y' (labels); it holds {keys}. "
                    "Save it with np.savez(path, X=X, y=y)"
                )
            return z["X"], z["y"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise _unreadable(path, exc, "npz") from exc


def _load_table(path: str, target: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    if not os.path.isfile(path):
        raise _missing(path)
    try:
        df = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
        raise _unreadable(path, exc, kind) from exc
    if target not in df.columns:
        cols = [str(c) for c in df.columns]
        shown = ", ".join(cols[:20]) + (" ..." if len(cols) > 20 else "")
        raise DataError(f"target column {target!r} (data.target) not found in {path!r}; columns are: {shown}")
    features = df.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{path!r} has no feature columns besides the target {target!r}")
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DataError(
            f"feature columns of {path!r} must be numeric; not numeric: {bad[:10]}. "
            "Encode them as numbers or drop them before the search"
        )
    return features.to_numpy(dtype=np.float64), df[target].to_numpy()


def _load_idx(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not os.path.isdir(directory):
        raise _missing(directory, "IDX directory")
    stems = {
        "X": "train-images-idx3-ubyte",
        "y": "train-labels-idx1-ubyte",
        "X_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    arrays: dict[str, np.ndarray] = {}
    for key, stem in stems.items():
        path = find_idx_file(directory, stem)
        if path is None:
            raise DataError(
                f"IDX file {stem}[.gz] not found in {directory!r} (data.path); an idx source needs "
                f"{', '.join(s + '[.gz]' for s in stems.values())}"
            )
        try:
            arr = read_idx(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"corrupt IDX file {path!r}: {exc}; re-download or re-extract it") from exc
        if key.startswith("X"):
            if arr.ndim < 2:
                raise DataError(f"IDX image file {path!r} has rank {arr.ndim}; expected images [n, rows, cols]")
            scale = 255.0 if arr.dtype == np.uint8 else 1.0
            arr = arr.reshape(arr.shape[0], -1).astype(np.float32) / np.float32(scale)
        elif arr.ndim != 1:
            raise DataError(f"IDX label file {path!r} has rank {arr.ndim}; expected a vector of labels")
        arrays[key] = arr
    for split, (xk, yk) in {"train": ("X", "y"), "t10k": ("X_test", "y_test")}.items():
        if len(arrays[xk]) != len(arrays[yk]):
            raise DataError(
                f"IDX {split} images and labels differ in length in {directory!r}: "
                f"{len(arrays[xk])} images vs {len(arrays[yk])} labels"
            )
    if arrays["X"].shape[1] != arrays["X_test"].shape[1]:
        raise DataError(
            f"IDX train and t10k images differ in size in {directory!r}: "
            f"{arrays['X'].shape[1]} vs {arrays['X_test'].shape[1]} pixels"
        )
    return arrays["X"], arrays["y"], arrays["X_test"], arrays["y_test"]


def _load_synthetic(spec: DataSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    d, k = spec.n_features, spec.n_classes
    informative = spec.n_informative
    if informative is None:
        informative = min(d, max(2, d // 2, math.ceil(math.log2(2 * k))))
    redundant = min(2, d - informative)
    try:
        return make_classification(
            n_samples=spec.n_samples,
            n_features=d,
            n_informative=informative,
            n_redundant=redundant,
            n_classes=k,
            random_state=seed,
        )
    except ValueError as exc:
        raise DataError(
            f"cannot generate synthetic data (n_samples={spec.n_samples}, n_features={d}, "
            f"n_informative={informative}, n_classes={k}): {exc}; raise data.n_informative or "
            "data.n_features, or lower data.n_classes"
        ) from exc


# ------------------------------------------------------------------------------------ validation


_MAX_LABEL = 100_000  # labels index the output layer: they must be class numbers 0 .. K-1


def _features(X: np.ndarray, where: str) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{where}: features must be numeric, got dtype {X.dtype}")
    if X.ndim == 1:
        raise DataError(f"{where}: features must be 2-D [n_samples, n_features], got shape {X.shape}")
    if X.ndim > 2:
        X = X.reshape(X.shape[0], -1)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{where}: features are empty (shape {X.shape})")
    finite = np.isfinite(X)
    if not finite.all():
        rows, cols = np.nonzero(~finite)
        raise DataError(
            f"{where}: features contain {rows.size} NaN/inf value(s) (first at row {int(rows[0])}, "
            f"column {int(cols[0])}); impute or drop them before the search"
        )
    return np.ascontiguousarray(X, dtype=np.float32)


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a vector [n_samples], got shape {y.shape}")
    fix = "encode classes as integers 0 .. n_classes-1"
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    if y.dtype.kind not in "iuf":
        sample = y[:3].tolist()
        raise DataError(f"{where}: labels must be non-negative integers, found {sample} ({y.dtype}); {fix}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{where}: labels must be integers, found {y[i].item()!r} at row {i}; {fix}")
    if y.size and y.min() < 0:
        i = int(np.argmin(y))
        raise DataError(f"{where}: labels must be non-negative, found {y[i].item()!r} at row {i}; {fix}")
    if y.size and y.max() >= _MAX_LABEL:
        i = int(np.argmax(y))
        raise DataError(f"{where}: label {y[i].item()!r} at row {i} is implausibly large; {fix}")
    return y.astype(np.int64)


def _check_lengths(X: np.ndarray, y: np.ndarray, where: str) -> None:
    if len(X) != len(y):
        raise DataError(
            f"{where}: X and y differ in length ({len(X)} feature rows vs {len(y)} labels); "
            "each row needs exactly one label"
        )


def _check_class_counts(y: np.ndarray, need: int, what: str, fix: str) -> None:
    counts = np.bincount(y)
    present = np.nonzero(counts)[0]
    small = [int(c) for c in present if counts[c] < need]
    if small:
        c = small[0]
        raise DataError(f"class {c} has only {counts[c]} sample(s) in {what} but at least {need} are needed; {fix}")


# ------------------------------------------------------------------------------------ load_dataset


def load_dataset(data: DataSpec, cv: CVSpec, seed: int) -> Dataset:
    """Load and validate a data set, set aside the test split, then build the CV folds.

    Parameters
    ----------
    data
        Source and test fraction.
    cv
        Number of folds (``1``: a stratified holdout split of ``cv.val_fraction``).
    seed
        Study seed; fixes the synthetic data, the test split and the folds.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        For a missing or unreadable file, NaN/inf features, non-integer or negative labels,
        mismatched lengths, a missing target column, or a class too small for the folds.
    """
    where = data.path or data.source
    X_test = y_test = None
    if data.source == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        name = "digits"
    elif data.source == "synthetic":
        X, y = _load_synthetic(data, seed)
        name = f"synthetic({data.n_samples}x{data.n_features},{data.n_classes} classes)"
    elif data.source == "npz":
        X, y = _load_npz(data.path)  # type: ignore[arg-type]
        name = os.path.basename(data.path)  # type: ignore[arg-type]
    elif data.source in ("csv", "parquet"):
        X, y = _load_table(data.path, data.target, data.source)  # type: ignore[arg-type]
        name = os.path.basename(data.path)  # type: ignore[arg-type]
    elif data.source == "idx":
        X, y, X_test, y_test = _load_idx(data.path)  # type: ignore[arg-type]
        name = os.path.basename(os.path.normpath(data.path))  # type: ignore[arg-type]
    else:  # pragma: no cover - guarded by the Literal type
        raise DataError(f"unknown data.source {data.source!r}")

    X = _features(X, where)
    y = _labels(y, where)
    _check_lengths(X, y, where)
    if X_test is not None:
        X_test = _features(X_test, f"{where} (t10k)")
        y_test = _labels(y_test, f"{where} (t10k)")
        _check_lengths(X_test, y_test, f"{where} (t10k)")
        n_classes = int(max(y.max(), y_test.max())) + 1
        index = np.arange(len(X))
        test_index = np.arange(len(X), len(X) + len(X_test))
    else:
        n_classes = int(y.max()) + 1
        _check_class_counts(
            y, 2, f"{where}", "a stratified test split needs at least 2 samples per class; add data or drop the class"
        )
        from sklearn.model_selection import train_test_split  # lazily: see _build_folds

        try:
            index, test_index = train_test_split(
                np.arange(len(X)), test_size=data.test_fraction, stratify=y, random_state=seed, shuffle=True
            )
        except ValueError as exc:
            raise DataError(
                f"cannot take a stratified test split of {where}: {exc}; adjust data.test_fraction"
            ) from exc
        index, test_index = np.sort(index), np.sort(test_index)
        X, y, X_test, y_test = X[index], y[index], X[test_index], y[test_index]
    if len(np.unique(y)) < 2:
        raise DataError(f"{where}: only one class (label {int(y.max())}); classification needs at least 2")

    folds = _build_folds(y, cv, seed, where)
    return Dataset(
        X=X,
        y=y,
        X_test=X_test,
        y_test=y_test,
        index=index,
        test_index=test_index,
        folds=folds,
        n_features=int(X.shape[1]),
        n_classes=n_classes,
        name=name,
    )


def _build_folds(y: np.ndarray, cv: CVSpec, seed: int, where: str) -> list[tuple[np.ndarray, np.ndarray]]:
    need = max(cv.folds, 2)
    _check_class_counts(
        y,
        need,
        f"the search split of {where} (test rows removed)",
        f"cv.folds={cv.folds} needs at least {need} samples per class; lower cv.folds, merge rare classes or add data",
    )
    # scikit-learn takes ~1.7 s to import; only the driver splits data, so Ray workers, which import
    # this module to train, never load it (their start-up is part of every study's wall time).
    from sklearn.model_selection import StratifiedKFold, train_test_split

    rows = np.arange(len(y))
    try:
        if cv.folds == 1:
            tr, va = train_test_split(rows, test_size=cv.val_fraction, stratify=y, random_state=seed, shuffle=True)
            return [(np.sort(tr), np.sort(va))]
        skf = StratifiedKFold(n_splits=cv.folds, shuffle=cv.shuffle, random_state=seed if cv.shuffle else None)
        return [(tr, va) for tr, va in skf.split(np.zeros(len(y)), y)]
    except ValueError as exc:
        raise DataError(f"cannot build {cv.folds} stratified fold(s) of {where}: {exc}; adjust cv") from exc


def holdout_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train, val)`` positions of ``y`` (the refit's inner early-stopping split)."""
    from sklearn.model_selection import train_test_split  # lazily: see _build_folds

    _check_class_counts(y, 2, "the refit data", "the refit's validation split needs at least 2 samples per class")
    tr, va = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed, shuffle=True)
    return np.sort(tr), np.sort(va)
