"""Training functions named by import path in the search tests (``trainable: tests.search.trainables:NAME``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trials import TrainContext


def train(ctx: TrainContext) -> nn.Module:
    """A small MLP with gradient clipping and label smoothing; reports val_loss and val_accuracy."""
    model = nn.Sequential(nn.Linear(ctx.input_shape[0], int(ctx.params.get("width", 16))), nn.ReLU(),
                          nn.Linear(int(ctx.params.get("width", 16)), ctx.n_outputs)).to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=float(ctx.params["lr"]), momentum=0.9)
    for epoch in range(1, ctx.max_epochs + 1):
        model.train()
        for x, y in ctx.loader("train"):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        metrics = {"train_loss": loss.item()}
        if ctx.val is not None:
            model.eval()
            with torch.no_grad():
                x, y = ctx.val.tensors
                out = model(x)
            metrics.update(val_loss=F.cross_entropy(out, y).item(),
                           val_accuracy=(out.argmax(1) == y).float().mean().item())
        if ctx.report(epoch, **metrics):
            break
    return model


def breaks_on_workers(ctx: TrainContext) -> nn.Module:
    """Passes the driver's one-epoch check, then raises in every trial's second epoch."""
    ctx.report(1, val_loss=1.0, val_accuracy=0.5)
    if ctx.max_epochs > 1:
        _load_weights(str(ctx.params["lr"]))
    return nn.Linear(ctx.input_shape[0], ctx.n_outputs)


def _load_weights(name: str) -> None:
    raise FileNotFoundError(f"no checkpoint named {name}")


def nan_on_workers(ctx: TrainContext) -> nn.Module:
    """Passes the driver's check, then reports a NaN validation loss at epoch 2."""
    ctx.report(1, val_loss=1.0, val_accuracy=0.5)
    if ctx.max_epochs > 1:
        ctx.report(2, val_loss=float("nan"), val_accuracy=0.5)
    return nn.Linear(ctx.input_shape[0], ctx.n_outputs)


def resumable(ctx: TrainContext) -> nn.Module:
    """:func:`train` with checkpoints: saves after each report, goes on from the saved epoch."""
    width = int(ctx.params.get("width", 16))
    model = nn.Sequential(nn.Linear(ctx.input_shape[0], width), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(width, ctx.n_outputs)).to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=float(ctx.params["lr"]), momentum=0.9)
    start = 1
    saved = ctx.load_checkpoint()
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["epoch"] + 1
    for epoch in range(start, ctx.max_epochs + 1):
        model.train()
        for x, y in ctx.loader("train"):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        metrics = {"train_loss": loss.item()}
        if ctx.val is not None:
            model.eval()
            with torch.no_grad():
                x, y = ctx.val.tensors
                out = model(x)
            metrics.update(val_loss=F.cross_entropy(out, y).item(),
                           val_accuracy=(out.argmax(1) == y).float().mean().item())
        stop = ctx.report(epoch, **metrics)
        ctx.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch})
        if stop:
            break
    return model
