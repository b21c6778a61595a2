"""Training on a streamed ``Dataset`` (:mod:`trials._stream`): batches through a ``DataLoader``, one member at a time.

The stacked loop (:func:`trials._engine.fit_stack`) gathers every member's batch from one tensor of
all rows on the device; a streamed Dataset has no such tensor, so here each member (a fold, or the
refit) has its own model (a stack of one, built as the stacked loop builds it) and optimizer, and
reads its own rows: ``torch.utils.data.Subset`` of the Dataset's samples through a ``DataLoader``
(shuffled with a generator seeded from the member's order seed). The members still run in
lockstep by epoch, so every epoch's report holds every fold, as the stacked loop's does; the losses,
the metrics (:mod:`trials._scores`), early stopping and the reduce-on-plateau rate are the stacked
loop's. Features are scaled with statistics of the member's training rows, computed in one streaming
pass over them (running float64 means and sums of squares per feature, merged batch by batch; then
grouped for ``global`` / ``per_channel``); labels come from the driver's encoded labels, by sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, SequentialSampler, Subset
from torch.utils.data import Dataset as TorchDataset

from ._config import Hyperparams
from ._data import Dataset
from ._engine import MemberSplit, _MemberRecord, build_stack, fit_target_scaler, scaling_groups
from ._metrics import metric_mode, task_metrics
from ._optim import PlateauSchedule, StackedOptimizer, step_schedule_factor
from ._results import EpochReport, FoldResult
from ._scores import make_scores, sample_loss

__all__ = ["StreamedFit", "fit_streamed", "score_batches", "split_samples", "streamed_scaling"]

# Rows per batch of a pass that only reads (the scaling statistics, evaluation).
READ_BATCH = 256


class Samples(TorchDataset):
    """Every sample of the user's Dataset as ``(x, y)``: ``x`` float32 of ``input_shape`` (scaled
    ``(x - mean) / scale`` when ``stats`` are given), ``y`` the driver's encoded label of that sample."""

    def __init__(self, ds: Any, labels: Tensor, shape: Sequence[int], stats: tuple[Tensor, Tensor] | None = None
                 ) -> None:
        self.ds, self.labels, self.shape, self.stats = ds, labels, tuple(int(s) for s in shape), stats

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.ds[int(i)][0]
        x = x.detach().to(torch.float32) if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, np.float32))
        x = x.reshape(self.shape)
        if self.stats is not None:
            x = (x - self.stats[0]) / self.stats[1]
        return x, self.labels[i]


def sample_labels(data: Dataset) -> Tensor:
    """The encoded label (class code, int64) or target (float32) of every sample, by sample number."""
    assert data.stream is not None
    regression = data.task == "regression"
    full = np.zeros(data.stream.n, dtype=np.float32 if regression else np.int64)
    full[data.index] = data.y
    full[data.test_index] = data.y_test
    return torch.from_numpy(full)


def split_samples(data: Dataset, rows: np.ndarray, *, test: bool = False,
                  stats: tuple[np.ndarray, np.ndarray] | None = None, samples: Samples | None = None) -> Subset:
    """The ``Subset`` of the streamed Dataset at positions ``rows`` of the search split (``test``: of the
    test split), as ``(x, y)`` samples, scaled with ``stats`` (in the sample's shape) when given."""
    assert data.stream is not None
    if samples is None:
        scaled = None if stats is None else (torch.from_numpy(stats[0]), torch.from_numpy(stats[1]))
        samples = Samples(data.stream.open(), sample_labels(data), data.sample_shape, scaled)
    ids = (data.test_index if test else data.index)[np.asarray(rows, dtype=np.int64)]
    return Subset(samples, [int(i) for i in ids])


