"""Shared fixtures for the trials tests: small, fast data sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trials import CVSpec, Dataset, DataSpec, load_dataset


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One intra-op thread, as on a Ray worker: tiny models gain nothing from more, and on a
    shared machine spinning OpenMP threads make timings erratic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """scikit-learn's digits (1797 x 64, 10 classes), 20 % test, 5 folds."""
    return load_dataset(DataSpec(source="digits"), CVSpec(folds=5), seed=0)


@pytest.fixture(scope="session")
def small() -> Dataset:
    """A small synthetic problem (300 x 10, 3 classes), 3 folds."""
    spec = DataSpec(source="synthetic", n_samples=300, n_features=10, n_classes=3, n_informative=5)
    return load_dataset(spec, CVSpec(folds=3), seed=0)


def uneven(data: Dataset, sizes: tuple[int, ...], n_val: int = 40, seed: int = 0) -> Dataset:
    """``data`` with hand-made folds whose training sets have the given (unequal) sizes."""
    rng = np.random.default_rng(seed)
    folds = []
    for n in sizes:
        perm = rng.permutation(len(data.y))
        folds.append((np.sort(perm[:n]), np.sort(perm[n : n + n_val])))
    return Dataset(
        X=data.X,
        y=data.y,
        X_test=data.X_test,
        y_test=data.y_test,
        index=data.index,
        test_index=data.test_index,
        folds=folds,
        n_features=data.n_features,
        n_classes=data.n_classes,
        name=data.name + "-uneven",
    )


@pytest.fixture
def make_uneven():
    """The :func:`uneven` helper."""
    return uneven
