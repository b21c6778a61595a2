"""Data from the user's own Python function (``data.source: python``).

The function (``data.factory``) is called once on the driver; what it returns, arrays or a
``torch.utils.data.Dataset``, is read into numpy arrays here, so that everything downstream (the
checks, the test split, the folds, the fingerprint, the workers) treats it as an ``npz`` archive.
A ``Dataset`` is read once, sample by sample. Up to ``data.max_preload_mb`` of features (as
float32) it is preloaded: its features are kept. A larger map-style ``Dataset`` *streams*: only its
labels (and groups) and a digest of its features are kept (:class:`trials._stream.StreamedData`),
and each worker calls the factory again and reads the rows of its split in batches
(:mod:`trials._stream_fit`). An iterable ``Dataset`` cannot be indexed, so one over the limit is
refused.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ._config import DataSpec, factory_name, factory_path_error, stored_callable
from ._imports import ImportPathError, import_callable
from ._stream import StreamedData

__all__ = ["PythonData", "load_data_factory", "load_python"]

_EXPECTED = ("(X, y), (X, y, groups), a mapping with keys 'X' and 'y' (and the cv.groups array), or a "
             "torch.utils.data.Dataset of (x, y) or (x, y, group) samples")
_GROUPS = "groups"  # the key of the third element of a tuple (and of a Dataset's samples)


class PythonData:
    """The arrays a data factory returned, as numpy arrays (``groups`` only when ``cv.groups`` is set).

    For a streamed Dataset (``stream`` set) ``X`` has no rows (``[0, *sample_shape]``).
    """

    __slots__ = ("X", "groups", "name", "stream", "y")

    def __init__(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, name: str,
                 stream: StreamedData | None = None) -> None:
        self.X, self.y, self.groups, self.name, self.stream = X, y, groups, name, stream


def _error(message: str) -> Exception:
    from ._data import DataError  # _data imports this module lazily (for data.source: python only)

    return DataError(message)


def load_data_factory(factory: str | Callable[[], Any]) -> Callable[[], Any]:
    """Import ``package.module:function`` (a callable is returned as is).

    Raises
    ------
    DataError
        Naming the path and the fix when the module cannot be imported, lacks the attribute, or the
        attribute is not callable; or, for the name a stored study keeps of a callable, saying
        how to continue that study (from Python, with the callable).
    """
    if callable(factory):
        return factory
    if stored_callable(factory) is not None:  # a stored study made with a callable, resumed without it
        raise _error(str(factory_path_error(factory, "data.factory")))
    try:
        return import_callable(factory, "data.factory")
    except ImportPathError as exc:
        raise _error(f"{exc} (a function returning {_EXPECTED})") from exc.__cause__


def load_python(data: DataSpec, groups: str | None) -> PythonData:
    """Call ``data.factory`` and read what it returns into numpy arrays.

    Parameters
    ----------
    data
        A data section with ``source: python``.
    groups
        ``cv.groups``: the key of the groups array (``groups`` for a tuple's third element).

    Raises
    ------
    DataError
        The factory does not import or raises (with its exception), returns something else than
        :data:`_EXPECTED` (naming what it returned), returns groups that ``cv.groups`` does not name
        (or lacks the array it names), or returns a ``Dataset`` whose samples (features or labels)
        cannot be read (naming the sample's index), or an iterable ``Dataset`` larger than
        ``data.max_preload_mb`` (only a map-style one streams).
    """
    fn = load_data_factory(data.factory)  # type: ignore[arg-type]
    name = factory_name(data.factory)  # type: ignore[arg-type]
    where = f"data.factory {name!r}"
    try:
        out = fn()
    except Exception as exc:
        raise _error(f"{where} raised {type(exc).__name__}: {exc} when called as factory() on the driver; "
                     "fix the factory (it takes no arguments and returns the data)") from exc
    torch = sys.modules.get("torch")  # a tensor or a Dataset means torch is imported already
    stream = None
    if torch is not None and isinstance(out, torch.utils.data.Dataset):
        arrays, stream = _read_dataset(out, data, where)
    elif isinstance(out, (tuple, list)) and len(out) in (2, 3):
        arrays = dict(zip(("X", "y", _GROUPS), out))
    elif isinstance(out, Mapping):
        arrays = dict(out)
        missing = [k for k in ("X", "y") if k not in arrays]
        if missing:
            raise _error(f"{where} returned a mapping with keys {sorted(map(str, arrays))}, without "
                         f"{' and '.join(map(repr, missing))}; expected {_EXPECTED}")
    else:
        raise _error(f"{where} returned {_describe(out)}; expected {_EXPECTED}")
    if groups is None and _GROUPS in arrays and not isinstance(out, Mapping):
        raise _error(f"{where} returned groups (a third element) but cv.groups is not set; set cv.groups: groups "
                     "to keep each group in one fold, or return (X, y)")
    if groups is not None and groups not in arrays:
        has = "keys " + str(sorted(map(str, arrays))) if isinstance(out, Mapping) else "no groups"
        raise _error(f"cv.groups {groups!r}: {where} returned {has}; return (X, y, groups) and set cv.groups: "
                     f"groups, or a mapping with a {groups!r} array")
    return PythonData(
        X=arrays["X"] if stream is not None else _as_array(arrays["X"], f"{where}: X"),
        y=_as_array(arrays["y"], f"{where}: y"),
        groups=None if groups is None else _as_array(arrays[groups], f"{where}: cv.groups {groups!r}"),
        name=name,
        stream=stream,
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} element(s) ({', '.join(type(v).__name__ for v in obj[:4])})"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}" if obj is not None else "None"


def _as_array(value: Any, what: str) -> np.ndarray:
    """A numpy array of a tensor, an array, a pandas object or a (nested) list."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if hasattr(value, "to_numpy"):  # pandas
        return np.asarray(value.to_numpy())
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise _error(f"{what} cannot be read as an array ({exc}); return arrays of one shape per sample") from exc


def _scalar(value: Any) -> Any:
    """A label or group as a plain Python value (a one-element tensor or array included)."""
    if isinstance(value, (int, float, str, bool)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    torch = sys.modules.get("torch")
    tensor = torch is not None and isinstance(value, torch.Tensor)
    if tensor or isinstance(value, np.ndarray):
        if (value.numel() if tensor else value.size) != 1:
            raise ValueError(f"a {type(value).__name__} of shape {tuple(value.shape)}, not one value")
        return value.item()
    raise ValueError(f"a {type(value).__name__}, not a class or a number")


def _samples(ds: Any) -> tuple[Iterator[Any], int | None]:
    """The samples of a map-style (by index) or an iterable Dataset, and its length if it has one."""
    try:
        n = len(ds)
    except TypeError:  # an IterableDataset without __len__
        return iter(ds), None
    torch = sys.modules["torch"]
    if isinstance(ds, torch.utils.data.IterableDataset):
        return iter(ds), n
    return (ds[i] for i in range(n)), n  # a generator: an exception in ds[i] is raised by next()


def _read_dataset(ds: Any, data: DataSpec, where: str) -> tuple[dict[str, Any], StreamedData | None]:
    """Read every sample of a Dataset once: into ``X``, ``y`` (and ``groups``) arrays, or, for a map-style
    Dataset whose features take more than ``data.max_preload_mb``, into labels (and groups) and a digest
    of the features, which are not kept (the Dataset streams: a :class:`StreamedData`)."""
    torch = sys.modules["torch"]
    samples, n = _samples(ds)
    iterable = isinstance(ds, torch.utils.data.IterableDataset)
    limit_mb = data.max_preload_mb
    xs: list[np.ndarray] = []
    ys: list[Any] = []
    gs: list[Any] = []
    shape: tuple[int, ...] | None = None
    sample_mb = 0.0
    digest: Any = None  # streaming: the features' digest (they are not kept)
    i = 0
    fix = ("return (x, y) (or (x, y, group)) from __getitem__, with y a class or a number, or return (X, y) "
           "arrays from the factory")
    while True:
        try:
            item = next(samples)
        except StopIteration:
            break
        except Exception as exc:
            raise _error(f"{where}: the Dataset fails on sample {i}: {type(exc).__name__}: {exc}; fix its "
                         "__getitem__ (or __iter__)") from exc
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise _error(f"{where}: sample {i} of the Dataset is {_describe(item)}, so its label cannot be read; "
                         f"{fix}")
        x = _as_array(item[0], f"{where}: features of sample {i}")
        if shape is None:
            shape = x.shape
            sample_mb = max(x.size, 1) * 4 / 2**20  # kept as float32
            if n is not None and n * sample_mb > limit_mb:
                if iterable:
                    _refuse_size(n, shape, sample_mb, limit_mb, where)
                digest = hashlib.blake2b(digest_size=16)
        elif x.shape != shape:
            raise _error(f"{where}: sample {i} has features of shape {x.shape}, sample 0 of shape {shape}; every "
                         "sample needs one shape (pad, crop or resize them in the Dataset)")
        elif n is None and (i + 1) * sample_mb > limit_mb:
            _refuse_size(i + 1, shape, sample_mb, limit_mb, where)
        for part, value, into in (("label", item[1], ys), ("group", item[2] if len(item) == 3 else None, gs)):
            if part == "group" and len(item) == 2:
                continue
            try:
                into.append(_scalar(value))
            except ValueError as exc:
                raise _error(f"{where}: the {part} of sample {i} is {exc}; {fix}") from None
        if digest is None:
            xs.append(x)
        else:
            digest.update(_streamed_features(x, f"{where}: sample {i}").tobytes())
        i += 1
    if not ys:
        raise _error(f"{where} returned an empty Dataset; return at least one sample per class and fold")
    if gs and len(gs) != len(ys):
        raise _error(f"{where}: some samples have a group (a third element) and some do not; give every sample one")
    arrays: dict[str, Any] = {"y": np.asarray(ys)}
    if gs:
        arrays[_GROUPS] = np.asarray(gs)
    if digest is None:
        arrays["X"] = np.stack(xs)
        return arrays, None
    arrays["X"] = np.empty((0, *shape), dtype=np.float32)  # type: ignore[misc]
    assert shape is not None
    return arrays, StreamedData(factory=data.factory, name=factory_name(data.factory),  # type: ignore[arg-type]
                                n=len(ys), sample_shape=tuple(int(s) for s in shape), digest=digest.hexdigest(),
                                size_mb=len(ys) * sample_mb, limit_mb=limit_mb, _opened=ds)


def _streamed_features(x: np.ndarray, where: str) -> np.ndarray:
    """One streamed sample's features as float32, checked as :func:`trials._data._features` checks preloaded ones."""
    if x.dtype.kind not in "biuf":
        raise _error(f"{where}: features must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise _error(f"{where}: features contain {int((~np.isfinite(x)).sum())} NaN/inf value(s); impute or drop "
                     "them in the Dataset before the search")
    return x


def _refuse_size(n: int, shape: tuple[int, ...], sample_mb: float, limit_mb: float, where: str) -> None:
    """An iterable Dataset cannot stream (the folds index samples): over the limit, it is refused."""
    raise _error(
        f"{where}: the Dataset's features take {n * sample_mb:.3g} MiB as float32 ({n} samples of shape {shape}), more "
        f"than data.max_preload_mb={limit_mb:g}, and an iterable Dataset cannot stream (the folds pick samples by "
        "index): return a map-style Dataset (__len__ and __getitem__), which streams, or raise data.max_preload_mb "
        "if the driver and each worker have the memory to preload it"
    )
