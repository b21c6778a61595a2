"""A small CNN for the 8x8 digits images (``examples/digits_cnn.yaml``).

``build(params, input_shape, n_outputs)`` is a ``model.factory`` of the current form: hpsearch passes
the shape of one sample (``(1, 8, 8)`` with ``data.shape: [1, 8, 8]``) and the number of outputs,
and the module gets batches ``[batch, *input_shape]``. The tuned ``channels`` and ``dropout`` reach
it through ``params``. Every fold trains as one member of a stack (``torch.func.vmap``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class DigitsCNN(nn.Module):
    """conv 3x3 -> ReLU -> max-pool 2 -> conv 3x3 -> ReLU -> max-pool 2 -> dropout -> linear."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int, channels: int, dropout: float) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * channels * (h // 4) * (w // 4),
                                                                               n_outputs))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build(params: dict[str, Any], input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """The model hpsearch trains: one per fold and configuration."""
    if len(input_shape) != 3:
        raise ValueError(f"DigitsCNN takes images [channels, height, width], got samples of shape {input_shape}; "
                         "set data.shape: [1, 8, 8]")
    return DigitsCNN(input_shape, n_outputs, int(params.get("channels", 16)), float(params.get("dropout", 0.2)))