class _Shuffled(Sampler[int]):
    """One ``torch.randperm(n)`` of its own generator per epoch (``RandomSampler`` draws two)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


def loader(subset: Any, batch_size: int, *, shuffle: bool, seed: int, **kwargs: Any) -> DataLoader:
    """A ``DataLoader`` over ``subset`` whose order comes from its own generator, seeded with ``seed``.

    Shuffled, each epoch's order is ``torch.randperm`` of that generator alone, as the stacked loop
    draws a member's order (the loader's own draws, e.g. its workers' base seed, use another one).
    """
    sampler = _Shuffled(len(subset), int(seed)) if shuffle else SequentialSampler(subset)
    return DataLoader(subset, batch_size=int(batch_size), sampler=sampler,
                      generator=torch.Generator().manual_seed(int(seed) + 1), **kwargs)


def streamed_scaling(subset: Any, scaling: str, input_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale ``[d]`` of a Subset's flat features, as :func:`trials._engine.fit_scaling` gives
    them for rows in memory, in one pass (Chan's batch merge of float64 means and sums of squares)."""
    d = math.prod(int(s) for s in input_shape)
    if scaling == "none":
        return np.zeros(d, np.float32), np.ones(d, np.float32)
    n, mean, m2 = 0, np.zeros(d), np.zeros(d)
    for x, _ in loader(subset, READ_BATCH, shuffle=False, seed=0):
        b = x.reshape(len(x), -1).to(torch.float64).numpy()
        nb = len(b)
        bm = b.mean(axis=0)
        delta = bm - mean
        mean += delta * (nb / (n + nb))
        m2 += ((b - bm) ** 2).sum(axis=0) + delta**2 * (n * nb / (n + nb))
        n += nb
    if scaling == "per_feature":
        scale = np.sqrt(m2 / n)
    else:
        group = scaling_groups(scaling, d, input_shape)
        per = np.bincount(group).astype(np.float64)  # features per group
        gmean = np.bincount(group, weights=mean) / per
        gm2 = np.bincount(group, weights=m2 + n * (mean - gmean[group]) ** 2)
        mean, scale = gmean[group], np.sqrt(gm2 / (n * per))[group]
    scale[scale < 1e-12] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


@torch.no_grad()
def score_batches(model: Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]], *, task: str,
                  loss: str, n_outputs: int, device: torch.device,
                  target: tuple[Tensor, Tensor] | None) -> dict[str, float]:
    """Every metric of ``task`` (validation names) of ``model``'s outputs ``[1, B, n_outputs]`` over ``batches``."""
    scores = make_scores(task, loss, 1, n_outputs, device)
    n = 0
    for x, y in batches:
        y = y.to(device)
        scores.add(model(x), y.unsqueeze(0), torch.ones(1, len(y), device=device), target)
        n += len(y)
    return {k: float(v[0]) for k, v in scores.result(torch.tensor([float(n)], device=device)).items()}


