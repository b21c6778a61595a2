"""Per-member training losses and validation metrics of each task, on stacked outputs ``[M, B, C]``.

Classification: cross-entropy on the logits; metrics ``val_loss`` (mean cross-entropy),
``val_accuracy``, ``val_f1_macro`` (the mean over classes present in the labels or the
predictions of per-class F1, as scikit-learn's ``f1_score(average="macro")``) and, for two classes,
``val_auc`` (ROC AUC of ``logit[1] - logit[0]``, ties counted half, as ``roc_auc_score``).

Regression: one output, trained on the target standardized with the member's training rows'
mean and std (so a learning rate means the same on any scale of target); ``val_loss`` is the
training loss (``mse``, ``l1`` or ``huber``) on that standardized scale, ``val_mse``, ``val_mae``
and ``val_r2`` are in the target's own units (``r2 = 1 - SSE / SST`` over the member's rows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ClassificationScores", "RegressionScores", "Scores", "make_scores", "sample_loss"]


def sample_loss(loss: str, out: Tensor, y: Tensor, target: tuple[Tensor, Tensor] | None) -> Tensor:
    """Per-sample loss ``[M, B]`` of stacked outputs ``out`` ``[M, B, C]`` against ``y`` ``[M, B]``.

    ``target`` is the per-member ``(mean, scale)`` ``[M, 1]`` of a regression target (``None``
    for classification).
    """
    m, b, c = out.shape
    if loss == "cross_entropy":
        return F.cross_entropy(out.reshape(m * b, c).float(), y.reshape(m * b), reduction="none").view(m, b)
    assert target is not None, "a regression loss needs the target's scaling"
    mean, scale = target
    pred = out[..., 0].float()
    t = (y - mean) / scale
    if loss == "mse":
        return (pred - t).square()
    if loss == "l1":
        return (pred - t).abs()
    if loss == "huber":
        return F.huber_loss(pred, t, reduction="none", delta=1.0)
    raise ValueError(f"unknown loss {loss!r}")


class ClassificationScores:
    """Accumulates, chunk by chunk, every member's loss, confusion matrix and (two classes) scores.

    Accuracy and F1 both come from the confusion matrix, gathered with one ``scatter_add`` per
    chunk: the built-in MLP's evaluation costs no more ops than accuracy alone did.
    """

    def __init__(self, n_members: int, n_classes: int, device: torch.device, auc: bool) -> None:
        self.n_classes, self.auc = n_classes, auc
        self.loss = torch.zeros(n_members, device=device)
        self.confusion = torch.zeros(n_members, n_classes * n_classes, device=device)  # [M, true * C + pred]
        self.margins: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.weights: list[Tensor] = []

    def add(self, out: Tensor, y: Tensor, w: Tensor, target: tuple[Tensor, Tensor] | None) -> None:
        m, b, c = out.shape
        ce = F.cross_entropy(out.reshape(m * b, c).float(), y.reshape(-1), reduction="none").view(m, b)
        self.loss += (ce * w).sum(1)
        self.confusion.scatter_add_(1, y * c + out.argmax(-1), w)
        if self.auc:
            self.margins.append((out[..., 1] - out[..., 0]).float())
            self.labels.append(y)
            self.weights.append(w)

    def result(self, counts: Tensor) -> dict[str, Tensor]:
        conf = self.confusion.view(-1, self.n_classes, self.n_classes)
        tp = conf.diagonal(dim1=1, dim2=2)
        support = conf.sum(1) + conf.sum(2)  # predicted + true, per class
        present = support > 0
        f1 = 2 * tp / support.clamp(min=1e-12)  # 0 where a class is neither true nor predicted
        out = {
            "val_loss": self.loss / counts,
            "val_accuracy": tp.sum(1) / counts,
            "val_f1_macro": f1.sum(1) / present.sum(1).clamp(min=1),
        }
        if self.auc:
            out["val_auc"] = _auc(torch.cat(self.margins, 1), torch.cat(self.labels, 1), torch.cat(self.weights, 1))
        return out


def _auc(score: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """ROC AUC per member (rows with weight 0 are padding): the Mann-Whitney U with average ranks."""
    out = torch.empty(score.shape[0], device=score.device)
    for j in range(score.shape[0]):
        keep = w[j] > 0
        s, pos = score[j][keep].double(), y[j][keep] == 1
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            out[j] = math.nan
            continue
        order = torch.argsort(s)
        sorted_s = s[order]
        _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()
        avg = ends - (counts.double() - 1) / 2  # 1-based average rank of each group of ties
        ranks = torch.empty_like(s)
        ranks[order] = avg[inverse]
        u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
        out[j] = u / (n_pos * n_neg)
    return out


class RegressionScores:
    """Accumulates every member's loss (standardized scale) and squared / absolute errors (target units)."""

    def __init__(self, n_members: int, loss: str, device: torch.device) -> None:
        self.loss_name = loss
        z = torch.zeros(n_members, device=device, dtype=torch.float64)
        self.loss, self.sse, self.sae, self.sy, self.syy = (z.clone() for _ in range(5))

    def add(self, out: Tensor, y: Tensor, w: Tensor, target: tuple[Tensor, Tensor] | None) -> None:
        assert target is not None
        mean, scale = target
        self.loss += (sample_loss(self.loss_name, out, y, target) * w).sum(1).double()
        pred = out[..., 0].double() * scale.double() + mean.double()
        err = pred - y.double()
        wd, yd = w.double(), y.double()
        self.sse += (err.square() * wd).sum(1)
        self.sae += (err.abs() * wd).sum(1)
        self.sy += (yd * wd).sum(1)
        self.syy += (yd.square() * wd).sum(1)

    def result(self, counts: Tensor) -> dict[str, Tensor]:
        n = counts.double()
        sst = self.syy - self.sy.square() / n
        r2 = torch.where(sst > 0, 1 - self.sse / sst.clamp(min=1e-300), torch.full_like(sst, math.nan))
        return {"val_loss": self.loss / n, "val_mse": self.sse / n, "val_mae": self.sae / n, "val_r2": r2}


Scores = ClassificationScores | RegressionScores


def make_scores(task: str, loss: str, n_members: int, n_outputs: int, device: torch.device) -> Scores:
    """The accumulator of ``task``'s metrics (``val_auc`` only for two classes)."""
    if task == "regression":
        return RegressionScores(n_members, loss, device)
    return ClassificationScores(n_members, n_outputs, device, auc=n_outputs == 2)
