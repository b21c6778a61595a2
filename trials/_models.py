"""Stacked networks: the built-in MLP and user model factories (vmap or member by member).

A *stack* holds ``M`` independent members; every state tensor has a leading member dimension and
``forward`` maps ``[M, batch, n_features]`` (flat rows, as :class:`~trials._engine.FeatureSource`
serves them) to ``[M, batch, n_classes]`` logits; a user module gets each member's rows reshaped to
the shape it takes (``[batch, *input_shape]``, or flat rows for a factory of the legacy form).
"""

from __future__ import annotations

import copy
import inspect
import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ._config import ModelError, factory_name
from ._imports import ImportPathError, import_callable
from ._optim import per_member

__all__ = ["FunctionalStack", "ModelFactory", "StackedMLP", "load_factory", "resolve_factory"]

_log = logging.getLogger(__name__)
_LOGGED_FALLBACKS: set[tuple[str, str]] = set()  # (factory, reason) already logged by this process


class StackedMLP(nn.Module):
    """``M`` MLPs ``n_features -> hidden... -> n_classes`` trained side by side.

    Layer ``l`` has weights ``[M, in, out]`` and biases ``[M, 1, out]`` and computes
    ``torch.baddbmm(bias, h, weight)``; each hidden layer is followed by the activation, then
    dropout. Member ``m`` is initialised like ``nn.Linear`` (kaiming-uniform weights, uniform
    biases, layer by layer) from a generator seeded ``init_seeds[m]`` and draws its dropout masks
    from its own generator seeded ``dropout_seeds[m]``, so a member computes exactly what it
    would compute in a stack of one.

    Parameters
    ----------
    n_features, hidden, n_classes
        Layer widths.
    activation
        ``relu`` or ``leaky_relu`` (slope 0.01).
    dropout
        Dropout probability after each hidden layer: one for all members, or one per member.
    init_seeds, dropout_seeds
        One seed per member.
    device
        Where the parameters live.
    """

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int],
        n_classes: int,
        *,
        activation: str,
        dropout: float | Sequence[float],
        init_seeds: Sequence[int],
        dropout_seeds: Sequence[int],
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.activation = activation
        ps = per_member("dropout", dropout, len(init_seeds))
        self._all_ps = ps
        sizes = [int(n_features), *[int(h) for h in hidden], int(n_classes)]
        gens = [torch.Generator().manual_seed(int(s)) for s in init_seeds]
        member_layers: list[list[tuple[Tensor, Tensor]]] = []
        for g in gens:  # member by member, layer by layer: the order nn.Linear consumes its RNG
            layers = []
            for fan_in, fan_out in itertools.pairwise(sizes):
                w = torch.empty(fan_out, fan_in)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
                bound = 1.0 / math.sqrt(fan_in)
                b = torch.empty(fan_out).uniform_(-bound, bound, generator=g)
                layers.append((w.t(), b))
            member_layers.append(layers)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer in range(len(sizes) - 1):
            w = torch.stack([m[layer][0] for m in member_layers]).to(device)
            b = torch.stack([m[layer][1] for m in member_layers]).unsqueeze(1).to(device)
            self.weights.append(nn.Parameter(w.contiguous()))
            self.biases.append(nn.Parameter(b.contiguous()))
        dev = torch.device(device)
        self.dropout_gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in dropout_seeds]
        self._set_dropout(ps)

    def _set_dropout(self, ps: list[float]) -> None:
        self.ps = ps
        self.p = ps[0] if len(set(ps)) == 1 else None  # one rate for all: a scalar, as F.dropout uses
        self._dropout_on = any(p > 0.0 for p in ps)
        dev = self.weights[0].device
        self._keep = torch.tensor([1.0 - p for p in ps], device=dev).view(-1, 1, 1)

    @property
    def n_members(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: Tensor, active: Sequence[bool] | None = None) -> Tensor:
        """Logits ``[M, B, n_classes]`` of inputs ``[M, B, n_features]``.

        ``active`` (training only) names the members that take this step; the others draw no
        dropout mask, so each member's mask stream depends on its own steps only.
        """
        h = x if x.dim() == 3 else x.flatten(2)  # the MLP flattens N-D samples itself
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = F.relu(h) if self.activation == "relu" else F.leaky_relu(h, 0.01)
                if self.training and self._dropout_on:
                    h = self._dropout(h, active)
        return h

    def _dropout(self, h: Tensor, active: Sequence[bool] | None) -> Tensor:
        # keep an element where u < 1 - p, u ~ U[0, 1) from the member's own generator; scale the
        # kept ones by 1 / (1 - p) (what F.dropout does). uniform_ is ~2.5x faster on CPU than
        # bernoulli_, which draws one mt19937 number per element through a slower path.
        keep: float | Tensor = 1.0 - self.p if self.p is not None else self._keep  # [M, 1, 1] per member
        u = torch.empty_like(h)
        for m, g in enumerate(self.dropout_gens):
            if active is None or active[m]:
                u[m].uniform_(generator=g)
            else:
                u[m].zero_()  # a member without rows this step: its output is not used
        return h * u.lt_(keep).div_(keep)

    # -- state handling shared with FunctionalStack ------------------------------------------
    def state_tensors(self) -> list[Tensor]:
        """Every per-member tensor (``[M, ...]``), in a fixed order."""
        return [*self.weights, *self.biases]

    def trainable(self) -> list[Tensor]:
        return list(self.weights) + list(self.biases)

    def select(self, keep: Tensor) -> None:
        """Keep only the members at positions ``keep`` (compact the stack)."""
        keep_list = keep.tolist()
        for plist in (self.weights, self.biases):
            for i, p in enumerate(plist):
                plist[i] = nn.Parameter(p.detach().index_select(0, keep))
        self.dropout_gens = [self.dropout_gens[k] for k in keep_list]
        self._set_dropout([self.ps[k] for k in keep_list])

    def load_state_tensors(self, tensors: Sequence[Tensor], dropout_gens: list[torch.Generator]) -> None:
        """Replace the whole stack's state by ``tensors`` (as returned by :meth:`state_tensors`)."""
        n = len(self.weights)
        for i in range(n):
            self.weights[i] = nn.Parameter(tensors[i].detach().clone())
            self.biases[i] = nn.Parameter(tensors[n + i].detach().clone())
        self.dropout_gens = list(dropout_gens)
        self._set_dropout(list(self._all_ps))


