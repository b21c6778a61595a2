"""Tiny user model factories for the tests (import path ``trials_factories:<name>``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def mlp(params: dict[str, Any], n_features: int, n_classes: int) -> nn.Module:
    """A small MLP with dropout; vmap handles it."""
    width = int(params.get("width", 32))
    return nn.Sequential(
        nn.Linear(n_features, width),
        nn.ReLU(),
        nn.Dropout(float(params.get("dropout", 0.1))),
        nn.Linear(width, n_classes),
    )


def batchnorm_mlp(params: dict[str, Any], n_features: int, n_classes: int) -> nn.Module:
    """An MLP with BatchNorm (stacked buffers)."""
    return nn.Sequential(nn.Linear(n_features, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, n_classes))


class _ItemNet(nn.Module):
    """Calls ``.item()`` in forward, which vmap cannot trace: trains member by member."""

    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.body = nn.Linear(n_features, 16)
        self.head = nn.Linear(16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        if h.mean().item() > 1e6:  # data-dependent Python control flow
            h = h * 0.5
        return self.head(h)


def item_net(params: dict[str, Any], n_features: int, n_classes: int) -> nn.Module:
    return _ItemNet(n_features, n_classes)


class _OomNet(nn.Module):
    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.lin = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] > 2:  # the probe batch has 2 rows; real batches "do not fit"
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.lin(x)


def oom_net(params: dict[str, Any], n_features: int, n_classes: int) -> nn.Module:
    return _OomNet(n_features, n_classes)


def wrong_shape(params: dict[str, Any], n_features: int, n_classes: int) -> nn.Module:
    return nn.Linear(n_features, n_classes + 1)


def not_a_module(params: dict[str, Any], n_features: int, n_classes: int) -> object:
    return 42
