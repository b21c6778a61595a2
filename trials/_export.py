"""The refit model as a plain ``nn.Module``: out of a stack of one, into a file, and back.

A trained stack (:class:`~trials._models.StackedMLP` or a :class:`~trials._models.FunctionalStack` of
a user factory's modules) holds every tensor with a leading member dimension. :func:`member_state_dict`
takes one member out as the ``state_dict`` of the module a user would build: an ``nn.Sequential``
of ``nn.Linear`` layers for the built-in MLP, the factory's own module otherwise.
:func:`build_model` rebuilds that module from the saved settings and params and wraps it in
:class:`ScaledModel`, which applies the training rows' feature scaling, so it takes raw inputs.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._config import Hyperparams
from ._models import FunctionalStack, StackedMLP, resolve_factory

__all__ = ["ScaledModel", "build_model", "build_module", "member_state_dict", "module_input_shape",
           "state_dict_bytes"]


def build_module(hp: Hyperparams, input_shape: Sequence[int] | int, n_classes: int) -> nn.Module:
    """An untrained module of the configuration ``hp``: what one member of its stack computes, for
    samples of ``input_shape`` (an int: flat samples of that many features).

    The built-in MLP is ``nn.Sequential(Flatten, Linear, activation, Dropout, ..., Linear)`` (the
    ``Linear`` layers keyed ``0``, ``3``, ...; ``flatten`` holds no state); a ``model.factory`` is
    called as in training (:class:`~trials._models.ModelFactory`: ``factory(params, input_shape,
    n_outputs)``, or the legacy ``factory(params, n_features, n_classes)``).
    """
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    if hp.factory is not None:
        factory = resolve_factory(hp.factory)
        module = factory(hp.params, shape, int(n_classes))
        if not isinstance(module, nn.Module):
            raise ValueError(f"model.factory {factory.name!r} returned {type(module).__name__}, "
                             "expected a torch.nn.Module")
        return module.float()
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    sizes = [math.prod(shape), *[int(h) for h in hp.hidden], int(n_classes)]
    for i in range(len(sizes) - 1):
        layers[str(3 * i)] = nn.Linear(sizes[i], sizes[i + 1])
        if i < len(sizes) - 2:
            layers[str(3 * i + 1)] = nn.ReLU() if hp.activation == "relu" else nn.LeakyReLU(0.01)
            layers[str(3 * i + 2)] = nn.Dropout(hp.dropout)
    return nn.Sequential(OrderedDict(layers))


def module_input_shape(hp: Hyperparams, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of one sample as :func:`build_module`'s module takes it: flat for the built-in MLP
    and a legacy factory, ``input_shape`` for a factory of the current form."""
    shape = tuple(int(s) for s in input_shape)
    if hp.factory is None:
        return (math.prod(shape),)
    return resolve_factory(hp.factory).module_shape(shape)


def member_state_dict(model: StackedMLP | FunctionalStack, member: int = 0) -> dict[str, Tensor]:
    """Member ``member`` of a trained stack as the ``state_dict`` of :func:`build_module`'s module (on CPU)."""
    if isinstance(model, StackedMLP):
        out: dict[str, Tensor] = {}
        for i, (w, b) in enumerate(zip(model.weights, model.biases)):
            # layer i of the MLP is module 3 * i of the Sequential (Linear, activation, Dropout)
            out[f"{3 * i}.weight"] = w[member].detach().t().contiguous().cpu()
            out[f"{3 * i}.bias"] = b[member, 0].detach().contiguous().cpu()
        return out
    names = [*model._pnames, *model._bnames]
    return {k: t[member].detach().contiguous().cpu() for k, t in zip(names, model.state_tensors())}


def state_dict_bytes(state: Mapping[str, Tensor]) -> bytes:
    """``torch.save`` of ``state`` into bytes (read back with ``torch.load(..., weights_only=True)``)."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return buf.getvalue()


class ScaledModel(nn.Module):
    """A trained network behind the feature scaling of its training rows: it takes raw inputs.

    ``forward(x)`` flattens each sample (``[batch, *input_shape]`` or flat rows ``[batch,
    n_features]`` -> ``[batch, n_features]``), scales it with ``mean`` and ``scale`` (one value per
    feature: ``data.scaling``'s statistics repeated over the features they cover), reshapes it to
    ``net_shape`` and returns the network's logits ``[batch, n_classes]``.

    Attributes
    ----------
    net
        The network (built-in MLP or the factory's module).
    classes
        The class label of each output (``predict`` maps an argmax to it).
    input_shape
        The shape of one sample.
    net_shape
        The shape of one sample as ``net`` takes it (flat for the built-in MLP and a legacy factory).
    scaling
        ``data.scaling`` as the training rows were scaled (``per_feature`` for models saved before it).
    target
        Regression: the target's ``(mean, scale)`` over the training rows; ``forward`` then returns
        ``[batch, 1]`` predictions in the target's units. ``None`` for a classifier.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], scale: Sequence[float], *,
                 classes: Sequence[Any], input_shape: Sequence[int],
                 target: tuple[float, float] | None = None, net_shape: Sequence[int] | None = None,
                 scaling: str = "per_feature") -> None:
        super().__init__()
        self.target = None if target is None else (float(target[0]), float(target[1]))
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(list(scale), dtype=torch.float32))
        self.classes = list(classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.net_shape = (len(mean),) if net_shape is None else tuple(int(s) for s in net_shape)
        self.scaling = scaling

    def forward(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float32, device=self.mean.device)
        x = x.reshape(x.shape[0], -1)
        x = ((x - self.mean) / self.scale).reshape(x.shape[0], *self.net_shape)
        out = self.net(x)
        return out if self.target is None else out * self.target[1] + self.target[0]

    @torch.no_grad()
    def predict(self, x: Tensor) -> list[Any]:
        """The class label of each sample of ``x`` (raw inputs); a regression's predicted values."""
        was = self.training
        self.eval()
        try:
            if self.target is not None:
                return self(x)[:, 0].tolist()
            idx = self(x).argmax(-1).tolist()
        finally:
            self.train(was)
        return [self.classes[i] for i in idx]


def build_model(hp: Hyperparams, state: Mapping[str, Tensor], *, n_features: int, n_classes: int,
                mean: Sequence[float], scale: Sequence[float], classes: Sequence[Any],
                input_shape: Sequence[int], target: tuple[float, float] | None = None,
                scaling: str = "per_feature") -> ScaledModel:
    """The saved model: :func:`build_module` with ``state`` loaded, behind its scaling, in eval mode.

    ``input_shape`` is the shape of one sample (``[n_features]`` for a model saved before samples
    kept their shape); ``mean`` and ``scale`` hold one value per feature.

    Raises
    ------
    ValueError
        When ``state`` does not fit the module (the factory or the settings changed since it was saved).
    """
    shape = tuple(int(s) for s in input_shape) or (int(n_features),)
    net = build_module(hp, shape, n_classes)
    wanted = net.state_dict().keys()
    try:
        net.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"the saved weights do not fit the model built from its settings ({first}); was "
                         "model.factory changed since the model was saved?") from None
    model = ScaledModel(net, mean, scale, classes=classes, input_shape=shape, target=target,
                        net_shape=module_input_shape(hp, shape), scaling=scaling)
    return model.eval()
