"""Loading and validating a data set, the test split and the CV folds."""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.npyio import NpzFile

from ._config import CVSpec, DataSpec, factory_name, group_source_error, resolve_scaling
from ._idx import find_idx_file, read_idx

if TYPE_CHECKING:
    from ._stream import StreamedData

__all__ = ["DataError", "Dataset", "check_data", "check_metric", "decode_labels", "encode_labels", "load_dataset",
           "reshape_samples"]


_GROUPS_KEY = "groups"  # how a message names the groups where the key is not at hand (the refit's data)


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
        labels ``int64 [n]`` in ``0 .. n_classes-1`` (``classes[y]`` are the labels as given), or
        for regression the target ``float32 [n]``.
    X_test, y_test
        The test split, touched only by the final refit's single evaluation.
    index, test_index
        Row numbers of ``X`` / ``X_test`` in the original full data (for IDX, train rows come
        first, then the t10k rows).
    folds
        ``(train_idx, val_idx)`` pairs of positions into ``X``.
    n_features, n_classes, name
        Width of ``X``, number of outputs of the network (the number of distinct labels; 1 for
        regression), a short description.
    task
        ``classification`` or ``regression``.
    classes
        The original labels in code order (``classes[code]``; plain Python values, JSON-able),
        ``None`` for regression. :func:`decode_labels` maps predictions back.
    groups
        With ``cv.groups``: the group of each row of ``X`` (``int64`` codes); no group has rows in two
        folds, nor in both ``X`` and ``X_test``. ``None`` without groups.
    input_shape
        The shape of one sample (``X`` is ``[n, *input_shape]``); ``()`` (a Dataset built without
        it) means ``(n_features,)``.
    scaling
        How each fold scales its features: ``per_feature``, ``global``, ``per_channel`` or ``none``
        (``data.scaling`` resolved for these samples; see :func:`trials._config.resolve_scaling`).
    stream
        A data factory's ``Dataset`` too large to preload (:mod:`trials._stream`): ``X`` and
        ``X_test`` then hold no rows (``[0, *input_shape]``); ``index`` / ``test_index`` are the
        Dataset's sample numbers, which workers read through a ``DataLoader``. ``None``: ``X`` and
        ``X_test`` hold the features.
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
    task: str = "classification"
    classes: tuple[Any, ...] | None = None
    groups: np.ndarray | None = None
    input_shape: tuple[int, ...] = ()
    scaling: str = "per_feature"
    stream: StreamedData | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``input_shape``, or ``(n_features,)`` when it was not given."""
        return tuple(self.input_shape) or (int(self.n_features),)

    def fingerprint(self) -> str:
        """A digest of what trials are scored on: every array, with its dtype and shape, and the folds.

        Equal for the same data split the same way; different when a file under the same path holds
        other rows or values, or when a library version splits the same rows differently.
        """
        h = hashlib.blake2b(digest_size=16)
        if self.stream is not None:  # streamed: the digest of the features the driver read once
            h.update(f"stream:{self.stream.digest}:{self.stream.n}:{self.sample_shape};".encode())
            arrays = [self.y, self.y_test, self.index, self.test_index]
        else:
            # features as rows [n, n_features]: the digest of N-D samples is the one of the flat rows
            # they were before samples kept their shape (a stored study's data still matches)
            flat = [np.reshape(a, (len(a), -1)) for a in (self.X, self.X_test)]
            arrays = [flat[0], self.y, flat[1], self.y_test, self.index, self.test_index]
        arrays += [a for fold in self.folds for a in fold]
        if self.groups is not None:  # only then: a study without groups keeps its stored fingerprint
            arrays.append(self.groups)
        for a in arrays:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape};".encode())
            h.update(memoryview(a).cast("B"))
        # labels that were not already 0 .. n-1: which label each code stands for matters too
        if self.classes is not None and list(self.classes) != list(range(len(self.classes))):
            h.update(repr(self.classes).encode())
        return h.hexdigest()


# --------------------------------------------------------------------------------------- sources


def _missing(path: str, what: str = "data file") -> DataError:
    return DataError(f"{what} not found: {path!r} (data.path); check the path or mount the file")


def _unreadable(path: str, exc: BaseException, kind: str) -> DataError:
    return DataError(
        f"cannot read {path!r} as {kind}: {type(exc).__name__}: {exc}. "
        f"Check that the file is a valid, complete {kind} file (data.path, data.source)"
    )


def _open_npz(path: str) -> NpzFile:
    """Open ``path`` as an npz archive holding ``X`` and ``y``; reads the member names, not the arrays.

    The caller closes it (``with _open_npz(path) as z``).
    """
    if not os.path.isfile(path):
        raise _missing(path)
    try:
        # mmap_mode only matters for a .npy file (mapped, not read, to be refused below); npz ignores it
        z = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise _unreadable(path, exc, "npz") from exc
    if isinstance(z, np.ndarray):
        del z
        raise DataError(
            f"{path!r} is a single array (.npy), not an npz archive of arrays 'X' (features) and 'y' (labels). "
            "Save it with np.savez(path, X=X, y=y)"
        )
    keys = list(z.keys())
    if "X" not in keys or "y" not in keys:
        z.close()
        raise DataError(
            f"{path!r} must hold arrays named 'X' (features) and 'y' (labels); it holds {keys}. "
            "Save it with np.savez(path, X=X, y=y)"
        )
    return z


def _load_npz(path: str, groups: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    with _open_npz(path) as z:
        _check_npz_groups(z, path, groups)
        try:
            return z["X"], z["y"], None if groups is None else z[groups]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
            raise _unreadable(path, exc, "npz") from exc


def _check_npz_groups(z: NpzFile, path: str, groups: str | None) -> None:
    if groups is not None and groups not in z.keys():
        raise DataError(
            f"cv.groups {groups!r} is not an array of {path!r}; it holds {list(z.keys())}. "
            f"Save the groups beside X and y (np.savez(path, X=X, y=y, {groups}=groups)) or fix cv.groups"
        )


def _check_target(columns: Sequence[Any], target: str, path: str, key: str = "data.target",
                  what: str = "target column") -> None:
    """``target`` must be one of a table's ``columns`` (as the loader or the header/schema names them)."""
    if target not in columns:
        cols = [str(c) for c in columns]
        shown = ", ".join(cols[:20]) + (" ..." if len(cols) > 20 else "")
        raise DataError(f"{what} {target!r} ({key}) not found in {path!r}; columns are: {shown}")