class _OutputShapeError(ValueError):
    """The user model's output is not ``[batch, n_classes]``."""


class FunctionalStack(nn.Module):
    """A stack of user modules: ``torch.func.stack_module_state`` + ``functional_call``.

    With ``mode="vmap"`` the members run as one ``vmap(..., randomness="different")`` call; with
    ``mode="sequential"`` the same functional call runs member by member (for modules vmap
    cannot handle, e.g. ones that call ``.item()``). Either way the parameters are stacked
    ``[M, ...]`` leaves trained by the same optimizer and loop as :class:`StackedMLP`. With
    ``input_shape`` each member's flat rows ``[B, d]`` are reshaped to ``[B, *input_shape]``
    before its module sees them (a convolutional network's images).
    """

    def __init__(self, modules: Sequence[nn.Module], mode: str = "vmap",
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if mode not in ("vmap", "sequential"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        """The shape of one sample the modules take; ``None``: the rows as given (flat)."""
        self.fallback_reason: str | None = None
        """Why the stack runs member by member (``mode == "sequential"`` after vmap failed)."""
        params, buffers = stack_module_state(list(modules))
        self._pnames = list(params)
        self._bnames = list(buffers)
        self.stacked_params = nn.ParameterList([nn.Parameter(params[k].detach()) for k in self._pnames])
        self._buffers_list = [buffers[k].detach() for k in self._bnames]
        base = copy.deepcopy(modules[0]).to("meta")
        object.__setattr__(self, "_base", base)  # not a registered submodule: it holds no state
        self.dropout_gens: list[torch.Generator] = []

    @property
    def n_members(self) -> int:
        return self.stacked_params[0].shape[0]

    def train(self, mode: bool = True) -> FunctionalStack:
        super().train(mode)
        self._base.train(mode)
        return self

    def _call(self, p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self._base, {**p, **b}, (x,))

    def forward(self, x: Tensor, active: Sequence[bool] | None = None) -> Tensor:
        """Logits ``[M, B, n_classes]`` of inputs ``[M, B, n_features]`` (``active`` is unused)."""
        if self.input_shape is not None:
            x = x.reshape(x.shape[0], x.shape[1], *self.input_shape)
        p = dict(zip(self._pnames, self.stacked_params))
        b = dict(zip(self._bnames, self._buffers_list))
        if self.mode == "vmap":
            return vmap(self._call, randomness="different")(p, b, x)
        outs = []
        for m in range(x.shape[0]):
            pm = {k: v[m] for k, v in p.items()}
            bm = {k: v[m] for k, v in b.items()}
            outs.append(self._call(pm, bm, x[m]))
        return torch.stack(outs)

    def state_tensors(self) -> list[Tensor]:
        return [*self.stacked_params, *self._buffers_list]

    def trainable(self) -> list[Tensor]:
        return [p for p in self.stacked_params if p.requires_grad]

    def select(self, keep: Tensor) -> None:
        for i, p in enumerate(self.stacked_params):
            self.stacked_params[i] = nn.Parameter(p.detach().index_select(0, keep), requires_grad=p.requires_grad)
        self._buffers_list = [b.index_select(0, keep) for b in self._buffers_list]

    def load_state_tensors(self, tensors: Sequence[Tensor], dropout_gens: list[torch.Generator]) -> None:
        n = len(self.stacked_params)
        for i in range(n):
            rg = self.stacked_params[i].requires_grad
            self.stacked_params[i] = nn.Parameter(tensors[i].detach().clone(), requires_grad=rg)
        self._buffers_list = [t.detach().clone() for t in tensors[n:]]

    def probe(self, n_features: int, n_classes: int) -> None:
        """Run one training-mode forward/backward on a tiny batch without changing any state.

        Raises
        ------
        Exception
            Whatever the functional call raises; :class:`_OutputShapeError` (a ``ValueError``) for
            a wrong output shape, naming the input batch's shape and the output's.
        """
        saved = [b.clone() for b in self._buffers_list]
        dev = self.stacked_params[0].device if len(self.stacked_params) else torch.device("cpu")
        x = torch.zeros(self.n_members, 2, n_features, device=dev)
        was_training = self.training
        try:
            self.train()
            with torch.random.fork_rng(devices=[]):
                out = self(x)
                if tuple(out.shape) != (self.n_members, 2, n_classes):
                    raise _OutputShapeError(
                        f"the model returned logits of shape {tuple(out.shape[1:])} for a batch of 2; expected "
                        f"[batch, n_classes] = [2, {n_classes}] (the input batch had shape "
                        f"{self.batch_shape(2, n_features)})"
                    )
                out.float().sum().backward()
        finally:
            for p in self.stacked_params:
                p.grad = None
            for b, s in zip(self._buffers_list, saved):
                b.copy_(s)
            self.train(was_training)

    def batch_shape(self, batch: int, n_features: int) -> tuple[int, ...]:
        """The shape of the batch one member's module gets for ``batch`` rows of ``n_features``."""
        return (batch, *self.input_shape) if self.input_shape is not None else (batch, n_features)


def load_factory(path: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Import a model factory from ``package.module:function`` (a callable is returned as is).

    Raises
    ------
    ModelError
        Naming the path and the fix when it is malformed, cannot be imported, or is not callable.
    """
    try:
        return import_callable(path, "model.factory")
    except ImportPathError as exc:
        raise ModelError(str(exc), str(path)) from exc.__cause__


class ModelFactory:
    """A ``model.factory`` and the form it is called in.

    The current form, ``factory(params, input_shape, n_outputs)``, gets the shape of one sample
    (a tuple, e.g. ``(1, 8, 8)``) and its module gets batches ``[batch, *input_shape]``. A factory
    of the legacy form, ``factory(params, n_features, n_classes)``, gets ``prod(input_shape)`` and
    its module gets flat batches ``[batch, n_features]``, as before samples kept their shape. The
    current form is recognised by a parameter named ``input_shape`` (positional, or keyword-only:
    then called with keywords ``input_shape=`` and ``n_outputs=``) or by ``factory(params, **kwargs)``
    (called with those keywords); any other signature, or one that cannot be read, is the legacy form.

    Attributes
    ----------
    fn
        The callable.
    name
        ``package.module:function`` (a callable: ``module:qualname``).
    shaped
        True for the current form.
    """

    def __init__(self, path: str | Callable[..., nn.Module]) -> None:
        self.fn = load_factory(path)
        self.name = factory_name(path)
        self.shaped, self._keywords = _factory_form(self.fn)

    def module_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of one sample as the module takes it: as is, or flat for the legacy form."""
        shape = tuple(int(s) for s in input_shape)
        return shape if self.shaped else (math.prod(shape),)

    def describe(self, input_shape: Sequence[int], n_outputs: int) -> str:
        """How it is called, for messages: ``factory(params, input_shape=(1, 8, 8), n_outputs=10)``."""
        shape = tuple(int(s) for s in input_shape)
        if self.shaped:
            return f"factory(params, input_shape={shape}, n_outputs={n_outputs})"
        return f"factory(params, n_features={math.prod(shape)}, n_classes={n_outputs})"

    def __call__(self, params: Mapping[str, Any], input_shape: Sequence[int], n_outputs: int) -> Any:
        shape = tuple(int(s) for s in input_shape)
        if not self.shaped:
            return self.fn(dict(params), math.prod(shape), int(n_outputs))
        if self._keywords:
            return self.fn(dict(params), input_shape=shape, n_outputs=int(n_outputs))
        return self.fn(dict(params), shape, int(n_outputs))


def _factory_form(fn: Callable[..., Any]) -> tuple[bool, bool]:
    """``(shaped, by_keyword)``: whether ``fn`` takes ``input_shape`` (see :class:`ModelFactory`),
    and whether it is passed by keyword. A signature that cannot be read is the legacy form."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False, False
    param = sig.parameters.get("input_shape")
    if param is not None:
        return True, param.kind is inspect.Parameter.KEYWORD_ONLY
    kinds = [p.kind for p in sig.parameters.values()]
    positional = sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)
    if inspect.Parameter.VAR_KEYWORD in kinds and positional < 3 and inspect.Parameter.VAR_POSITIONAL not in kinds:
        return True, True  # factory(params, **kw): called with input_shape= and n_outputs=
    return False, False


def resolve_factory(path: str | Callable[..., nn.Module] | ModelFactory) -> ModelFactory:
    """``path`` as a :class:`ModelFactory` (imported once; see :func:`load_factory` for the errors)."""
    return path if isinstance(path, ModelFactory) else ModelFactory(path)


def _has_lazy(module: nn.Module) -> bool:
    from torch.nn.modules.lazy import LazyModuleMixin

    return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in module.modules())


@torch.no_grad()
def _materialize(module: nn.Module, batch: tuple[int, ...], device: torch.device, seed: int) -> None:
    """Initialize a module's lazy parameters with one forward pass on zeros (eval mode: no running
    statistics change); their initial values are drawn from the member's seed, as the others were."""
    was = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module(torch.zeros(batch, device=device))
    finally:
        module.train(was)


def _fails_on_batch(factory: ModelFactory, shape: tuple[int, ...], n_classes: int, params: Mapping[str, Any],
                    exc: BaseException) -> ModelError:
    """The error for a module that fails on a probe batch: it names the batch's and a sample's shape."""
    sample = list(factory.module_shape(shape))
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "no tuned parameters"
    return ModelError(f"model from model.factory {factory.name!r} fails on an input batch of shape {[2, *sample]} "
                      f"(one sample: {sample}; called as {factory.describe(shape, n_classes)}, with {shown}): "
                      f"{type(exc).__name__}: {exc}; make the model take inputs [batch, *input_shape]",
                      factory.name, params)


def build_factory_stack(
    path: str | Callable[..., nn.Module] | ModelFactory,
    params: Mapping[str, Any],
    input_shape: Sequence[int] | int,
    n_classes: int,
    init_seeds: Sequence[int],
    device: torch.device,
) -> FunctionalStack:
    """Build one module per member (global RNG seeded per member) and stack them.

    Tries ``vmap`` first and falls back to member-by-member calls; the returned stack's ``mode``
    says which works, and its ``fallback_reason`` why vmap did not (also logged, once per factory
    and reason in a process).

    Parameters
    ----------
    input_shape
        The shape of one sample (an int: flat samples of that many features).

    Raises
    ------
    ModelError
        The factory does not import, raises, returns something other than an ``nn.Module``, or
        its module fails on (or returns the wrong shape for) a batch of 2; the message names the
        input batch's shape and, for a wrong output, the output's and the expected one.
    torch.OutOfMemoryError
        As raised, so that the caller can tell a configuration too large for the device.
    """
    factory = resolve_factory(path)
    name = factory.name
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    n_features = math.prod(shape)
    call = factory.describe(shape, n_classes)
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "no tuned parameters"
    modules = []
    for s in init_seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(s))
            try:
                module = factory(params, shape, n_classes)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                raise ModelError(f"model.factory {name!r} raised {type(exc).__name__}: {exc} when called as "
                                 f"{call} with {shown}; fix the factory for these values, or narrow the space",
                                 name, params) from exc
        if not isinstance(module, nn.Module):
            raise ModelError(f"model.factory {name!r} returned {type(module).__name__}, expected a torch.nn.Module",
                             name, params)
        module = module.to(device).float()
        if _has_lazy(module):  # nn.LazyLinear & co. take their sizes from a first batch: give them one
            try:
                _materialize(module, (2, *factory.module_shape(shape)), device, int(s))
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:
                raise _fails_on_batch(factory, shape, n_classes, params, exc) from exc
        modules.append(module)
    stack = FunctionalStack(modules, mode="vmap", input_shape=factory.module_shape(shape) if factory.shaped else None)
    try:
        stack.probe(n_features, n_classes)
        return stack
    except _OutputShapeError as exc:
        raise ModelError(f"model.factory {name!r}: {exc} (called as {call}, with {shown})", name, params) from None
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # vmap cannot run this module (e.g. it calls .item()): go member by member
        stack.mode = "sequential"
        stack.fallback_reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    try:
        stack.probe(n_features, n_classes)
    except _OutputShapeError as exc:
        raise ModelError(f"model.factory {name!r}: {exc} (called as {call}, with {shown})", name, params) from None
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        raise _fails_on_batch(factory, shape, n_classes, params, exc) from exc
    key = (name, stack.fallback_reason or "")
    if key not in _LOGGED_FALLBACKS:
        _LOGGED_FALLBACKS.add(key)
        _log.warning("model.factory %s: torch.func.vmap cannot run its module (%s); its %d member(s) train one at "
                     "a time", name, stack.fallback_reason, stack.n_members)
    return stack
