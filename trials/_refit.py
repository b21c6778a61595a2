"""The final refit's default training: one network on every non-test row for a fixed number of epochs.

The CV folds chose how long a configuration should train (their best epochs); the refit trains that
long on all the rows the folds trained and validated on, with no inner split and no early
stopping, so the model a user gets is trained as the CV measured it (see
:func:`trials.refit_and_test`). It runs the same per-epoch code as :func:`~trials._engine.fit_stack`
(a stack of one member), so the only differences from a fold are the rows and the stopping rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._config import Hyperparams
from ._engine import (
    FeatureSource,
    MemberSplit,
    Stack,
    make_epoch_batches,
    prepare_members,
    train_one_epoch,
)
from ._optim import PlateauSchedule, step_schedule_factor

__all__ = ["FixedFit", "fit_fixed_epochs"]


@dataclass
class FixedFit:
    """What :func:`fit_fixed_epochs` returns: the trained stack of one and what it trained on."""

    model: Stack
    source: FeatureSource
    """The standardized training rows (and, for regression, the target's statistics)."""
    mean: torch.Tensor
    """Feature means of the training rows ``[1, d]`` (on the device)."""
    scale: torch.Tensor
    """Feature scales of the training rows ``[1, d]`` (1 where a feature is constant)."""
    epochs_run: int
    train_rows: int
    train_loss: list[float]
    """Per epoch, the mean training loss (dropout active)."""


def fit_fixed_epochs(
    X: np.ndarray,
    y: np.ndarray,
    split: MemberSplit,
    hp: Hyperparams,
    *,
    epochs: int,
    n_classes: int,
    device: torch.device,
    seed: int,
    scaling: str = "per_feature",
) -> FixedFit:
    """Train one member on ``split.train`` for exactly ``epochs`` epochs and keep the last weights.

    There are no validation rows: ``split.val`` is ignored. ``lr_schedule: step`` follows the
    epochs as in a fold; ``plateau`` has no validation metric to watch, so it reduces the rate on
    plateaus of the training loss. Training stops before ``epochs`` only if the training loss is
    no longer finite (diverged): more epochs could not make the model usable.

    ``X`` is ``[n, *input_shape]``, scaled as ``scaling`` says (``Dataset.scaling``), as in a fold.

    Raises
    ------
    ValueError
        If ``epochs`` < 1.
    """
    if epochs < 1:
        raise ValueError(f"the refit needs at least one epoch, got {epochs}")
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        # as fit_stack: only user modules draw from the global RNG (vmap dropout)
        torch.manual_seed(int(np.random.SeedSequence([int(seed), 2]).generate_state(1)[0]))
        source, mean, scale, model, optimizer = prepare_members(X, y, [split], [hp], n_classes, device, scaling)
        plateau = (PlateauSchedule(1, mode="min", factor=hp.plateau_factor, patience=hp.plateau_patience)
                   if hp.lr_schedule == "plateau" else None)
        train = torch.as_tensor(split.train, dtype=torch.long)
        order = torch.Generator().manual_seed(split.seeds.order)
        losses: list[float] = []
        for epoch in range(1, epochs + 1):
            if hp.lr_schedule == "step":
                optimizer.set_lr(np.array([hp.lr]) * step_schedule_factor(epoch, hp.step_size, hp.gamma))
            batches = make_epoch_batches([train], [order], source.offsets, hp.batch_size, device)
            loss = float(train_one_epoch(model, optimizer, source, batches, loss=hp.loss)[0]) / len(train)
            losses.append(loss)
            if not math.isfinite(loss):
                break
            if plateau is not None:
                optimizer.set_lr(plateau.step([0], [loss], optimizer.get_lr()))
    return FixedFit(model=model, source=source, mean=mean, scale=scale, epochs_run=len(losses), train_rows=len(train),
                    train_loss=losses)