class _Member:
    """One member's model, optimizer, loaders, scaling and early-stopping state."""

    def __init__(self, data: Dataset, samples: Samples, split: MemberSplit, hp: Hyperparams, n_classes: int,
                 device: torch.device) -> None:
        self.hp, self.device, self.n_classes, self.samples = hp, device, n_classes, samples
        shape = data.sample_shape
        train = split_samples(data, split.train, samples=samples)
        mean, scale = streamed_scaling(train, data.scaling, shape)
        self.mean, self.scale = torch.from_numpy(mean).to(device), torch.from_numpy(scale).to(device)
        self.target = None
        if hp.task == "regression":
            m, s = fit_target_scaler(data.y, [split.train], device)
            self.target = (m.unsqueeze(1), s.unsqueeze(1))
        self.model = build_stack([hp], [split], shape, n_classes, device)
        self.optimizer = StackedOptimizer(self.model.trainable(), kind=hp.optimizer, lr=np.array([hp.lr]),
                                          momentum=[hp.momentum], weight_decay=[hp.weight_decay])
        self.train = loader(train, hp.batch_size, shuffle=True, seed=split.seeds.order)
        self.n_train = len(split.train)
        self.val = None if len(split.val) == 0 else loader(split_samples(data, split.val, samples=samples),
                                                           READ_BATCH, shuffle=False, seed=0)
        self.record = _MemberRecord(hp.monitor, hp.patience, hp.min_delta)
        self.best = [t.detach().clone() for t in self.model.state_tensors()]
        self.epochs_run = 0

    def inputs(self, x: Tensor) -> Tensor:
        """A batch ``[B, *input_shape]`` as the stack's input: flat, scaled ``[1, B, d]`` on the device."""
        return ((x.to(self.device).reshape(len(x), -1) - self.mean) / self.scale).unsqueeze(0)

    def train_epoch(self, epoch: int) -> float:
        """One epoch over the training rows; the mean per-sample training loss."""
        hp = self.hp
        if hp.lr_schedule == "step":
            self.optimizer.set_lr(np.array([hp.lr]) * step_schedule_factor(epoch, hp.step_size, hp.gamma))
        self.model.train()
        total = torch.zeros((), device=self.device)
        for x, y in self.train:
            per = sample_loss(hp.loss, self.model(self.inputs(x)), y.to(self.device).unsqueeze(0), self.target)
            self.optimizer.zero_grad()
            per.mean().backward()
            self.optimizer.step()
            total += per.detach().sum()
        self.epochs_run = epoch
        return float(total) / self.n_train

    def score(self, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
        self.model.eval()
        return score_batches(lambda x: self.model(self.inputs(x)), batches, task=self.hp.task, loss=self.hp.loss,
                             n_outputs=self.n_classes, device=self.device, target=self.target)

    def plateau_step(self, plateau: PlateauSchedule | None, value: float) -> None:
        if plateau is not None:
            self.optimizer.set_lr(plateau.step([0], [value], self.optimizer.get_lr()))

    def keep_best(self) -> None:
        self.best = [t.detach().clone() for t in self.model.state_tensors()]


@dataclass
class StreamedFit:
    """What :func:`fit_streamed` returns: as :class:`trials._engine.FitOutcome` for the trial's
    results, with one trained member per split (best weights restored; the last with ``epochs``)."""

    folds: list[FoldResult]
    curves: dict[str, list[list[float]]]
    epochs_run: list[int]
    stopped_by_report: set[int]
    members: list[_Member]
    train_path: str = "streamed"
    resumed_from_epoch: int | None = None

    def score_test(self, data: Dataset, member: int = 0) -> dict[str, float]:
        """Every metric of the task (validation names) of one member on the test split, streamed."""
        m = self.members[member]
        test = split_samples(data, np.arange(len(data.y_test)), test=True, samples=m.samples)
        return m.score(loader(test, READ_BATCH, shuffle=False, seed=0))


def fit_streamed(
    data: Dataset,
    splits: Sequence[MemberSplit],
    hps: Sequence[Hyperparams],
    *,
    n_classes: int,
    device: torch.device,
    seed: int,
    groups: Sequence[int] | None = None,
    report: Callable[[int, EpochReport], bool] | None = None,
    epochs: int | None = None,
) -> StreamedFit:
    """Train one member per split on the streamed ``data``, in lockstep by epoch, as :func:`fit_stack` would.

    Without ``epochs``, every member early-stops on its validation rows and gets its best epoch's
    weights back; ``report`` gets every group's :class:`EpochReport` after each epoch (True stops
    the group). With ``epochs`` (the refit's ``cv_median``), the members train exactly that many
    epochs on their training rows (no validation; ``plateau`` watches the training loss, and a loss
    that is no longer finite ends training) and keep their last weights.
    """
    assert data.stream is not None
    n = len(splits)
    group_of = [0] * n if groups is None else [int(g) for g in groups]
    hp0 = hps[0]
    samples = Samples(data.stream.open(), sample_labels(data), data.sample_shape)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        # as fit_stack: only user modules draw from the global RNG (their dropout); seeded per trial
        torch.manual_seed(int(np.random.SeedSequence([int(seed), 2]).generate_state(1)[0]))
        members = [_Member(data, samples, s, h, n_classes, device) for s, h in zip(splits, hps)]
        mode = "min" if epochs is not None else metric_mode(hp0.monitor)
        plateaus = [PlateauSchedule(1, mode=mode, factor=h.plateau_factor, patience=h.plateau_patience)
                    if h.lr_schedule == "plateau" else None for h in hps]
        names = ("train_loss", *task_metrics(hp0.task, n_classes if hp0.task == "classification" else None))
        curves: dict[str, list[list[float]]] = {k: [[] for _ in splits] for k in names}
        halted: set[int] = set()
        live = list(range(n))
        for epoch in range(1, (epochs or hp0.max_epochs) + 1):
            for i in live:
                m = members[i]
                cur = {"train_loss": m.train_epoch(epoch)}
                if epochs is not None:  # the refit: no validation rows
                    curves["train_loss"][i].append(cur["train_loss"])
                    m.plateau_step(plateaus[i], cur["train_loss"])
                    continue
                cur.update(m.score(m.val if m.val is not None else ()))
                for key, value in cur.items():
                    curves[key][i].append(value)
                if m.record.update(epoch, cur):
                    m.keep_best()
                if not m.record.stopped:
                    m.plateau_step(plateaus[i], m.record.monitored(cur))
            if epochs is not None:
                live = [i for i in live if math.isfinite(curves["train_loss"][i][-1])]
            else:
                if report is not None:
                    for g in sorted({group_of[i] for i in live}):
                        rs = tuple(members[k].record.report(splits[k].fold) for k in range(n) if group_of[k] == g)
                        if report(g, EpochReport(epoch=epoch, members=rs)):
                            halted.add(g)
                live = [i for i in live if not members[i].record.stopped and group_of[i] not in halted]
            if not live:
                break
        if epochs is None:
            for m in members:
                m.model.load_state_tensors(m.best, list(m.model.dropout_gens))
    return StreamedFit(
        folds=[m.record.result(s.fold) for m, s in zip(members, splits)],
        curves=curves,
        epochs_run=[m.epochs_run if epochs is not None else m.record.epochs_run for m in members],
        stopped_by_report=halted,
        members=members,
    )
