"""How long the final refit trains: the epoch count the CV folds of the best trial chose."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["cv_epochs"]


def cv_epochs(fold_epochs: Sequence[int], fallback: int) -> int:
    """The median of the folds' best (restored) epochs, rounded half up; ``fallback`` without any.

    The refit trains on every non-test row, ``k / (k - 1)`` times a fold's training rows, for as
    many epochs as a typical fold needed: the median, so one fold that stopped early or late does
    not decide it. An epoch is a pass over the data, so the larger training set takes as many
    passes (and more steps); the acceptance benchmark (``bench/bench_refit.py``) checks that this
    scores what the CV measured.
    """
    epochs = [int(e) for e in fold_epochs if int(e) >= 1]
    if not epochs:
        return max(1, int(fallback))
    return max(1, math.floor(statistics.median(epochs) + 0.5))
