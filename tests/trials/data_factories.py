"""Data factories (``data.source: python``) for the tests, importable as ``tests.trials.data_factories:NAME``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

N = 120
CALLS: list[str] = []


def _arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``N`` samples of shape (1, 4, 4) from 24 users; a user's samples share its label."""
    rng = np.random.default_rng(seed)
    user = np.arange(N) % 24
    X = rng.normal(size=(N, 1, 4, 4)) + (user % 3)[:, None, None, None]
    return X, user % 3, user


def arrays() -> tuple[np.ndarray, np.ndarray]:
    CALLS.append("arrays")
    X, y, _ = _arrays()
    return X, y


def tensors_with_groups() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    X, y, g = _arrays()
    return torch.from_numpy(X).float(), torch.from_numpy(y), torch.from_numpy(g)


def mapping() -> dict[str, Any]:
    X, y, g = _arrays()
    return {"X": X.tolist(), "y": [f"class-{v}" for v in y], "site": g, "extra": np.zeros(3)}


def from_env() -> tuple[np.ndarray, np.ndarray]:
    """Different values with ``HPSEARCH_TEST_DATA_SEED`` set: the same factory, changed data."""
    X, y, _ = _arrays(int(os.environ.get("HPSEARCH_TEST_DATA_SEED", "0")))
    return X, y


class Users(Dataset):
    """A map-style Dataset of ``(x, y, user)`` samples, tensors as a torchvision Dataset gives them."""

    def __init__(self, with_groups: bool = True, bad: int | None = None) -> None:
        self.X, self.y, self.g = _arrays()
        self.with_groups, self.bad = with_groups, bad

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> Any:
        x, y = torch.from_numpy(self.X[i]).float(), torch.tensor(self.y[i])
        if i == self.bad:
            y = torch.tensor([1, 2])
        return (x, y, int(self.g[i])) if self.with_groups else (x, y)


class Stream(IterableDataset):
    def __iter__(self) -> Any:
        X, y, _ = _arrays()
        for i in range(N):
            yield X[i], int(y[i])


def dataset() -> Dataset:
    return Users()


def dataset_without_groups() -> Dataset:
    return Users(with_groups=False)


def stream() -> IterableDataset:
    return Stream()


def unreadable_label() -> Dataset:
    return Users(bad=7)


class _Failing(Users):
    def __getitem__(self, i: int) -> Any:
        if i == 3:
            raise KeyError("image-3.png")
        return super().__getitem__(i)


def failing_item() -> Dataset:
    return _Failing()


class _Bare(Users):
    def __getitem__(self, i: int) -> Any:
        return torch.zeros(3)


def bare_samples() -> Dataset:
    return _Bare()


class _Ragged(Users):
    def __getitem__(self, i: int) -> Any:
        return torch.zeros(3 if i < 5 else 4), 0


def ragged() -> Dataset:
    return _Ragged()


class _Empty(Dataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int) -> Any:
        raise IndexError(i)


def empty() -> Dataset:
    return _Empty()


def raises() -> Any:
    raise FileNotFoundError("/data/visits.parquet")


def wrong() -> Any:
    return {"features": 1}


def number() -> Any:
    return 42


NOT_CALLABLE = 3


GETS: list[int] = []  # the samples Counted served, in order (cleared by the tests)


class Counted(Users):
    """:class:`Users` counting its ``__getitem__`` calls (in ``GETS``); ``HPSEARCH_TEST_STREAM_N`` shortens it."""

    def __len__(self) -> int:
        return int(os.environ.get("HPSEARCH_TEST_STREAM_N", N))

    def __getitem__(self, i: int) -> Any:
        GETS.append(int(i))
        return super().__getitem__(i)


def counted() -> Dataset:
    return Counted()


def counted_without_groups() -> Dataset:
    return Counted(with_groups=False)


class CountedTargets(Counted):
    """:class:`Counted` with a numeric target (``task: regression``): the sum of the sample's features."""

    def __getitem__(self, i: int) -> Any:
        x, _ = super().__getitem__(i)[:2]
        return x, float(x.sum())


def counted_regression() -> Dataset:
    return CountedTargets(with_groups=False)
