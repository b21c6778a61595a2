"""A ``torch.utils.data.Dataset`` too large to preload: what the driver keeps of it, and how a worker opens it.

A data factory's map-style ``Dataset`` whose features take more than ``data.max_preload_mb`` (as
float32) is *streamed*: the driver reads it once, sample by sample, keeping only the labels (and
groups) and a digest of the features (:func:`trials._pydata.load_python`); the test split, the
folds, stratification and ``cv.groups`` work on those labels as for any source. The
:class:`trials.Dataset` then holds no feature rows (``X`` and ``X_test`` are ``[0, *input_shape]``)
and a :class:`StreamedData`: the factory itself (an import path, or the callable, which Ray ships
as it ships a ``model.factory``) and what the driver saw. A worker calls the factory again
(:meth:`StreamedData.open`) and reads the rows of its split through a ``DataLoader``
(:mod:`trials._stream_fit`).

Imports no torch (the driver's data checks run before Ray starts).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StreamedData", "refuse_checkpoint"]


@dataclass
class StreamedData:
    """A streamed ``Dataset``: the factory that builds it and what the driver read of it.

    Attributes
    ----------
    factory
        ``data.factory`` (an import path, or the callable).
    name
        The factory's name, for messages.
    n
        The Dataset's length as the driver read it.
    sample_shape
        The shape of one sample's features as the Dataset gives them.
    input_shape
        The shape the model takes (``data.shape``, else ``sample_shape``).
    digest
        A digest of every sample's features (float32, in the Dataset's order).
    size_mb, limit_mb
        What the features take as float32, and ``data.max_preload_mb``.
    """

    factory: str | Callable[[], Any]
    name: str
    n: int
    sample_shape: tuple[int, ...]
    digest: str
    size_mb: float
    limit_mb: float
    input_shape: tuple[int, ...] = ()
    _opened: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # a worker builds its own Dataset: the driver's (and its caches) never travel with the data
        return {k: v for k, v in self.__dict__.items() if k != "_opened"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _opened=None)

    def describe(self) -> str:
        """The sentence that says why this Dataset streams."""
        return (f"data.factory {self.name!r}: the Dataset's features take {self.size_mb:.3g} MiB as float32 "
                f"({self.n} samples of shape {self.sample_shape}), more than data.max_preload_mb={self.limit_mb:g}")

    def open(self) -> Any:
        """The ``Dataset``: the driver's own, or on a worker the factory's, called here once per process copy.

        Raises
        ------
        DataError
            The factory does not import, raises, returns no map-style ``Dataset``, or one of another
            length than the driver read (a factory must give the same data wherever it runs).
        """
        if self._opened is not None:
            return self._opened
        from ._data import DataError
        from ._pydata import load_data_factory

        where = f"data.factory {self.name!r}"
        fn = load_data_factory(self.factory)
        try:
            ds = fn()
        except Exception as exc:
            raise DataError(f"{where} raised {type(exc).__name__}: {exc} when called on a worker to stream the "
                            "Dataset; the factory must run wherever hpsearch trains (its files mounted there)") from exc
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(ds, torch.utils.data.Dataset) or isinstance(
                ds, torch.utils.data.IterableDataset):
            raise DataError(f"{where} returned a {type(ds).__module__}.{type(ds).__qualname__} on a worker, where "
                            "the driver got a map-style torch.utils.data.Dataset; return the same data everywhere")
        try:
            n = len(ds)
        except TypeError:
            n = -1
        if n != self.n:
            raise DataError(
                f"{where}: the Dataset built on this worker has {n if n >= 0 else 'no'} samples, the driver's had "
                f"{self.n}; the folds index the driver's samples, so the factory must return the same Dataset "
                "wherever it runs (the same files, the same order): make it deterministic, or mount the same data")
        self._opened = ds
        return ds


def refuse_checkpoint(stream: StreamedData) -> Exception:
    """The error for ``checkpoint.every_epochs`` / ``every_s`` with streamed data (not supported)."""
    from ._data import DataError

    return DataError(
        f"{stream.describe()}, so it streams; checkpoint.every_epochs and checkpoint.every_s are not supported "
        "with streamed data: remove the checkpoint section, or raise data.max_preload_mb to preload the Dataset "
        "(the driver and each worker then hold its features in memory)")
