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


# -- factories of the current form: factory(params, input_shape, n_outputs) ---------------------------


class _SmallCNN(nn.Module):
    """Conv -> ReLU -> max-pool -> linear head, for ``[batch, channels, h, w]`` samples."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int, channels: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        c, h, w = input_shape
        self.conv = nn.Conv2d(c, channels, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(channels * (h // 2) * (w // 2), n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"the CNN takes [batch, c, h, w], got {tuple(x.shape)}")
        h = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(self.drop(h.flatten(1)))


def cnn(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    return _SmallCNN(input_shape, n_outputs, int(params.get("channels", 4)), float(params.get("dropout", 0.1)))


def cnn_keywords(params: dict[str, Any], *, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    return _SmallCNN(input_shape, n_outputs)


def cnn_kwargs(params: dict[str, Any], **kw: Any) -> nn.Module:
    return _SmallCNN(kw["input_shape"], kw["n_outputs"])


class _ItemCNN(_SmallCNN):
    """A CNN that calls ``.item()``, which vmap cannot trace: trains member by member."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max().item() > 1e6:
            x = x * 0.5
        return super().forward(x)


def item_cnn(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    return _ItemCNN(input_shape, n_outputs, dropout=float(params.get("dropout", 0.1)))


def three_channel_cnn(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """Wrong: expects RGB images whatever the data has."""
    return _SmallCNN((3, *input_shape[1:]), n_outputs)


def flat_only(params: dict[str, Any], n_features: int, n_classes: int) -> nn.Module:
    """A legacy factory whose module insists on flat rows ``[batch, n_features]``."""
    return _FlatOnly(n_features, n_classes)


class _FlatOnly(nn.Module):
    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.lin = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"a legacy module takes flat rows, got {tuple(x.shape)}")
        return self.lin(x)


def lazy_cnn(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """``nn.LazyLinear`` takes its input size from the first batch."""
    return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(n_outputs))
