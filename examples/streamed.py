"""The data factory of examples/streamed.yaml: a ``torch.utils.data.Dataset`` that hpsearch streams.

``squares()`` returns a map-style Dataset of 16x16 images ``[1, 16, 16]``: noise with a faint
5x5 square in one of four places, the label. Its features take 2 MiB as float32, more than the
study's ``data.max_preload_mb: 1``, so hpsearch does not preload it: the driver reads it once for
its labels, each worker calls ``squares()`` itself and reads the samples of its folds in batches
through a ``DataLoader``. Each sample is drawn from its own seed when it is read, as a Dataset over
files reads one file per sample: it holds nothing in memory, and every call of the factory (on the
driver, on each worker) gives the same samples, as streaming needs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class Squares(Dataset):
    """``n`` images ``(x [1, 16, 16] float32, label 0..3)``, sample ``i`` from seed ``i``."""

    def __init__(self, n: int = 2000, signal: float = 0.6) -> None:
        self.n, self.signal = n, signal

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng(int(i))
        label = int(rng.integers(0, 4))
        x = rng.normal(0.0, 1.0, size=(1, 16, 16)).astype(np.float32)
        r, c = divmod(label, 2)
        x[0, 8 * r + 1 : 8 * r + 6, 8 * c + 1 : 8 * c + 6] += self.signal
        return torch.from_numpy(x), label


def squares() -> Dataset:
    return Squares()