def _check_group_column(columns: Sequence[Any], groups: str | None, target: str, path: str) -> None:
    if groups is None:
        return
    if groups == target:
        raise DataError(f"cv.groups {groups!r} is the target column (data.target) of {path!r}; name the column "
                        "that holds each row's group (a patient, a user)")
    _check_target(columns, groups, path, "cv.groups", "groups column")


def _table_columns(path: str, kind: str) -> list[str]:
    """The column names of a csv file (its header row only) or a parquet file (its schema only)."""
    if not os.path.isfile(path):
        raise _missing(path)
    try:
        if kind == "csv":
            import pandas as pd

            return [str(c) for c in pd.read_csv(path, nrows=0).columns]  # the same parser as the loader
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
        raise _unreadable(path, exc, kind) from exc
    # a DataFrame's index is stored as columns too, but pandas reads it back as the index
    index = (schema.pandas_metadata or {}).get("index_columns", [])
    return [name for name in schema.names if name not in index]


def _load_table(
    path: str, target: str, kind: str, groups: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import pandas as pd

    columns = _table_columns(path, kind)
    _check_target(columns, target, path)  # first, as check_data does
    _check_group_column(columns, groups, target, path)
    try:
        df = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
        raise _unreadable(path, exc, kind) from exc
    _check_target(list(df.columns), target, path)  # as read (pandas restores non-string parquet names)
    _check_group_column(list(df.columns), groups, target, path)
    _check_rows(len(df), path)
    features = df.drop(columns=[target] if groups is None else [target, groups])
    if features.shape[1] == 0:
        besides = f"the target {target!r}" + ("" if groups is None else f" and the groups {groups!r}")
        raise DataError(f"{path!r} has no feature columns besides {besides}")
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DataError(
            f"feature columns of {path!r} must be numeric; not numeric: {bad[:10]}. "
            "Encode them as numbers or drop them before the search"
        )
    return (features.to_numpy(dtype=np.float64), df[target].to_numpy(),
            None if groups is None else df[groups].to_numpy())


def _check_rows(n: int, path: str) -> None:
    if n == 0:
        raise DataError(f"{path!r} has no rows (a header only); add data rows or check data.path")


def _table_target(path: str, target: str, kind: str, groups: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The target column (and the groups column) of a table only (check_data reads them to check
    the labels and the groups before Ray starts)."""
    import pandas as pd

    cols = [target] if groups is None else [target, groups]
    try:
        if kind == "csv":
            df = pd.read_csv(path, usecols=cols)
        else:
            df = pd.read_parquet(path, columns=cols)
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
        raise _unreadable(path, exc, kind) from exc
    _check_rows(len(df), path)
    return df[target].to_numpy(), None if groups is None else df[groups].to_numpy()


_IDX_STEMS = {
    "X": "train-images-idx3-ubyte",
    "y": "train-labels-idx1-ubyte",
    "X_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _idx_files(directory: str) -> dict[str, str]:
    """The paths of the four IDX files in ``directory``, by array (``X``, ``y``, ``X_test``, ``y_test``)."""
    if not os.path.isdir(directory):
        raise _missing(directory, "IDX directory")
    paths: dict[str, str] = {}
    for key, stem in _IDX_STEMS.items():
        path = find_idx_file(directory, stem)
        if path is None:
            raise DataError(
                f"IDX file {stem}[.gz] not found in {directory!r} (data.path); an idx source needs "
                f"{', '.join(s + '[.gz]' for s in _IDX_STEMS.values())}"
            )
        paths[key] = path
    return paths


def _corrupt_idx(path: str, exc: BaseException) -> DataError:
    return DataError(f"corrupt IDX file {path!r}: {exc}; re-download or re-extract it")


def _load_idx(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for key, path in _idx_files(directory).items():
        try:
            arr = read_idx(path)
        except (OSError, ValueError) as exc:
            raise _corrupt_idx(path, exc) from exc
        if key.startswith("X"):
            if arr.ndim < 2:
                raise DataError(f"IDX image file {path!r} has rank {arr.ndim}; expected images [n, rows, cols]")
            scale = 255.0 if arr.dtype == np.uint8 else 1.0
            arr = arr.astype(np.float32) / np.float32(scale)  # images keep their shape [n, rows, cols]
        elif arr.ndim != 1:
            raise DataError(f"IDX label file {path!r} has rank {arr.ndim}; expected a vector of labels")
        arrays[key] = arr
    for split, (xk, yk) in {"train": ("X", "y"), "t10k": ("X_test", "y_test")}.items():
        if len(arrays[xk]) != len(arrays[yk]):
            raise DataError(
                f"IDX {split} images and labels differ in length in {directory!r}: "
                f"{len(arrays[xk])} images vs {len(arrays[yk])} labels"
            )
    if arrays["X"].shape[1:] != arrays["X_test"].shape[1:]:
        raise DataError(
            f"IDX train and t10k images differ in size in {directory!r}: "
            f"{list(arrays['X'].shape[1:])} vs {list(arrays['X_test'].shape[1:])} pixels"
        )
    return arrays["X"], arrays["y"], arrays["X_test"], arrays["y_test"]


def _load_synthetic(spec: DataSpec, seed: int, task: str = "classification") -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification, make_regression

    d, k = spec.n_features, spec.n_classes
    informative = spec.n_informative
    if informative is None:
        informative = min(d, max(2, d // 2, math.ceil(math.log2(2 * k))))
    if task == "regression":  # a linear target of the informative features, with noise
        X, y = make_regression(n_samples=spec.n_samples, n_features=d, n_informative=informative, noise=10.0,
                               random_state=seed)
        return X, y
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


def _features(X: np.ndarray, where: str) -> np.ndarray:
    """Numeric, finite features ``float32 [n, *sample_shape]`` (N-D samples keep their shape)."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{where}: features must be numeric, got dtype {X.dtype}")
    if X.ndim == 1:
        raise DataError(f"{where}: features must be 2-D [n_samples, n_features], got shape {X.shape}")
    if X.size == 0:
        raise DataError(f"{where}: features are empty (shape {X.shape})")
    finite = np.isfinite(X)
    if not finite.all():
        rows, cols = np.nonzero(~finite.reshape(X.shape[0], -1))
        raise DataError(
            f"{where}: features contain {rows.size} NaN/inf value(s) (first at row {int(rows[0])}, "
            f"column {int(cols[0])}); impute or drop them before the search"
        )
    return np.ascontiguousarray(X, dtype=np.float32)


def reshape_samples(X: np.ndarray, shape: Sequence[int] | None, where: str) -> np.ndarray:
    """``X`` with every sample reshaped to ``shape`` (``data.shape``); as is when ``shape`` is None.

    Raises
    ------
    DataError
        When a sample does not hold ``prod(shape)`` values, naming both.
    """
    if shape is None:
        return X
    want = tuple(int(s) for s in shape)
    width = int(np.prod(X.shape[1:]))
    if width != math.prod(want):
        given = f"rows of {width} values" if X.ndim == 2 else f"samples of shape {list(X.shape[1:])} ({width} values)"
        raise DataError(f"{where}: data.shape {list(want)} holds {math.prod(want)} values per sample, but the data "
                        f"has {given}; set data.shape to a shape of {width} values, or check the columns")
    return X.reshape(len(X), *want)


def _label_vector(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a vector [n_samples], got shape {y.shape}")
    return y


def _missing_label(y: np.ndarray) -> int | None:
    """Row of the first missing label (NaN, None, pandas' NA), or None."""
    if y.dtype.kind == "f":
        bad = np.isnan(y)
    elif y.dtype.kind == "O":
        bad = np.array([v is None or (isinstance(v, float) and v != v) or str(v) == "<NA>" for v in y], dtype=bool)
    else:
        return None
    return int(np.argmax(bad)) if bad.any() else None


def _class_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Discrete labels as given: integers, booleans or strings (a float column only with whole values)."""
    y = _label_vector(y, where)
    if y.dtype.kind not in "biufUSO":
        raise DataError(f"{where}: labels must be class names or numbers, got dtype {y.dtype}")
    row = _missing_label(y)
    if row is not None:
        raise DataError(f"{where}: label missing (NaN) at row {row}; drop the row or give it a class")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{where}: labels must be discrete classes, found the float {y[i].item()!r} at row {i}; "
                "for a numeric target set task: regression, else encode the classes as integers or names"
            )
    if y.dtype.kind == "O":
        kinds = {type(v).__name__ for v in y[:1000]}
        if len({"str" if k == "str_" else k for k in kinds}) > 1:
            raise DataError(f"{where}: labels mix types ({', '.join(sorted(kinds))}); give every label one type, "
                            "e.g. all strings")
        y = y.astype(str) if kinds <= {"str", "str_"} else y
    return y


def _regression_target(y: np.ndarray, where: str) -> np.ndarray:
    """A numeric, finite target vector, as float32."""
    y = _label_vector(y, where)
    if y.dtype.kind not in "biuf":
        i, v = next(((i, v) for i, v in enumerate(y) if not _is_number(v)), (0, y[0] if y.size else None))
        v = v.item() if isinstance(v, np.generic) else v
        raise DataError(
            f"{where}: a regression target must be numeric, found {v!r} at row {i} (dtype {y.dtype}); "
            "convert the target to numbers, or set task: classification for class labels"
        )
    bad = ~np.isfinite(y.astype(np.float64))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: target is {y[i].item()!r} at row {i}; drop or impute rows without a finite target")
    return np.ascontiguousarray(y, dtype=np.float32)


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, str)


def encode_labels(*ys: np.ndarray) -> tuple[list[np.ndarray], tuple[Any, ...]]:
    """Map discrete labels to ``0 .. n-1`` in ``np.unique`` order, over all of ``ys`` together.

    Returns
    -------
    codes, classes
        One ``int64`` array per input, and the classes (plain Python values, JSON-able):
        ``classes[code]`` is the original label.
    """
    classes, inverse = np.unique(np.concatenate(ys), return_inverse=True)
    codes, start = [], 0
    for y in ys:
        codes.append(inverse[start : start + len(y)].astype(np.int64))
        start += len(y)
    return codes, tuple(c.item() if isinstance(c, np.generic) else c for c in classes)


def decode_labels(codes: np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    """The original labels of class numbers ``codes`` (as :func:`encode_labels` made them)."""
    return np.asarray(classes)[np.asarray(codes, dtype=np.int64)]


def _check_lengths(X: np.ndarray, y: np.ndarray, where: str) -> None:
    if len(X) != len(y):
        raise DataError(
            f"{where}: X and y differ in length ({len(X)} feature rows vs {len(y)} labels); "
            "each row needs exactly one label"
        )


def _class_name(code: int, classes: Sequence[Any] | None) -> str:
    label = code if classes is None else classes[code]
    return repr(label) if isinstance(label, str) else str(label)


def _check_class_counts(y: np.ndarray, need: int, what: str, fix: str, classes: Sequence[Any] | None = None) -> None:
    counts = np.bincount(y)
    present = np.nonzero(counts)[0]
    small = [int(c) for c in present if counts[c] < need]
    if small:
        c = small[0]
        raise DataError(f"class {_class_name(c, classes)} has only {counts[c]} sample(s) in {what} but at least "
                        f"{need} are needed; {fix}")


# ------------------------------------------------------------------------------------ groups


def _group_codes(groups: Any, n: int, where: str, name: str) -> np.ndarray:
    """The group of each of ``n`` rows (any discrete values: ids, names) as ``int64`` codes.

    Raises
    ------
    DataError
        For a shape other than one group per row, a missing group (NaN, None) or mixed types.
    """
    g = np.asarray(groups)
    if g.ndim == 2 and g.shape[1] == 1:
        g = g[:, 0]
    what = f"{where}: cv.groups {name!r}"
    if g.ndim != 1:
        raise DataError(f"{what} must be a vector with one group per row, got shape {g.shape}")
    if len(g) != n:
        raise DataError(f"{what} has {len(g)} value(s) for {n} rows; give every row exactly one group")
    if g.dtype.kind not in "biufUSO":
        raise DataError(f"{what} must hold group ids (numbers or names), got dtype {g.dtype}")
    row = _missing_label(g)
    if row is not None:
        raise DataError(f"{what}: group missing (NaN/None) at row {row}; give every row a group (e.g. its own id) "
                        "or drop the row")
    if g.dtype.kind == "O":
        kinds = {"str" if type(v).__name__ == "str_" else type(v).__name__ for v in g}
        if len(kinds) > 1:
            raise DataError(f"{what} mixes types ({', '.join(sorted(kinds))}); give every group one type, "
                            "e.g. all strings")
    return np.unique(g, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _check_group_count(groups: np.ndarray, need: int, where: str, name: str, why: str, fix: str) -> None:
    n = len(np.unique(groups))
    if n < need:
        raise DataError(f"{where} has {n} group(s) in cv.groups {name!r}, fewer than the {need} {why}; {fix}")


def _holdout_folds(fraction: float) -> int:
    """How many stratified group folds a grouped holdout of ``fraction`` is one of."""
    return max(2, round(1.0 / fraction))


def _check_holdout_groups(groups: np.ndarray, fraction: float, classify: bool, where: str, name: str,
                          key: str) -> None:
    """Enough groups for a grouped holdout of ``fraction`` (the test split or ``cv.folds: 1``)."""
    if classify:
        k = _holdout_folds(fraction)
        _check_group_count(groups, k, where, name,
                           f"a {key}={fraction} split needs (it is one of {k} stratified group folds)",
                           f"raise {key} or add groups")
    else:
        _check_group_count(groups, 2, where, name, f"a {key} split needs (one on each side)", "add groups")


def _holdout(
    y: np.ndarray, fraction: float, seed: int, classify: bool, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held out)`` positions of ``y``: a shuffled split of ``fraction`` of the rows,
    stratified for ``classify``; with ``groups``, no group on both sides (see :class:`CVSpec`)."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split  # see _build_folds

    rows = np.arange(len(y))
    if groups is None:
        tr, va = train_test_split(rows, test_size=fraction, stratify=y if classify else None, random_state=seed,
                                  shuffle=True)
    elif classify:
        kf = StratifiedGroupKFold(n_splits=_holdout_folds(fraction), shuffle=True, random_state=seed)
        tr, va = next(kf.split(rows, y, groups))
    else:
        tr, va = next(GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(rows, y, groups))
    return np.sort(tr), np.sort(va)


# ------------------------------------------------------------------------------------ check_data


def check_metric(n_classes: int, metric: str, where: str) -> None:
    """``val_auc`` needs exactly two classes; raise :class:`DataError` naming how many there are."""
    if metric == "val_auc" and n_classes != 2:
        raise DataError(f"{where}: metric val_auc needs two classes, the labels have {n_classes}; use metric "
                        "val_f1_macro or val_accuracy")


def check_data(
    data: DataSpec, task: str = "classification", metric: str | None = None, cv: CVSpec | None = None, seed: int = 0
) -> None:
    """Check cheaply, without loading the features, what :func:`load_dataset` would refuse first.

    For a file source: the path exists and is a file (``idx``: a directory) that can be opened;
    ``npz``: it opens as an archive holding arrays ``X`` and ``y`` (only ``y`` is read);
    ``csv``: its header row names the ``data.target`` column; ``parquet``: its schema does (and
    either has the feature columns ``data.shape`` holds, when it is set); ``idx``: the directory
    holds the train and t10k image and label files (plain or gzipped).
    For ``npz``, ``csv`` and ``parquet`` the labels (only that column or array) are read and
    checked for ``task``: rows exist, no label is missing, class labels are discrete (no
    fractional floats), a regression target is numeric, and a ``metric`` of ``val_auc`` has two
    classes. With ``cv.groups`` the groups are read too (the column, or the array) and checked:
    the source has groups, none is missing, and there are enough for the test split and then for
    the folds (the test split is taken as :func:`load_dataset` takes it). ``digits``, ``diabetes``
    and ``synthetic`` have nothing to check; for ``python`` the factory is imported, not called.
    The features (NaN, types, lengths) and class sizes are checked only by :func:`load_dataset`.

    Imports neither torch nor scikit-learn (pandas for ``csv`` and pyarrow for ``parquet``, which
    loading needs anyway; scikit-learn only with ``cv.groups``, to take the test split), so a
    driver can call it before it starts Ray.

    Parameters
    ----------
    data
        The data section of a study.
    task, metric
        The study's task and metric.
    cv, seed
        The study's CV section and seed (groups are checked only when ``cv`` is given).

    Raises
    ------
    DataError
        The one :func:`load_dataset` raises for the same problem (same message, naming
        ``data.path`` or ``data.target`` and the fix).
    """
    path = data.path
    classify = task == "classification"
    target = _class_labels if classify else _regression_target
    group_key = None if cv is None else cv.groups
    if cv is not None:
        _check_group_source(data, cv)
    y = groups = None
    if data.source == "npz":
        with _open_npz(path) as z:  # type: ignore[arg-type]
            _check_npz_groups(z, path, group_key)  # type: ignore[arg-type]
            try:
                y = z["y"]
                groups = None if group_key is None else z[group_key]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
                raise _unreadable(path, exc, "npz") from exc  # type: ignore[arg-type]
        y = target(y, path)  # type: ignore[arg-type]
    elif data.source in ("csv", "parquet"):
        columns = _table_columns(path, data.source)  # type: ignore[arg-type]
        _check_target(columns, data.target, path)  # type: ignore[arg-type]
        _check_group_column(columns, group_key, data.target, path)  # type: ignore[arg-type]
        # data.shape against the row width (every column but the target and the groups), from the header alone
        width = len(columns) - 1 - (group_key is not None)
        reshape_samples(np.empty((0, width), np.float32), data.shape, path)  # type: ignore[arg-type]
        y, groups = _table_target(path, data.target, data.source, group_key)  # type: ignore[arg-type]
        y = target(y, path)  # type: ignore[arg-type]
    elif data.source == "python":
        from ._pydata import load_data_factory

        load_data_factory(data.factory)  # type: ignore[arg-type]
    if y is not None and classify and metric is not None:
        check_metric(len(np.unique(y)), metric, path)  # type: ignore[arg-type]
    if y is not None and groups is not None and cv is not None:
        codes = _group_codes(groups, len(y), path, cv.groups)  # type: ignore[arg-type]
        labels = encode_labels(y)[0][0] if classify else y
        index, _ = _grouped_test_split(labels, codes, data.test_fraction, seed, classify, path,  # type: ignore[arg-type]
                                       cv.groups)
        _check_fold_groups(codes[index], cv, classify, path)  # type: ignore[arg-type]
    if data.source == "idx":
        for file in _idx_files(path).values():  # type: ignore[arg-type]
            try:
                with open(file, "rb"):  # readable (read_idx would fail the same way)
                    pass
            except OSError as exc:
                raise _corrupt_idx(file, exc) from exc


# ------------------------------------------------------------------------------------ load_dataset


def load_dataset(data: DataSpec, cv: CVSpec, seed: int, task: str = "classification") -> Dataset:
    """Load and validate a data set, set aside the test split, then build the CV folds.

    Parameters
    ----------
    data
        Source and test fraction (``source: python``: the factory is called here, once).
    cv
        Number of folds (``1``: a stratified holdout split of ``cv.val_fraction``); with
        ``cv.groups``, grouped folds and a grouped test split (``Dataset.groups``).
    seed
        Study seed; fixes the synthetic data, the test split and the folds.
    task
        ``classification``: the labels are discrete classes of any type (integers, strings,
        booleans; a float column only with whole values), mapped to ``0 .. n-1`` in ``np.unique``
        order (``Dataset.classes``), split stratified. ``regression``: a numeric target, split
        by plain k-fold.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        For a missing or unreadable file, a file without rows, NaN/inf features, fractional or
        missing labels (a non-numeric target for regression), mismatched lengths, a missing target
        column, or a class too small for the folds; a data factory that cannot serve (see
        :func:`trials._pydata.load_python`); missing or too few groups for ``cv.groups``.
    """
    where = data.path or (f"data.factory {factory_name(data.factory)!r}" if data.factory is not None else data.source)
    _check_group_source(data, cv)
    X_test = y_test = groups_raw = stream = None
    if data.source == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)  # flat rows of 64 pixels (data.shape [1, 8, 8]: images)
        name = "digits"
    elif data.source == "synthetic":
        X, y = _load_synthetic(data, seed, task)
        shape = f"{data.n_classes} classes" if task == "classification" else "regression"
        name = f"synthetic({data.n_samples}x{data.n_features},{shape})"
    elif data.source == "diabetes":
        from sklearn.datasets import load_diabetes

        X, y = load_diabetes(return_X_y=True)
        name = "diabetes"
    elif data.source == "npz":
        X, y, groups_raw = _load_npz(data.path, cv.groups)  # type: ignore[arg-type]
        name = os.path.basename(data.path)  # type: ignore[arg-type]
    elif data.source in ("csv", "parquet"):
        X, y, groups_raw = _load_table(data.path, data.target, data.source, cv.groups)  # type: ignore[arg-type]
        name = os.path.basename(data.path)  # type: ignore[arg-type]
    elif data.source == "python":
        from ._pydata import load_python

        loaded = load_python(data, cv.groups)
        X, y, groups_raw, name, stream = loaded.X, loaded.y, loaded.groups, loaded.name, loaded.stream
    elif data.source == "idx":
        X, y, X_test, y_test = _load_idx(data.path)  # type: ignore[arg-type]
        name = os.path.basename(os.path.normpath(data.path))  # type: ignore[arg-type]
    else:  # pragma: no cover - guarded by the Literal type
        raise DataError(f"unknown data.source {data.source!r}")

    classify = task == "classification"
    target = _class_labels if classify else _regression_target
    X = reshape_samples(X if stream is not None else _features(X, where), data.shape, where)
    y = target(y, where)
    if stream is None:
        _check_lengths(X, y, where)
    groups = None if cv.groups is None else _group_codes(groups_raw, len(y), where, cv.groups)
    input_shape = tuple(int(s) for s in X.shape[1:])
    try:
        scaling = resolve_scaling(data.scaling, input_shape)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    if X_test is not None:
        X_test = reshape_samples(_features(X_test, f"{where} (t10k)"), data.shape, f"{where} (t10k)")
        y_test = target(y_test, f"{where} (t10k)")
        _check_lengths(X_test, y_test, f"{where} (t10k)")
        index = np.arange(len(X))
        test_index = np.arange(len(X), len(X) + len(X_test))
    classes: tuple[Any, ...] | None = None
    if classify:
        if X_test is not None:
            (y, y_test), classes = encode_labels(y, y_test)
        else:
            (y,), classes = encode_labels(y)
    if X_test is None:
        if classify:
            _check_class_counts(y, 2, f"{where}", "a stratified test split needs at least 2 samples per class; "
                                "add data or drop the class", classes)
        index, test_index = _grouped_test_split(y, groups, data.test_fraction, seed, classify, where, cv.groups)
        # streamed: X has no rows to split (workers read the samples index and test_index name)
        X, X_test = (X, X) if stream is not None else (X[index], X[test_index])
        y, y_test = y[index], y[test_index]
        groups = None if groups is None else groups[index]
    if classify and len(np.unique(y)) < 2:
        assert classes is not None
        raise DataError(f"{where}: only one class (label {classes[int(y.max())]!r}); classification needs at least 2")

    folds = _build_folds(y, cv, seed, where, classes, groups)
    if stream is not None:
        stream.input_shape = input_shape
    return Dataset(
        X=X,
        y=y,
        X_test=X_test,
        y_test=y_test,
        index=index,
        test_index=test_index,
        folds=folds,
        n_features=math.prod(input_shape),
        n_classes=len(classes) if classes is not None else 1,
        name=name,
        task=task,
        classes=classes,
        groups=groups,
        input_shape=input_shape,
        scaling=scaling,
        stream=stream,
    )


def _check_group_source(data: DataSpec, cv: CVSpec) -> None:
    """``cv.groups`` is set only for a source that can hold groups."""
    error = group_source_error(data, cv)
    if error is not None:
        raise DataError(error)


def _grouped_test_split(
    y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int, classify: bool, where: str,
    name: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The test split: positions ``(search, test)`` of ``y`` (``groups`` whole on one side)."""
    if groups is not None:
        _check_holdout_groups(groups, fraction, classify, where, name or _GROUPS_KEY, "data.test_fraction")
    try:
        index, test_index = _holdout(y, fraction, seed, classify, groups)
    except ValueError as exc:
        kind = "stratified " if classify else ""
        raise DataError(f"cannot take a {kind}test split of {where}: {exc}; adjust data.test_fraction") from exc
    if len(test_index) == 0 or len(index) == 0:
        raise DataError(f"the test split of {where} left {len(index)} search and {len(test_index)} test rows; "
                        "adjust data.test_fraction or add groups")
    return index, test_index


def _check_fold_groups(groups: np.ndarray, cv: CVSpec, classify: bool, where: str) -> None:
    """Enough groups in the search split for ``cv``'s folds (or its holdout)."""
    where = f"the search split of {where} (test groups removed)"
    name = cv.groups or _GROUPS_KEY
    if cv.folds == 1:
        _check_holdout_groups(groups, cv.val_fraction, classify, where, name, "cv.val_fraction")
        return
    n = len(np.unique(groups))
    fix = (f"lower cv.folds to {n} or fewer, or add groups" if n >= 2 else
           "add groups, or lower data.test_fraction so that more groups stay out of the test split")
    _check_group_count(groups, cv.folds, where, name, f"cv.folds={cv.folds} needs (no group sits in two folds)", fix)


def _build_folds(
    y: np.ndarray, cv: CVSpec, seed: int, where: str, classes: Sequence[Any] | None = None,
    groups: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds of class labels (``classes`` set), plain k-fold of a regression target;
    with ``groups``, ``StratifiedGroupKFold`` / ``GroupKFold`` (no group in two folds)."""
    classify = classes is not None
    if groups is not None:
        _check_fold_groups(groups, cv, classify, where)
    need = max(cv.folds, 2)
    if classify:
        _check_class_counts(
            y,
            need,
            f"the search split of {where} (test rows removed)",
            f"cv.folds={cv.folds} needs at least {need} samples per class; lower cv.folds, merge rare classes or "
            "add data",
            classes,
        )
    elif len(y) < need:
        raise DataError(f"the search split of {where} has {len(y)} row(s), fewer than cv.folds={cv.folds} needs "
                        f"({need}); lower cv.folds or add data")
    # scikit-learn takes ~1.7 s to import; only the driver splits data, so Ray workers, which import
    # this module to train, never load it (their start-up is part of every study's wall time).
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    kind = ("stratified " if classify else "") + ("group " if groups is not None else "")
    try:
        if cv.folds == 1:
            return [_holdout(y, cv.val_fraction, seed, classify, groups)]
        if groups is None:
            splitter: Any = StratifiedKFold if classify else KFold
        else:
            splitter = StratifiedGroupKFold if classify else GroupKFold
        kf = splitter(n_splits=cv.folds, shuffle=cv.shuffle, random_state=seed if cv.shuffle else None)
        return [(tr, va) for tr, va in kf.split(np.zeros(len(y)), y, groups)]
    except ValueError as exc:
        raise DataError(f"cannot build {cv.folds} {kind}fold(s) of {where}: {exc}; adjust cv") from exc


def holdout_split(
    y: np.ndarray, fraction: float, seed: int, *, stratify: bool = True, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` positions of ``y`` (the refit's inner early-stopping split), stratified by
    class unless ``stratify`` is False (a regression target); with ``groups`` (``Dataset.groups``),
    no group on both sides."""
    if stratify:
        _check_class_counts(y, 2, "the refit data", "the refit's validation split needs at least 2 samples per class")
    if groups is not None:
        _check_holdout_groups(groups, fraction, stratify, "the refit data", _GROUPS_KEY, "cv.val_fraction")
    return _holdout(y, fraction, seed, stratify, groups)
