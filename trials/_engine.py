"""The one training path: a stack of members trained in lockstep with per-member early stopping.

A *member* trains one split (a CV fold, the holdout, or the refit split) with its own seeds. All
members of a trial run in one stack (see :mod:`trials._models`); a member only ever sees rows of
its own split, standardized with statistics of its own training rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._checkpoint import (
    Checkpointer,
    ReportHistory,
    capture_stack_state,
    float_list,
    restore_stack_state,
    stack_fingerprint,
    unpack_reports,
)
from ._config import Hyperparams, stack_key
from ._data import Dataset
from ._metrics import metric_mode, task_metrics
from ._models import FunctionalStack, StackedMLP, build_factory_stack
from ._optim import PlateauSchedule, StackedOptimizer, step_schedule_factor
from ._results import EpochReport, FoldResult, MemberReport
from ._scores import Scores, make_scores, sample_loss
from ._seeding import MemberSeeds

__all__ = [
    "EpochBatches",
    "FeatureSource",
    "FitOutcome",
    "MemberSplit",
    "evaluate",
    "fit_scaler",
    "fit_scaling",
    "fit_stack",
    "make_epoch_batches",
    "make_eval_index",
    "score_members",
    "train_one_epoch",
]

# Per-member standardized copies of X are precomputed when they fit in this many bytes;
# otherwise each gathered batch is standardized on the fly.
PRECOMPUTE_BYTES = 256 << 20
# Target size (elements) of one evaluation chunk's widest activation.
EVAL_CHUNK_ELEMENTS = 1 << 22

Stack = StackedMLP | FunctionalStack


@dataclass(frozen=True)
class MemberSplit:
    """One member: the split it trains on (positions into ``X``) and its seeds."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    seeds: MemberSeeds


# ------------------------------------------------------------------------------------ features


