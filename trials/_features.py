"""New rows to predict on: the features of a file, read as the study's data source reads them."""

from __future__ import annotations

import os

import numpy as np

from ._config import DataSpec
from ._data import DataError, _features, _missing, _table_columns, _unreadable
from ._idx import find_idx_file, read_idx

__all__ = ["load_features"]

_BY_EXTENSION = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}


def _kind(data: DataSpec, path: str) -> str:
    if data.source in ("csv", "parquet", "npz", "idx"):
        return data.source
    base = path[:-3] if path.endswith(".gz") else path
    ext = os.path.splitext(base)[1].lower()
    if ext in _BY_EXTENSION:
        return _BY_EXTENSION[ext]
    if os.path.isdir(path) or "idx3" in os.path.basename(base):
        return "idx"
    raise DataError(f"cannot tell the format of {path!r} (the study's data.source is {data.source!r}, which reads "
                    "no file); name it .csv, .parquet or .npz (arrays X[, y]), or pass an IDX image file")


def _npz_features(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise _missing(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z:
                raise DataError(f"{path!r} must hold an array named 'X' (the features); it holds {list(z.keys())}")
            return z["X"]
    except DataError:
        raise
    except Exception as exc:  # OSError, ValueError, BadZipFile, ...; a .npy file has no context manager
        raise _unreadable(path, exc, "npz") from exc


def load_features(data: DataSpec, path: str, groups: str | None = None) -> np.ndarray:
    """Features ``float32 [n, d]`` of the rows in ``path``, read like ``data`` (the study's data section),
    one flat row per sample (N-D samples flattened; the saved model reshapes them to ``data.shape``).

    csv / parquet: every column but ``data.target`` and the ``groups`` column (the study's
    ``cv.groups``; either may be absent); npz: array ``X`` (``y`` is
    ignored); idx: an image file, or a directory's ``t10k-images-idx3-ubyte[.gz]``, scaled as in
    training. A study on ``digits`` or ``synthetic`` reads the format the file's extension names.

    Raises
    ------
    DataError
        A missing or unreadable file, non-numeric columns, NaN/inf values.
    """
    kind = _kind(data, path)
    if kind in ("csv", "parquet"):
        import pandas as pd

        _table_columns(path, kind)  # a missing or corrupt file is said as the loader says it
        try:
            df = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
        except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
            raise _unreadable(path, exc, kind) from exc
        df = df.drop(columns=[c for c in (data.target, groups) if c is not None and c in df.columns])
        bad = [str(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
        if bad:
            raise DataError(f"feature columns of {path!r} must be numeric; not numeric: {bad[:10]}")
        X = df.to_numpy(dtype=np.float64)
    elif kind == "npz":
        X = _npz_features(path)
    else:
        file = find_idx_file(path, "t10k-images-idx3-ubyte") if os.path.isdir(path) else path
        if file is None or not os.path.isfile(file):
            raise _missing(path, "IDX image file")
        try:
            arr = read_idx(file)
        except (OSError, ValueError) as exc:
            raise DataError(f"corrupt IDX file {file!r}: {exc}") from exc
        scale = 255.0 if arr.dtype == np.uint8 else 1.0
        X = arr.astype(np.float32) / np.float32(scale)
    X = _features(X, path)
    return X.reshape(len(X), -1)  # the saved model reshapes each row to the shape it was trained on
