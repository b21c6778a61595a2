"""Checkpoints of a trial trained by your own function (``ctx.save_checkpoint`` / ``ctx.load_checkpoint``).

The folds of a trainable's trial run in lockstep (:mod:`trials._trainable`), so a checkpoint is
taken where every fold is at the same epoch: when epoch ``e`` is due (``checkpoint.every_epochs``,
``every_s``, decided once all folds reported ``e``), each live fold's ``ctx.save_checkpoint(state)``
right after its ``report(e)`` is copied (the state to the CPU, with hpsearch's own state of the fold:
its early-stopping record, its curves, the loaders it made, its random state); once every live fold
saved ``e``, one file holds them all, with the folds that already ended and the epoch reports sent so
far. A save call at an epoch that is not due, or after a ``report`` that answered True, is a no-op.

On a re-run, a fold that had ended is not called again; a live one gets its saved state from
``ctx.load_checkpoint()``, which also puts the fold's random state and loader count back as they were
at the save (so call it after building your model and optimizer), and must report ``e + 1`` next.
The saved reports are sent again first, so the pruner and the trial's values see every epoch.

The file is :func:`trials._checkpoint.write_checkpoint`'s (JSON and raw tensor bytes, no pickle);
your state's dicts, lists and tuples are kept apart (an optimizer's ``state_dict`` has int keys and
tuples), tensors come back on the device they were saved from (a GPU's: this run's ``ctx.device``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._checkpoint import Checkpointer, CheckpointUnusable, ReportHistory, _digest, float_list, floats, unpack_reports
from ._config import TrialSettings
from ._results import EpochReport

__all__ = ["TrainableCheckpoints", "decode_state", "encode_state", "trainable_fingerprint"]

_SCALARS = (bool, int, float, str, type(None))


def encode_state(value: Any, where: str = "state") -> Any:
    """``value`` (tensors, numbers, strings, None, numpy arrays, dicts, lists, tuples) as a tree
    :func:`~trials._checkpoint.write_checkpoint` keeps exactly: containers tagged by kind, tensors
    copied to the CPU (training goes on with the originals).

    Raises
    ------
    TypeError
        A value of another type, naming where in ``value`` it is.
    """
    if isinstance(value, torch.Tensor):
        cpu = value.detach().to("cpu", copy=True)
        return cpu if value.device.type == "cpu" else {"dev": cpu}
    if isinstance(value, np.ndarray):
        return {"a": torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Mapping):
        return {"d": [[encode_state(k, f"{where} key {k!r}"), encode_state(v, f"{where}[{k!r}]")]
                      for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"t" if isinstance(value, tuple) else "l": [encode_state(v, f"{where}[{i}]")
                                                          for i, v in enumerate(value)]}
    raise TypeError(f"ctx.save_checkpoint: {where} is a {type(value).__name__}; save tensors, numbers, strings, "
                    "None, numpy arrays and dicts, lists or tuples of them (e.g. model.state_dict(), "
                    "optimizer.state_dict(), the epoch)")


def decode_state(value: Any, device: torch.device) -> Any:
    """The state :func:`encode_state` encoded; tensors saved from a GPU on ``device``."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        ((kind, inner),) = value.items()
        if kind == "dev":
            return inner.to(device)
        if kind == "a":
            return inner.numpy()
        if kind == "d":
            return {_hashable(decode_state(k, device)): decode_state(v, device) for k, v in inner}
        items = [decode_state(v, device) for v in inner]
        return tuple(items) if kind == "t" else items
    return value


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def capture_rng(cuda: bool) -> dict[str, Any]:
    """The global random state of the calling fold (torch, CUDA, numpy, ``random``) as checkpoint values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else None,
            "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "random": [int(version), [int(x) for x in internal], gauss_next]}


def restore_rng(state: Mapping[str, Any], cuda: bool) -> None:
    """Make ``state`` (:func:`capture_rng`) the global random state."""
    torch.set_rng_state(state["torch"].cpu())
    if cuda and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss_next = state["random"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))


def trainable_fingerprint(
    name: str,
    params: Mapping[str, Any],
    settings: TrialSettings,
    *,
    seed: int,
    splits: Sequence[tuple[int | None, np.ndarray, np.ndarray | None]],
    input_shape: Sequence[int],
    n_outputs: int,
) -> str:
    """What a trainable's checkpoint must have been made for: the function, the params, the seed, the
    folds' rows, the data's shape and the settings that decide early stopping."""
    t = settings.training
    payload = {
        "trainable": name,
        "params": {str(k): params[k] for k in sorted(params, key=str)},
        "seed": int(seed),
        "splits": [[None if f is None else int(f), _digest(tr), None if va is None else _digest(va)]
                   for f, tr, va in splits],
        "input_shape": [int(s) for s in input_shape],
        "n_outputs": int(n_outputs),
        "task": settings.task,
        "training": [t.monitor, int(t.patience), float(t.min_delta), int(t.max_epochs), int(t.batch_size)],
    }
    return "trainable-" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()


class TrainableCheckpoints:
    """A trainable trial's side of a :class:`~trials._checkpoint.Checkpointer`: which epoch is due,
    the folds' copies of it, the file, and what a re-run takes back from it.

    Folds are the lockstep runner's ``_Fold`` objects (``i``, ``reported``, ``record``, ``curves``,
    ``done``); contexts are their :class:`~trials.TrainContext`.
    """

    def __init__(self, checkpointer: Checkpointer, fingerprint: str, cuda: bool) -> None:
        self.checkpointer, self.fingerprint, self.cuda = checkpointer, fingerprint, cuda
        self.due_epoch: int | None = None
        self.copies: dict[int, dict[str, Any]] = {}  # fold index -> its state at due_epoch
        self.sent = ReportHistory()  # every epoch report so far, packed as sent (a re-run sends them again)
        self.resumed: dict[int, dict[str, Any]] = {}  # fold index -> its saved state (a re-run's live folds)
        self.epoch = 0  # the epoch the trial went on from (0: from the start)

    # ---- saving

    def offer(self, f: Any, ctx: Any, state: Any) -> None:
        """``ctx.save_checkpoint(state)`` of fold ``f``: copied when its last report is of the due epoch."""
        if self.due_epoch is None or f.reported != self.due_epoch or f.i in self.copies:
            return
        self.copies[f.i] = {"done": False, "reported": int(f.reported), "record": copy.deepcopy(f.record.state()),
                            "curves": {k: floats(v) for k, v in f.curves.items()}, "loaders": int(ctx._loaders),
                            "rng": capture_rng(self.cuda), "user": encode_state(state)}

    def due(self, epoch: int) -> None:
        """After every fold's report of ``epoch`` (and the answers): save it if the plan says so."""
        self.due_epoch = epoch if self.checkpointer.due(epoch) else None
        self.copies = {}

    def write(self, folds: Sequence[Any], ended_by: Mapping[int, int]) -> None:
        """Once every fold was stepped past the due epoch ``e``: write the checkpoint of ``e`` when every
        fold either saved ``e`` or had ended by round ``e`` (``ended_by``: fold index -> its last round)."""
        e = self.due_epoch
        if e is None:
            return
        self.due_epoch = None
        entries = []
        for f in folds:
            if f.i in self.copies:
                entries.append(self.copies[f.i])
            elif f.done and ended_by.get(f.i, e + 1) <= e:
                entries.append({"done": True, "reported": int(f.reported), "record": copy.deepcopy(f.record.state()),
                                "curves": {k: floats(v) for k, v in f.curves.items()}, "loaders": 0, "rng": None,
                                "user": None})
            else:  # a live fold that did not save this epoch: no state where every fold is consistent
                self.copies = {}
                return
        state = {"kind": "trainable", "folds": entries, "reports": self.sent.packed()}
        self.copies = {}
        self.checkpointer.save(e, self.fingerprint, lambda: state)

    # ---- resuming

    def restore(self, folds: Sequence[Any]) -> list[EpochReport]:
        """Put the checkpoint's fold states back into ``folds`` (not yet started); the epoch reports to
        send again, in order. Nothing when there is no usable checkpoint (the reason is in its messages).

        Raises
        ------
        CheckpointUnusable
            When its folds do not fit this trial (the fingerprint should have caught it).
        """
        loaded = self.checkpointer.load(self.fingerprint, "cpu")
        if loaded is None:
            return []
        epoch, state = loaded
        entries = state.get("folds") if state.get("kind") == "trainable" else None
        if entries is None or len(entries) != len(folds):
            raise CheckpointUnusable("the checkpoint's folds do not fit this trial")
        for f, s in zip(folds, entries):
            f.record.load_state(s["record"])
            f.curves = {k: float_list(v) for k, v in s["curves"].items()}
            f.reported = int(s["reported"])
            if s["done"]:
                f.done = True
            else:
                self.resumed[f.i] = s
        self.epoch = int(epoch)
        reports = [r for _, r in unpack_reports(state["reports"], grouped=False)]
        self.sent = ReportHistory()
        for r in reports:
            self.sent.append(0, r)
        return reports

    def load(self, f: Any, ctx: Any, first: bool) -> Any:
        """``ctx.load_checkpoint()`` of fold ``f``: its saved state or None; the first call puts its
        random state and loader count back."""
        s = self.resumed.get(f.i)
        if s is None:
            return None
        if first:
            restore_rng(s["rng"], self.cuda)
            ctx._loaders = int(s["loaders"])
        return decode_state(s["user"], ctx.device)


def unusable_resume(name: str, where: str, epoch: int, reported: int, loaded: bool) -> CheckpointUnusable:
    """Why a fold's first report after going on from the checkpoint of ``epoch`` cannot continue it."""
    if not loaded:
        why = (f"trainable {name} did not call ctx.load_checkpoint() in {where} before reporting epoch {reported}, "
               f"so it cannot go on from the checkpoint of epoch {epoch}")
    else:
        why = (f"trainable {name} reported epoch {reported} in {where} after ctx.load_checkpoint() gave it the state "
               f"saved after epoch {epoch}; go on from the saved epoch + 1 (save right after ctx.report(epoch, ...))")
    return CheckpointUnusable(why)

