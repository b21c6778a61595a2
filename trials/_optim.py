"""A small optimizer for stacked parameters, and per-member learning-rate schedules.

Every parameter tensor has a leading member dimension ``[M, ...]``. Each member has its own
learning rate (a tensor ``[M]``) and its own optimizer state; :meth:`StackedOptimizer.step`
takes an optional boolean mask ``[M]`` of the members allowed to move this step: a masked
member's parameters *and* optimizer state stay bit-for-bit unchanged (no momentum drift, no
weight decay, no Adam step count). The update rules are those of ``torch.optim.SGD``
(``dampening=0``, ``nesterov=False``) and ``torch.optim.Adam`` (``amsgrad=False``, L2 weight
decay added to the gradient), evaluated in the same order so that a one-member stack matches
torch.optim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["PlateauSchedule", "StackedOptimizer", "per_member", "step_schedule_factor"]


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    """View a per-member vector ``[M]`` so it broadcasts against ``like`` ``[M, ...]``."""
    return t.view((-1,) + (1,) * (like.dim() - 1))


class StackedOptimizer:
    """SGD (momentum, weight decay) or Adam over stacked parameters with per-member learning rates.

    Parameters
    ----------
    params
        Leaf tensors ``[M, ...]`` with ``requires_grad``.
    kind
        ``"sgd"`` or ``"adam"``.
    lr
        Initial learning rate: one for all members, or one per member.
    momentum, weight_decay
        As in ``torch.optim.SGD`` (``momentum`` is ignored by Adam): one for all members, or
        one per member.
    betas, eps
        Adam's coefficients.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        *,
        kind: str,
        lr: float | Sequence[float],
        momentum: float | Sequence[float] = 0.0,
        weight_decay: float | Sequence[float] = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if kind not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {kind!r}; use 'sgd' or 'adam'")
        self.params = list(params)
        self.kind = kind
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        p0 = self.params[0]
        n = p0.shape[0]
        # float64 master copy (torch.optim keeps lr as a Python float); float32 copy for SGD.
        self.lr = torch.as_tensor(per_member("lr", lr, n), dtype=torch.float64, device=p0.device)
        self._lr32 = self.lr.to(torch.float32)
        self._momentum = per_member("momentum", momentum, n)
        self._weight_decay = per_member("weight_decay", weight_decay, n)
        self._coefficients()
        self.state: dict[str, list[Tensor]] = {}
        if kind == "sgd" and any(m != 0.0 for m in self._momentum):
            self.state["momentum_buffer"] = [torch.zeros_like(p) for p in self.params]
        if kind == "adam":
            self.state["exp_avg"] = [torch.zeros_like(p) for p in self.params]
            self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in self.params]
            self.steps = torch.zeros(n, dtype=torch.float64, device=p0.device)

    def _coefficients(self) -> None:
        """Momentum and weight decay as the update rules use them: a float when every member has
        the same value (the exact scalar arithmetic of torch.optim), else a tensor ``[M]``."""
        dev = self.params[0].device

        def scalar_or_tensor(values: list[float]) -> float | Tensor:
            return values[0] if len(set(values)) == 1 else torch.tensor(values, device=dev)

        self.momentum = scalar_or_tensor(self._momentum)
        self.weight_decay = scalar_or_tensor(self._weight_decay)

    # ------------------------------------------------------------------ learning rates
    def set_lr(self, lr: np.ndarray | Sequence[float]) -> None:
        """Set each member's learning rate (a vector ``[M]``)."""
        self.lr.copy_(torch.as_tensor(np.asarray(lr, dtype=np.float64)))
        self._lr32 = self.lr.to(torch.float32)

    def get_lr(self) -> np.ndarray:
        """Each member's learning rate, as a float64 numpy vector."""
        return self.lr.cpu().numpy().copy()

    # ------------------------------------------------------------------ stepping
    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none`` semantics)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, mask: Tensor | None = None) -> None:
        """Update the members in ``mask`` (all members when ``None``).

        Parameters
        ----------
        mask
            Boolean ``[M]`` on the parameters' device; ``False`` members are left unchanged.
        """
        if self.kind == "sgd":
            self._sgd(mask)
        else:
            self._adam(mask)

    def _sgd(self, mask: Tensor | None) -> None:
        bufs = self.state.get("momentum_buffer")
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            g = self._decayed(g, p)
            mv = None if mask is None else _bcast(mask, p)
            if bufs is not None:
                buf = bufs[i]
                mom = self.momentum if isinstance(self.momentum, float) else _bcast(self.momentum, p)
                if mv is None:
                    buf.mul_(mom).add_(g)
                else:
                    buf.copy_(torch.where(mv, buf * mom + g, buf))
                g = buf
            lr = _bcast(self._lr32, p)
            if mv is None:
                p.addcmul_(g, lr, value=-1.0)
            else:
                p.copy_(torch.where(mv, torch.addcmul(p, g, lr, value=-1.0), p))

    def _decayed(self, g: Tensor, p: Tensor) -> Tensor:
        """The gradient with L2 weight decay added (``g + weight_decay * p``, per member)."""
        if isinstance(self.weight_decay, float):
            return g if self.weight_decay == 0.0 else g.add(p, alpha=self.weight_decay)
        return g.addcmul(p, _bcast(self.weight_decay, p))

    def _adam(self, mask: Tensor | None) -> None:
        b1, b2 = self.betas
        if mask is None:
            self.steps += 1.0
        else:
            self.steps += mask.to(torch.float64)
        steps = self.steps.clamp(min=1.0)  # masked members that never stepped: avoid 0-division
        bc1 = 1.0 - torch.pow(b1, steps)
        bc2 = 1.0 - torch.pow(b2, steps)
        step_size = (self.lr / bc1).to(torch.float32)
        bc2_sqrt = bc2.sqrt().to(torch.float32)
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            g = self._decayed(g, p)
            m, v = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
            mv = None if mask is None else _bcast(mask, p)
            if mv is None:
                m.lerp_(g, 1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            else:
                m.copy_(torch.where(mv, torch.lerp(m, g, 1.0 - b1), m))
                v.copy_(torch.where(mv, torch.addcmul(v * b2, g, g, value=1.0 - b2), v))
            denom = (v.sqrt() / _bcast(bc2_sqrt, p)).add_(self.eps)
            update = (m * _bcast(step_size, p)).div_(denom)
            if mv is None:
                p.sub_(update)
            else:
                p.copy_(torch.where(mv, p - update, p))

    # ------------------------------------------------------------------ compaction
    def select(self, keep: Tensor, params: Sequence[Tensor]) -> None:
        """Keep only the members at positions ``keep`` (the stack was compacted to ``params``)."""
        self.params = list(params)
        self.lr = self.lr.index_select(0, keep)
        self._lr32 = self.lr.to(torch.float32)
        ids = keep.tolist()
        self._momentum = [self._momentum[k] for k in ids]
        self._weight_decay = [self._weight_decay[k] for k in ids]
        self._coefficients()
        for name, tensors in self.state.items():
            self.state[name] = [t.index_select(0, keep) for t in tensors]
        if self.kind == "adam":
            self.steps = self.steps.index_select(0, keep)


def per_member(name: str, value: float | Sequence[float], n: int) -> list[float]:
    """``value`` for each of ``n`` members: one value repeated, or one per member (checked)."""
    if isinstance(value, (int, float)):
        return [float(value)] * n
    out = [float(v) for v in value]
    if len(out) != n:
        raise ValueError(f"{name}: got {len(out)} values for {n} members")
    return out


def step_schedule_factor(epoch: int, step_size: int, gamma: float) -> float:
    """``StepLR``'s factor for 1-based ``epoch``: ``gamma ** ((epoch - 1) // step_size)``."""
    return gamma ** ((epoch - 1) // step_size)


class PlateauSchedule:
    """``ReduceLROnPlateau`` (``threshold=1e-4`` relative, no cooldown) with one state per member.

    Parameters
    ----------
    n_members
        Number of members.
    mode
        ``"min"`` or ``"max"``.
    factor, patience
        Multiply a member's rate by ``factor`` after more than ``patience`` epochs without a
        relative improvement of ``threshold``.
    """

    def __init__(
        self,
        n_members: int,
        *,
        mode: str,
        factor: float,
        patience: int,
        threshold: float = 1e-4,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        self.mode = mode
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.min_lr = min_lr
        self.eps = eps
        self.best = np.full(n_members, math.inf if mode == "min" else -math.inf)
        self.num_bad = np.zeros(n_members, dtype=np.int64)

    def _better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < best * (1.0 - self.threshold)
        return a > best * (1.0 + self.threshold)

    def step(self, members: Sequence[int], values: Sequence[float], lr: Sequence[float]) -> np.ndarray:
        """Feed one epoch's monitored ``values`` of the members with ids ``members``.

        Parameters
        ----------
        members
            Member ids (``0 .. n_members-1``) of the values.
        values
            The monitored metric of each of those members.
        lr
            Their current learning rates (aligned with ``members``).

        Returns
        -------
        numpy.ndarray
            Their new learning rates (aligned with ``members``).
        """
        out = np.array(lr, dtype=np.float64)
        for j, (mid, value) in enumerate(zip(members, values)):
            if self._better(float(value), self.best[mid]):
                self.best[mid] = float(value)
                self.num_bad[mid] = 0
            else:
                self.num_bad[mid] += 1
            if self.num_bad[mid] > self.patience:
                new = max(out[j] * self.factor, self.min_lr)
                if out[j] - new > self.eps:
                    out[j] = new
                self.num_bad[mid] = 0
        return out