def fit_scaler(X: np.ndarray, rows: np.ndarray, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale (population std, 1 where constant) of ``X[rows]``, like ``StandardScaler``.

    Two passes in float64 over chunks of rows, so no full copy of ``X[rows]`` is made.
    """
    n, d = len(rows), X.shape[1]
    total = np.zeros(d)
    for c in range(0, n, chunk):
        total += X[rows[c : c + chunk]].sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros(d)
    for c in range(0, n, chunk):
        diff = X[rows[c : c + chunk]].astype(np.float64) - mean
        sq += np.einsum("ij,ij->j", diff, diff)
    scale = np.sqrt(sq / n)
    scale[scale < 1e-12] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


def fit_scaling(
    X: np.ndarray, rows: np.ndarray, scaling: str = "per_feature", input_shape: Sequence[int] | None = None,
    chunk: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale ``[d]`` of the flat rows ``X`` ``[n, d]`` over ``rows``, one value per feature.

    ``per_feature``: :func:`fit_scaler`. ``global``: one mean and population std over every value
    of ``X[rows]``; ``per_channel``: one per channel, the first axis of ``input_shape`` (channels
    first), over the channel's values; both repeated over the features they cover, so that every
    kind is applied as ``(x - mean) / scale``. ``none``: mean 0, scale 1. A std below 1e-12 is 1.
    """
    n, d = len(rows), X.shape[1]
    if scaling == "per_feature":
        return fit_scaler(X, rows, chunk)
    if scaling == "none":
        return np.zeros(d, np.float32), np.ones(d, np.float32)
    group = scaling_groups(scaling, d, input_shape)
    size = np.bincount(group).astype(np.float64) * n  # values per group
    total = np.zeros(d)
    for c in range(0, n, chunk):
        total += X[rows[c : c + chunk]].sum(axis=0, dtype=np.float64)
    mean = np.bincount(group, weights=total) / size
    sq = np.zeros(d)
    for c in range(0, n, chunk):
        diff = X[rows[c : c + chunk]].astype(np.float64) - mean[group]
        sq += np.einsum("ij,ij->j", diff, diff)
    scale = np.sqrt(np.bincount(group, weights=sq) / size)
    scale[scale < 1e-12] = 1.0
    return mean[group].astype(np.float32), scale[group].astype(np.float32)


def scaling_groups(scaling: str, d: int, input_shape: Sequence[int] | None) -> np.ndarray:
    """Per feature of a flat row of ``d``, the group of values that share one mean and std under
    ``global`` (one group) or ``per_channel`` (one per channel, the first axis of ``input_shape``)."""
    if scaling == "global":
        return np.zeros(d, dtype=np.int64)
    if scaling == "per_channel":
        if input_shape is None or len(input_shape) < 2:
            raise ValueError(f"per_channel scaling needs N-D samples [channels, ...], got shape {input_shape}")
        return np.repeat(np.arange(int(input_shape[0])), d // int(input_shape[0]))
    raise ValueError(f"unknown scaling {scaling!r}")


class FeatureSource:
    """Rows of ``X`` standardized per member, gathered by index.

    Parameters
    ----------
    X, y
        All rows the members index into (``[n, d]`` float32, ``[n]`` int64), on the device.
    mean, scale
        Statistics ``[U, d]`` of each distinct training split (fit on its own training rows).
    scaling
        Per member, the row of ``mean``/``scale`` it uses (members of different configurations
        that train the same fold share one); default one row per member.
    precompute_bytes
        Precompute the ``U`` standardized copies of ``X`` when they fit in this budget.
    target
        For a regression target (``y`` float): the ``(mean, scale)`` ``[U]`` of each distinct
        training split's target; :meth:`target_stats` serves them per member.
    """

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        mean: Tensor,
        scale: Tensor,
        scaling: Sequence[int] | None = None,
        precompute_bytes: int = PRECOMPUTE_BYTES,
        target: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        u = mean.shape[0]
        rows = list(range(u)) if scaling is None else [int(i) for i in scaling]
        self.member_rows = rows  # each member's row of mean/scale
        self._target_all: tuple[Tensor, Tensor] | None = None
        if target is not None:
            t = torch.tensor(rows, device=mean.device)
            self._target_all = (target[0].index_select(0, t).unsqueeze(1), target[1].index_select(0, t).unsqueeze(1))
        self.target = self._target_all
        self.n, self.d = X.shape
        if u * X.numel() * X.element_size() <= precompute_bytes:
            self.X = ((X.unsqueeze(0) - mean.unsqueeze(1)) / scale.unsqueeze(1)).reshape(u * self.n, self.d)
            self.y = y.repeat(u)
            self.offsets = [i * self.n for i in rows]
            self.mean = self.scale = None
        else:
            self.X, self.y = X, y
            self.offsets = [0] * len(rows)
            t = torch.tensor(rows, device=mean.device)
            self.mean, self.scale = mean.index_select(0, t).unsqueeze(1), scale.index_select(0, t).unsqueeze(1)
        self._all = (list(self.offsets), self.mean, self.scale)

    def target_stats(self) -> tuple[Tensor, Tensor] | None:
        """Per served member, the regression target's ``(mean, scale)`` ``[M, 1]``; None for labels."""
        return self.target

    def gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``[M, B, d]`` and labels (or targets) ``[M, B]`` of offset indices ``idx`` ``[M, B]``."""
        m, b = idx.shape
        flat = idx.reshape(-1)
        x = self.X.index_select(0, flat).view(m, b, self.d)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.scale)
        return x, self.y.index_select(0, flat).view(m, b)

    def reset(self) -> None:
        """Serve all members again (undo :meth:`select`)."""
        offsets, self.mean, self.scale = self._all
        self.offsets = list(offsets)
        self.target = self._target_all

    def select(self, keep: list[int]) -> None:
        """Keep only the members at positions ``keep``."""
        self.offsets = [self.offsets[k] for k in keep]
        if self.target is not None:
            t = torch.tensor(keep, device=self.target[0].device)
            self.target = (self.target[0].index_select(0, t), self.target[1].index_select(0, t))
        if self.mean is not None:
            t = torch.tensor(keep, device=self.mean.device)
            self.mean = self.mean.index_select(0, t)
            self.scale = self.scale.index_select(0, t)


def fit_target_scaler(y: np.ndarray, trains: Sequence[np.ndarray], device: torch.device) -> tuple[Tensor, Tensor]:
    """Mean and std (1 where constant) ``[U]`` of a regression target over each training split."""
    means, scales = [], []
    for rows in trains:
        t = np.asarray(y, dtype=np.float64)[rows]
        sd = float(t.std())
        means.append(float(t.mean()))
        scales.append(sd if sd > 1e-12 else 1.0)
    return (torch.tensor(means, dtype=torch.float32, device=device),
            torch.tensor(scales, dtype=torch.float32, device=device))


# ------------------------------------------------------------------------------------ batches


@dataclass
class EpochBatches:
    """One epoch's batches for every member, padded to a common ``[steps, M, batch]`` grid.

    Member ``m`` owns ``ceil(n_m / B)`` real steps; beyond its own rows the grid is padded with
    copies of its own training rows at weight 0, and a step where it has no row at all is masked
    out of the optimizer step, so no member steps on data that is not its own.

    Attributes
    ----------
    idx
        Offset indices into :class:`FeatureSource` ``[S, M, B]`` (on the device).
    rows
        The same indices as positions into ``X`` (on the CPU; for inspection).
    weight
        1 for a real row, 0 for padding ``[S, M, B]``.
    inv_count
        ``1 / (real rows)`` per step and member ``[S, M]`` (1 where there are none).
    masks
        Per step: ``None`` when every member has rows, else a bool ``[M]`` of the members that do.
    active
        The same as ``masks`` on the CPU (a list of bools, or ``None``).
    """

    idx: Tensor
    rows: Tensor
    weight: Tensor
    inv_count: Tensor
    masks: list[Tensor | None]
    active: list[list[bool] | None]

    @property
    def n_steps(self) -> int:
        return self.idx.shape[0]


def make_epoch_batches(
    trains: Sequence[Tensor],
    gens: Sequence[torch.Generator],
    offsets: Sequence[int],
    batch_size: int,
    device: torch.device,
) -> EpochBatches:
    """Draw each member's permutation of its own training rows (from its own generator)."""
    m = len(trains)
    sizes = [len(t) for t in trains]
    steps = max(math.ceil(n / batch_size) for n in sizes)
    total = steps * batch_size
    rows = torch.empty(m, total, dtype=torch.long)
    weight = torch.zeros(m, total)
    for j, (tr, g) in enumerate(zip(trains, gens)):
        perm = tr[torch.randperm(len(tr), generator=g)]
        rows[j] = perm.repeat(math.ceil(total / len(tr)))[:total]
        weight[j, : len(tr)] = 1.0
    counts = (torch.tensor(sizes)[None, :] - torch.arange(steps)[:, None] * batch_size).clamp(0, batch_size)
    off = torch.tensor(list(offsets), dtype=torch.long)[:, None]
    idx = (rows + off).view(m, steps, batch_size).transpose(0, 1).contiguous()
    rows = rows.view(m, steps, batch_size).transpose(0, 1).contiguous()
    weight = weight.view(m, steps, batch_size).transpose(0, 1).contiguous()
    inv = 1.0 / counts.clamp(min=1).to(torch.float32)
    has = counts > 0
    full = has.all(dim=1).tolist()
    active: list[list[bool] | None] = [None if f else h.tolist() for f, h in zip(full, has)]
    masks: list[Tensor | None] = [None if a is None else torch.tensor(a, device=device) for a in active]
    nb = device.type == "cuda"
    return EpochBatches(
        idx=idx.to(device, non_blocking=nb),
        rows=rows,
        weight=weight.to(device, non_blocking=nb),
        inv_count=inv.to(device, non_blocking=nb),
        masks=masks,
        active=active,
    )


def make_eval_index(
    vals: Sequence[np.ndarray], offsets: Sequence[int], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Padded evaluation indices ``[M, V]``, weights ``[M, V]`` and row counts ``[M]``."""
    v = max(len(a) for a in vals)
    idx = torch.empty(len(vals), v, dtype=torch.long)
    weight = torch.zeros(len(vals), v)
    for j, (a, off) in enumerate(zip(vals, offsets)):
        t = torch.as_tensor(a, dtype=torch.long) + off
        idx[j] = t.repeat(math.ceil(v / len(t)))[:v]
        weight[j, : len(t)] = 1.0
    counts = torch.tensor([float(len(a)) for a in vals])
    return idx.to(device), weight.to(device), counts.to(device)


# ------------------------------------------------------------------------------------ epoch


def train_one_epoch(
    model: Stack,
    optimizer: StackedOptimizer,
    source: FeatureSource,
    batches: EpochBatches,
    on_batch: Callable[[int, Tensor, Tensor], None] | None = None,
    loss: str = "cross_entropy",
) -> Tensor:
    """Train every member of the stack for one epoch.

    Each member's loss is the mean ``loss`` (:func:`trials._scores.sample_loss`) over its real rows
    of the step; the stack's loss is the sum over members, so each member's gradient is its own.

    Parameters
    ----------
    on_batch
        Called as ``on_batch(step, rows, weight)`` before each step (``rows`` are positions
        into ``X``, ``[M, B]``); for instrumentation.

    Returns
    -------
    torch.Tensor
        Per member, the sum of the epoch's per-sample training losses ``[M]``.
    """
    model.train()
    total = torch.zeros(batches.idx.shape[1], device=batches.idx.device)
    target = source.target_stats()
    kind = loss
    for s in range(batches.n_steps):
        if on_batch is not None:
            on_batch(s, batches.rows[s], batches.weight[s])
        x, y = source.gather(batches.idx[s])
        logits = model(x, batches.active[s])
        if kind == "cross_entropy":  # inline: the built-in MLP's hot path
            m, b, c = logits.shape
            per = F.cross_entropy(logits.reshape(m * b, c), y.reshape(m * b), reduction="none").view(m, b)
        else:
            per = sample_loss(kind, logits, y, target)
        per_member = (per * batches.weight[s]).sum(1)
        loss = (per_member * batches.inv_count[s]).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step(batches.masks[s])
        total += per_member.detach()
    return total


@torch.no_grad()
def score_members(
    model: Stack,
    source: FeatureSource,
    idx: Tensor,
    weight: Tensor,
    counts: Tensor,
    chunk: int = 4096,
    *,
    task: str = "classification",
    loss: str = "cross_entropy",
    n_outputs: int | None = None,
) -> dict[str, Tensor]:
    """Every validation metric of ``task`` for every member on its rows ``idx`` ``[M, V]`` (dropout off).

    Returns
    -------
    dict of str to torch.Tensor
        Metric name (``val_loss``, ``val_accuracy`` ...; see :mod:`trials._scores`) to ``[M]``.
    """
    model.eval()
    scores: Scores | None = None
    target = source.target_stats()
    for start in range(0, idx.shape[1], chunk):
        x, y = source.gather(idx[:, start : start + chunk])
        w = weight[:, start : start + chunk]
        out = model(x)
        if scores is None:
            scores = make_scores(task, loss, idx.shape[0], n_outputs or out.shape[-1], idx.device)
        scores.add(out, y, w, target)
    assert scores is not None, "no rows to evaluate"
    return scores.result(counts)


def evaluate(
    model: Stack, source: FeatureSource, idx: Tensor, weight: Tensor, counts: Tensor, chunk: int = 4096
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and accuracy of every member on its rows ``idx`` ``[M, V]`` (dropout off).

    Returns
    -------
    tuple of torch.Tensor
        ``(loss [M], accuracy [M])``.
    """
    m = score_members(model, source, idx, weight, counts, chunk)
    return m["val_loss"], m["val_accuracy"]


# ------------------------------------------------------------------------------------ fit


class _MemberRecord:
    """One member's early-stopping state: best monitored value and epoch, patience counter.

    An epoch's metrics are a mapping ``train_loss`` and the task's validation metrics to floats.
    """

    def __init__(self, monitor: str, patience: int, min_delta: float) -> None:
        self.monitor, self.mode = monitor, metric_mode(monitor)
        self.patience, self.min_delta = patience, min_delta
        self.best_value = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.wait = 0
        self.stopped = False
        self.epochs_run = 0

    def monitored(self, metrics: dict[str, float]) -> float:
        return metrics[self.monitor]

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record an epoch's metrics; True if it is the new best."""
        self.epochs_run, self.last = epoch, metrics
        value = self.monitored(metrics)
        if self.mode == "min":
            better = math.isfinite(value) and value < self.best_value - self.min_delta
        else:
            better = math.isfinite(value) and value > self.best_value + self.min_delta
        first = self.best_epoch == 0  # the first epoch is the best so far even if not finite
        if better or first:
            self.best_value = value if better else self.best_value
            self.best_epoch, self.best = epoch, metrics
        self.wait = 0 if better else self.wait + 1
        # stop after `patience` epochs without improvement (patience 0: after the first), or when
        # the validation loss (a trainable that reports none: the monitored value) is no longer finite
        if self.wait >= max(self.patience, 1) or not math.isfinite(metrics.get("val_loss", value)):
            self.stopped = True
        return better or first

    def report(self, fold: int) -> MemberReport:
        """This epoch's values, or the restored best epoch's once stopped."""
        v = self.best if self.stopped else self.last
        return MemberReport(fold, v.get("train_loss", math.nan), v.get("val_loss", math.nan),
                            v.get("val_accuracy", math.nan),
                            stopped=self.stopped, metrics=_validation(v))

    def state(self) -> dict[str, Any]:
        """Everything :meth:`update` reads and writes (for a checkpoint)."""
        return {k: dict(v) if isinstance(v, dict) else v for k, v in vars(self).items()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take the state :meth:`state` returned."""
        for k in vars(self):
            v = state[k]
            setattr(self, k, dict(v) if isinstance(v, dict) else v)

    def result(self, fold: int) -> FoldResult:
        b = self.best
        return FoldResult(fold, self.best_epoch, self.epochs_run, b.get("val_loss", math.nan),
                          b.get("val_accuracy", math.nan), metrics=_validation(b))


def _validation(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "train_loss"}


@dataclass
class FitOutcome:
    """What :func:`fit_stack` returns: the restored stack and every member's record."""

    model: Stack
    source: FeatureSource
    mean: Tensor
    scale: Tensor
    """Statistics of each distinct training split (``source``'s ``mean``/``scale``)."""
    folds: list[FoldResult]
    curves: dict[str, list[list[float]]]
    epochs_run: list[int]
    """Per member, the epochs it ran."""
    stopped_by_report: set[int]
    """Groups whose ``report`` asked them to stop."""
    train_path: str
    eval_index: tuple[Tensor, Tensor, Tensor]
    """Every member's validation rows (``make_eval_index`` for ``source``)."""
    resumed_from_epoch: int | None = None
    """The epoch of the checkpoint training went on from; None when it started at epoch 1."""


def _eval_chunk(n_members: int, widths: Sequence[int]) -> int:
    return max(256, EVAL_CHUNK_ELEMENTS // (n_members * max(widths)))


def build_stack(
    hps: Sequence[Hyperparams],
    splits: Sequence[MemberSplit],
    input_shape: Sequence[int] | int,
    n_classes: int,
    device: torch.device,
) -> Stack:
    """The stacked model for ``splits`` (built-in MLP, or the user factory's modules) for samples of
    ``input_shape`` (an int: flat samples of that many features)."""
    hp = hps[0]
    if hp.factory is not None:
        return build_factory_stack(hp.factory, hp.params, input_shape, n_classes, [s.seeds.init for s in splits],
                                   device)
    n_features = input_shape if isinstance(input_shape, int) else math.prod(int(s) for s in input_shape)
    return StackedMLP(
        n_features,
        hp.hidden,
        n_classes,
        activation=hp.activation,
        dropout=[h.dropout for h in hps],
        init_seeds=[s.seeds.init for s in splits],
        dropout_seeds=[s.seeds.dropout for s in splits],
        device=device,
    )


def _per_member_hyperparams(hp: Hyperparams | Sequence[Hyperparams], n: int) -> list[Hyperparams]:
    hps = [hp] * n if isinstance(hp, Hyperparams) else list(hp)
    if len(hps) != n:
        raise ValueError(f"got {len(hps)} hyperparameter sets for {n} members")
    key = stack_key(hps[0])
    for h in hps[1:]:
        if stack_key(h) != key:
            diff = sorted(k for (k, a), (_, b) in zip(key, stack_key(h)) if a != b)
            raise ValueError(
                f"these configurations cannot train in one stack: they differ in {', '.join(diff)} (only lr, "
                "momentum, weight_decay and dropout may differ; group them by trials.stack_key)"
            )
    return hps


def prepare_members(
    X: np.ndarray,
    y: np.ndarray,
    splits: Sequence[MemberSplit],
    hps: Sequence[Hyperparams],
    n_classes: int,
    device: torch.device,
    scaling: str = "per_feature",
) -> tuple[FeatureSource, Tensor, Tensor, Stack, StackedOptimizer]:
    """What every member needs before its first epoch: the rows on the device, scaled with
    its training split's statistics (members training the same split share them; a regression's
    target too), the stacked model and its optimizer. Called inside the caller's seeded RNG context
    (:func:`fit_stack`, the refit's ``fit_fixed_epochs``), since building the model draws from it.

    ``X`` is ``[n, *input_shape]``: the rows are kept flat ``[n, d]`` (scaled as ``scaling`` says,
    :func:`fit_scaling`) and the model takes them to its samples' shape.

    Returns
    -------
    source, mean, scale, model, optimizer
        ``mean``/``scale``: statistics of each distinct training split ``[U, d]``.
    """
    hp0 = hps[0]
    regression = hp0.task == "regression"
    input_shape = tuple(int(s) for s in X.shape[1:])
    X = X.reshape(len(X), -1)
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32 if regression else np.int64)).to(device)
    # members training the same split (one fold, several configurations) share its scaling
    distinct: dict[tuple[int, int], int] = {}
    member_rows = [distinct.setdefault((s.fold, id(s.train)), len(distinct)) for s in splits]
    train_of = {u: s.train for s, u in zip(splits, member_rows)}
    stats = [fit_scaling(X, train_of[u], scaling, input_shape) for u in range(len(distinct))]
    mean = torch.from_numpy(np.stack([s[0] for s in stats])).to(device)
    scale = torch.from_numpy(np.stack([s[1] for s in stats])).to(device)
    target = fit_target_scaler(y, [train_of[u] for u in range(len(distinct))], device) if regression else None
    source = FeatureSource(Xt, yt, mean, scale, member_rows, target=target)
    model = build_stack(hps, splits, input_shape, n_classes, device)
    optimizer = StackedOptimizer(
        model.trainable(),
        kind=hp0.optimizer,
        lr=np.array([h.lr for h in hps]),
        momentum=[h.momentum for h in hps],
        weight_decay=[h.weight_decay for h in hps],
    )
    return source, mean, scale, model, optimizer


@contextlib.contextmanager
def _written_on_exit(checkpoint: Checkpointer) -> Iterator[None]:
    """Wait for the save in flight (:meth:`~trials._checkpoint.Checkpointer.finish`); after training that
    ended well, raise a save that failed (:class:`~trials._checkpoint.CheckpointWriteError`: the re-run
    goes on from the last one written)."""
    try:
        yield
    finally:
        checkpoint.finish()
    checkpoint.check()


def fit_stack(
    X: np.ndarray,
    y: np.ndarray,
    splits: Sequence[MemberSplit],
    hp: Hyperparams | Sequence[Hyperparams],
    *,
    n_classes: int,
    device: torch.device,
    seed: int,
    groups: Sequence[int] | None = None,
    report: Callable[[int, EpochReport], bool] | None = None,
    on_batch: Callable[[int, Tensor, Tensor], None] | None = None,
    checkpoint: Checkpointer | None = None,
    scaling: str = "per_feature",
) -> FitOutcome:
    """Train one member per split, as one stack, with per-member early stopping.

    Each epoch every live member trains on its own permutation of its own training rows, is
    evaluated on its own validation rows, and updates its early-stopping state (and its
    reduce-on-plateau rate). A member that stops keeps its best weights and leaves the stack
    (the stack is compacted); training ends when all members stopped or ``max_epochs`` is
    reached. At the end every member's best weights are restored.

    Parameters
    ----------
    hp
        The hyperparameters of every member, or one set per member; members may differ only in
        ``lr``, ``momentum``, ``weight_decay`` and ``dropout`` (equal :func:`stack_key`).
    groups
        Per member, the group (configuration) it belongs to, ``0 .. G-1``; default one group.
    report
        Called after each epoch as ``report(group, EpochReport)`` for every group with a member
        that ran the epoch; returning True stops that group's members at once.
    checkpoint
        Save the whole stack's state at the epoch boundaries it asks for, and go on from the
        checkpoint it holds for this very stack (:mod:`trials._checkpoint`): the epochs before it
        are not trained again, their reports are sent again (in order), and the outcome is the
        uninterrupted run's.
    scaling
        How features are scaled (``Dataset.scaling``; :func:`fit_scaling`). ``X`` is
        ``[n, *input_shape]``; the model takes samples of that shape.

    Returns
    -------
    FitOutcome
    """
    n_members = len(splits)
    hps = _per_member_hyperparams(hp, n_members)
    hp0 = hps[0]
    group_of = [0] * n_members if groups is None else [int(g) for g in groups]
    d = math.prod(X.shape[1:])
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    # a checkpoint still being written when training ends (or fails) is waited for
    waiting = contextlib.nullcontext() if checkpoint is None else _written_on_exit(checkpoint)
    with torch.random.fork_rng(devices=rng_devices), waiting:
        # Only user modules draw from the global RNG (vmap dropout); seed it per trial.
        torch.manual_seed(int(np.random.SeedSequence([int(seed), 2]).generate_state(1)[0]))
        source, mean, scale, model, optimizer = prepare_members(X, y, splits, hps, n_classes, device, scaling)
        train_path = "stacked" if isinstance(model, StackedMLP) else model.mode
        all_gens = list(model.dropout_gens)
        base_lr = np.array([h.lr for h in hps])
        best_state = [t.detach().clone() for t in model.state_tensors()]
        eval_full = make_eval_index([s.val for s in splits], source.offsets, device)
        eval_idx, eval_w, eval_n = eval_full
        widths = [d, *hp0.hidden, n_classes] if hp0.factory is None else [max(d, 256)]

        mode = metric_mode(hp0.monitor)
        plateau = (
            PlateauSchedule(n_members, mode=mode, factor=hp0.plateau_factor, patience=hp0.plateau_patience)
            if hp0.lr_schedule == "plateau"
            else None
        )
        live = list(range(n_members))  # member ids in stack order
        trains = [torch.as_tensor(s.train, dtype=torch.long) for s in splits]
        order_gens = [torch.Generator().manual_seed(s.seeds.order) for s in splits]
        records = [_MemberRecord(hp0.monitor, h.patience, h.min_delta) for h in hps]
        names = ("train_loss", *task_metrics(hp0.task, n_classes if hp0.task == "classification" else None))
        curves: dict[str, list[list[float]]] = {k: [[] for _ in splits] for k in names}
        halted: set[int] = set()  # groups stopped by their report
        sent = ReportHistory()  # every report so far (a checkpoint sends them again)

        def compact(keep: list[int]) -> None:
            """Keep only the members at stack positions ``keep``: stopped members leave the stack."""
            nonlocal eval_idx, eval_w, eval_n, live
            keep_t = torch.tensor(keep, device=device)
            model.select(keep_t)
            optimizer.select(keep_t, model.trainable())
            source.select(keep)
            eval_idx, eval_w, eval_n = (t.index_select(0, keep_t) for t in (eval_idx, eval_w, eval_n))
            live = [live[j] for j in keep]

        def send(g: int, r: EpochReport) -> None:
            if checkpoint is not None:
                sent.append(g, r)
            if report is not None and report(g, r):
                halted.add(g)

        def still_training() -> list[int]:
            return [j for j, mid in enumerate(live) if not records[mid].stopped and group_of[mid] not in halted]

        first_epoch, finished, last_epoch = 1, False, 0
        fingerprint = ""
        if checkpoint is not None:
            fingerprint = stack_fingerprint(hps, splits, group_of, seed=seed, n_features=d, n_classes=n_classes,
                                            shapes=[tuple(t.shape) for t in model.state_tensors()])
            loaded = checkpoint.load(fingerprint, device)
            if loaded is not None:
                done, state = loaded
                if len(state["live"]) < n_members:
                    compact([int(m) for m in state["live"]])
                restore_stack_state(state, model=model, best_state=best_state, optimizer=optimizer, plateau=plateau,
                                    records=records, order_gens=order_gens, dropout_gens=all_gens, device=device)
                curves = {k: [float_list(c) for c in v] for k, v in state["curves"].items()}
                halted = {int(g) for g in state["halted"]}
                for g, r in unpack_reports(state["reports"]):  # the reports of the epochs not trained again
                    send(g, r)
                first_epoch = done + 1
                last_epoch = done
                keep = still_training()
                if not keep:
                    finished = True
                elif len(keep) < len(live):
                    compact(keep)

        for epoch in range(first_epoch, hp0.max_epochs + 1):
            if finished:
                break
            if checkpoint is not None and checkpoint.due(epoch - 1):
                checkpoint.save(epoch - 1, fingerprint, lambda: capture_stack_state(
                    live=live, model=model, best_state=best_state, optimizer=optimizer, plateau=plateau,
                    records=records, curves=curves, halted=halted, reports=sent, order_gens=order_gens,
                    dropout_gens=all_gens, device=device, copy_tensors=checkpoint.background))
            last_epoch = epoch
            if hp0.lr_schedule == "step":
                optimizer.set_lr(base_lr[live] * step_schedule_factor(epoch, hp0.step_size, hp0.gamma))
            batches = make_epoch_batches(
                [trains[i] for i in live], [order_gens[i] for i in live], source.offsets, hp0.batch_size, device
            )
            train_sum = train_one_epoch(model, optimizer, source, batches, on_batch, hp0.loss)
            scores = score_members(model, source, eval_idx, eval_w, eval_n, _eval_chunk(len(live), widths),
                                   task=hp0.task, loss=hp0.loss, n_outputs=n_classes)
            table = torch.stack([train_sum, *(scores[k].to(train_sum.dtype) for k in names[1:])]).cpu().double().numpy()
            improved_pos: list[int] = []
            for j, mid in enumerate(live):
                cur = {k: float(table[i, j]) for i, k in enumerate(names)}
                cur["train_loss"] /= len(trains[mid])
                for key, val in cur.items():
                    curves[key][mid].append(val)
                if records[mid].update(epoch, cur):
                    improved_pos.append(j)
            if improved_pos:
                pos_t = torch.tensor(improved_pos, device=device)
                ids_t = torch.tensor([live[j] for j in improved_pos], device=device)
                for bt, t in zip(best_state, model.state_tensors()):
                    bt.index_copy_(0, ids_t, t.detach().index_select(0, pos_t))
            if plateau is not None:
                pos = [j for j, mid in enumerate(live) if not records[mid].stopped]
                if pos:
                    mids = [live[j] for j in pos]
                    vals = [records[m].monitored(records[m].last) for m in mids]
                    lrs = optimizer.get_lr()
                    lrs[pos] = plateau.step(mids, vals, lrs[pos])
                    optimizer.set_lr(lrs)
            if report is not None or checkpoint is not None:
                for g in sorted({group_of[mid] for mid in live}):
                    members = tuple(records[m].report(splits[m].fold) for m in range(n_members) if group_of[m] == g)
                    send(g, EpochReport(epoch=epoch, members=members))
            keep = still_training()
            if not keep:
                break
            if len(keep) < len(live):  # compact: stopped members leave the stack
                compact(keep)

        def per_member(stats: Tensor) -> Tensor:  # the row of each member's training split (shared in a stack)
            return stats.detach().index_select(0, torch.tensor(source.member_rows, device=stats.device)).cpu()

        if checkpoint is not None and checkpoint.plan.final and last_epoch > checkpoint.saved_epoch:
            # checkpoint.keep_best: the trial's end, every fold's best weights, kept if it is the best trial;
            # with each member's feature scaling and its group (the trial it belongs to, in a stack of several)
            checkpoint.save(last_epoch, fingerprint, lambda: {**capture_stack_state(
                live=live, model=model, best_state=best_state, optimizer=optimizer, plateau=plateau,
                records=records, curves=curves, halted=halted, reports=sent, order_gens=order_gens,
                dropout_gens=all_gens, device=device, copy_tensors=checkpoint.background), "ensemble": {
                    "folds": [int(s.fold) for s in splits], "groups": [int(g) for g in group_of],
                    "input_shape": [int(x) for x in X.shape[1:]],
                    "mean": per_member(mean), "scale": per_member(scale)}})
        model.load_state_tensors(best_state, all_gens)
        source.reset()  # all members again, for evaluating the restored stack
        folds = [r.result(s.fold) for r, s in zip(records, splits)]
    return FitOutcome(
        model=model,
        source=source,
        mean=mean,
        scale=scale,
        folds=folds,
        curves=curves,
        epochs_run=[r.epochs_run for r in records],
        stopped_by_report=halted,
        train_path=train_path,
        eval_index=eval_full,
        resumed_from_epoch=None if checkpoint is None else checkpoint.resumed_from_epoch,
    )


def score_test(out: Any, data: Dataset, hp: Hyperparams, device: torch.device) -> dict[str, float]:
    """Every metric of the task for the (one-member) fitted stack ``out`` (a :class:`FitOutcome`, or
    the refit's ``FixedFit``: anything with ``model``, ``source``, ``mean`` and ``scale``) on the test split.

    The test rows are standardized with the refit training rows' statistics (features and, for
    regression, the target); metrics are keyed by their validation names (``val_accuracy`` ...).
    """
    regression = hp.task == "regression"
    Xt = torch.from_numpy(np.ascontiguousarray(data.X_test.reshape(len(data.X_test), -1), dtype=np.float32)).to(device)
    yt = torch.from_numpy(np.ascontiguousarray(data.y_test, dtype=np.float32 if regression else np.int64)).to(device)
    target = out.source.target_stats()
    flat = None if target is None else (target[0][:, 0], target[1][:, 0])
    test_source = FeatureSource(Xt, yt, out.mean, out.scale, target=flat)
    idx, w, n = make_eval_index([np.arange(len(yt))], test_source.offsets, device)
    scores = score_members(out.model, test_source, idx, w, n, task=hp.task, loss=hp.loss, n_outputs=data.n_classes)
    return {k: float(v[0]) for k, v in scores.items()}
