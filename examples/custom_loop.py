"""Your own training loop, tuned by hpsearch: examples/custom_loop.yaml names ``examples.custom_loop:train``.

A plain PyTorch loop with two things hpsearch's built-in loop does not do, gradient clipping and
label smoothing, both tuned. hpsearch calls :func:`train` once per fold (and once for the refit),
decides early stopping and pruning from what it reports, and scores the model it returns on the
test split.

It saves a checkpoint after each report (``ctx.save_checkpoint``: a no-op unless the epoch is due by
the study's ``checkpoint.every_epochs``) and goes on from one (``ctx.load_checkpoint``), so a trial
interrupted mid-training is re-run from its last checkpoint and scores what it would have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trials import TrainContext


def build(input_shape: tuple[int, ...], n_outputs: int, width: int, dropout: float) -> nn.Module:
    """A small MLP for flat samples (an 8x8 digit is 64 pixels)."""
    n_in = 1
    for s in input_shape:
        n_in *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, width), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(width, n_outputs))


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.utils.data.TensorDataset) -> dict[str, float]:
    """Validation loss (plain cross-entropy, no smoothing) and accuracy on all of ``data``."""
    model.eval()
    x, y = data.tensors
    logits = model(x)
    return {"val_loss": F.cross_entropy(logits, y).item(),
            "val_accuracy": (logits.argmax(1) == y).float().mean().item()}


def train(ctx: TrainContext) -> nn.Module:
    """Train one fold: AdamW, gradient clipping at ``clip`` and label smoothing ``smoothing``."""
    p = ctx.params
    model = build(ctx.input_shape, ctx.n_outputs, int(p.get("width", 64)), float(p.get("dropout", 0.1)))
    model = model.to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=float(p["lr"]), weight_decay=float(p.get("weight_decay", 0.0)))
    start = 1
    saved = ctx.load_checkpoint()  # None unless this is the re-run of an interrupted trial
    if saved is not None:  # after building the model: it also puts the fold's random state back
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["epoch"] + 1
    for epoch in range(start, ctx.max_epochs + 1):
        model.train()
        total, n = 0.0, 0
        for x, y in ctx.loader("train", shuffle=True):
            loss = F.cross_entropy(model(x), y, label_smoothing=float(p.get("smoothing", 0.0)))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=float(p.get("clip", 1.0)))
            opt.step()
            total, n = total + loss.item() * len(y), n + len(y)
        # the refit trains on every non-test row (ctx.val is None): report the training loss alone
        metrics = evaluate(model, ctx.val) if ctx.val is not None else {}
        stop = ctx.report(epoch, train_loss=total / n, **metrics)
        # right after the report, the state at the end of this epoch (copied: training goes on)
        ctx.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch})
        if stop:
            break  # early stopping, pruning, or max_epochs: hpsearch's decision
    return model
