"""Checkpoints of a running trial: the whole stack's training state, saved to an artifact store.

A trial that was interrupted (its worker killed, its orchestrator stopped, a node lost) is run again
as a new trial; when its :class:`CheckpointPlan` names the checkpoint of the interrupted run, it
goes on from there instead of from epoch 1, and ends with the fold scores the uninterrupted run
would have had (on CPU, bit-equal): the checkpoint holds every member's weights and best weights,
the optimizer's state and learning rates, the plateau schedule, the early-stopping records, the
curves and per-epoch reports so far, and every random generator's state.

A checkpoint is one file of the run's artifact store (a directory or an S3 bucket:
:mod:`trials._store`), written by the worker (it needs the store, never the database), replaced
atomically at each save. On a GPU the state is copied to the host and written in a background
thread while training goes on; on the CPU it is written in the training thread, straight from the
live tensors (no copy: a worker has no core to spare, and a second thread only contends for its
own, docs/benchmarks.md), unless the store makes writes wait (an object store, a network file
system: :attr:`Checkpointer.background`).

The file is a line ``hpsearch-checkpoint/1``, a line of JSON (the epoch, the stack's fingerprint,
the sizes and xxh3-64 checksum of the rest; CRC-32 in files written before 2026-12-06, still read),
the state as JSON with each tensor replaced by its index, dtype and shape, and the tensors' raw
bytes (no pickle: reading a checkpoint runs no code). A file that is missing, unreadable, fails its
checksum, or was made for another stack (other params, another model shape, other folds or seeds:
the fingerprint) is not used: the trial starts fresh, and says why.

This module imports torch only when it saves or loads, so ``trials.CheckpointPlan`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from ._store import artifact_of, open_location

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointPlan",
    "CheckpointUnusable",
    "CheckpointWriteError",
    "Checkpointer",
    "checkpoint_files",
    "checkpoint_sizes",
    "checkpoint_sizes_of",
    "read_checkpoint",
    "remove_checkpoints",
    "stack_fingerprint",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "hpsearch-checkpoint/1"
_MAGIC = CHECKPOINT_FORMAT.encode() + b"\n"
# how often a failed checkpoint write is tried in all before the trial stops (CheckpointWriteError), and the
# wait before the second try (doubled before each next one: a network file system that blinks gets 1.5 s)
_WRITE_ATTEMPTS = 3
_WRITE_BACKOFF_S = 0.5
# writes in the training thread that waited this long for their store (and longer than their own CPU time),
# this many in a row, move the next ones to a background thread (Checkpointer.background)
_WAITING_WRITE_S = 0.002
_WAITING_WRITES = 2


@dataclass(frozen=True)
class CheckpointPlan:
    """Where a trial saves its checkpoint, and how often.

    Attributes
    ----------
    directory
        The artifact store: a directory (shared by all nodes on a cluster) or ``s3://BUCKET/PREFIX/``
        (:func:`trials._store.open_location`).
    artifact_id
        The checkpoint's artifact id, chosen by the orchestrator and kept by every re-run of the trial.
    every_epochs, every_s
        Save after every ``every_epochs`` epochs and/or once ``every_s`` seconds passed since the
        last save (at an epoch boundary); None: not by that rule.
    rerun
        This run continues an interrupted one: a missing checkpoint is then worth a message.
    final
        Save once more when training ends (``checkpoint.keep_best``): the file then holds every
        fold's best weights (``best_state``) and whole curves. The built-in loop only; a
        ``trainable``'s last checkpoint is the one of its last due epoch.
    """

    directory: str
    artifact_id: str
    every_epochs: int | None = None
    every_s: float | None = None
    rerun: bool = False
    final: bool = False

    def for_folds(self, folds: Sequence[int] | None) -> CheckpointPlan:
        """The plan of a part of the trial that trains only ``folds`` (``resources.parallel_folds``)."""
        if folds is None:
            return self
        return dataclasses.replace(self, artifact_id=f"{self.artifact_id}-folds-{'-'.join(map(str, folds))}")


class CheckpointUnusable(Exception):
    """A checkpoint that cannot be used; ``str(err)`` says why (missing, corrupt, another stack's)."""


class CheckpointWriteError(Exception):
    """The artifact directory could not be written after every attempt: the trial stops there.

    Its last checkpoint that was written is whole (each save replaces the file atomically), so a
    re-run of the trial goes on from it; the orchestrator stops the study, resumable (exit 3).

    Attributes
    ----------
    directory, artifact_id
        Where the checkpoint was to be written.
    reason
        The operating system's words (``Permission denied``, ``No space left on device``).
    """

    def __init__(self, directory: str, artifact_id: str, reason: str, attempts: int) -> None:
        super().__init__(f"cannot write the checkpoint {open_location(directory).where(artifact_id)} ({reason}) "
                         f"after {attempts} attempts")
        self.directory, self.artifact_id, self.reason = directory, artifact_id, reason


def _flatten(value: Any, tensors: list[Any]) -> Any:
    """``value`` as JSON, each tensor replaced by ``{"tensor": [index, dtype, shape]}`` (appended to ``tensors``)."""
    import torch

    if value is None or isinstance(value, (float, int, str)):  # most of a state: leave before the slower checks
        return value
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return {"tensor": [len(tensors) - 1, str(value.dtype).removeprefix("torch."), list(value.shape)]}
    if isinstance(value, (dict, Mapping)):  # a dict is told apart before the ABC's slower check
        return {str(k): _flatten(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flatten(v, tensors) for v in value]
    return value


def _unflatten(value: Any, tensors: list[Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"tensor"}:
            return tensors[value["tensor"][0]]
        return {k: _unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


def _raw(t: Any) -> memoryview:
    """The bytes of CPU tensor ``t`` without a copy."""
    import torch

    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def write_checkpoint(directory: str, artifact_id: str, epoch: int, fingerprint: str, state: Mapping[str, Any]) -> int:
    """Save ``state`` (CPU tensors and plain values) as checkpoint ``artifact_id`` of epoch ``epoch``,
    atomically; returns its size in bytes.

    The store replaces the file atomically (a directory's: the new version, written into the file
    replaced last time, is renamed over the old one, :meth:`~trials._store.DirectoryLocation.replace_parts`;
    S3's: a PUT), so a kill in the middle of a save leaves the previous checkpoint whole. The tensors'
    bytes are hashed and written straight from their memory (no pickling, no copy; the GIL is released
    for both, so training in the other thread goes on).

    Raises
    ------
    OSError
        When the store cannot be written.
    """
    tensors: list[Any] = []
    layout = json.dumps(_flatten(dict(state), tensors)).encode()
    raws = [_raw(t) for t in tensors]
    digest = xxhash.xxh3_64(layout)  # a checksum against a damaged or cut file (xxh3: 13x faster than CRC-32 here)
    for r in raws:
        digest.update(r)
    meta = {"epoch": int(epoch), "fingerprint": fingerprint, "xxh3_64": digest.intdigest(), "layout_bytes": len(layout),
            "tensor_bytes": [len(r) for r in raws], "saved_at": time.time()}
    header = _MAGIC + json.dumps(meta).encode() + b"\n"
    open_location(directory).replace_parts(artifact_id, [header, layout, *raws])
    return len(header) + len(layout) + sum(len(r) for r in raws)


def read_checkpoint(directory: str, artifact_id: str, fingerprint: str | None, device: Any = "cpu") -> tuple[int, dict]:
    """``(epoch, state)`` of checkpoint ``artifact_id``, checked against ``fingerprint`` (None: not
    checked, for a reader that only takes its weights); tensors on ``device``.

    Raises
    ------
    CheckpointUnusable
        Missing, unreadable, failing its checksum, of another format, or made for another stack.
    """
    import torch

    loc = open_location(directory)
    where = loc.where(artifact_id)
    try:
        data = loc.read(artifact_id)
    except FileNotFoundError:
        raise CheckpointUnusable(f"no checkpoint at {where}") from None
    except OSError as e:
        raise CheckpointUnusable(f"cannot read the checkpoint {where} ({e.strerror or e})") from None
    if not data.startswith(_MAGIC):
        raise CheckpointUnusable(f"the checkpoint {where} is corrupt (it is not an {CHECKPOINT_FORMAT} file)")
    end = data.find(b"\n", len(_MAGIC))
    try:
        meta = json.loads(data[len(_MAGIC):end]) if end > 0 else None
        sizes = [int(n) for n in meta["tensor_bytes"]]
        n_layout = int(meta["layout_bytes"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointUnusable(f"the checkpoint {where} is corrupt (its header does not parse)") from None
    body = memoryview(data)[end + 1:]
    if len(body) != n_layout + sum(sizes) or not _checksum_matches(body, meta):
        raise CheckpointUnusable(f"the checkpoint {where} is corrupt (its checksum does not match)")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise CheckpointUnusable(f"the checkpoint {where} was made for another stack (other params, model shape, "
                                 "folds or seeds); it is ignored")
    layout = json.loads(bytes(body[:n_layout]))
    specs: list[Any] = []
    _flatten_specs(layout, specs)
    tensors, at = [], n_layout
    for (_, dtype, shape), size in zip(sorted(specs), sizes, strict=True):  # in index order: the bytes' order
        dt = getattr(torch, dtype)
        t = (torch.frombuffer(bytearray(body[at:at + size]), dtype=dt) if size else torch.empty(0, dtype=dt))
        tensors.append(t.reshape(shape).to(device))
        at += size
    return int(meta["epoch"]), _unflatten(layout, tensors)


def _checksum_matches(body: memoryview, meta: Mapping[str, Any]) -> bool:
    """Whether ``body`` has the checksum its header names (xxh3-64; CRC-32 in older files)."""
    if "xxh3_64" in meta:
        return xxhash.xxh3_64_intdigest(body) == meta["xxh3_64"]
    return "crc32" in meta and zlib.crc32(body) == meta["crc32"]


def _flatten_specs(value: Any, out: list[Any]) -> None:
    """The ``[index, dtype, shape]`` of every tensor in a layout."""
    if isinstance(value, dict):
        if set(value) == {"tensor"}:
            index, dtype, shape = value["tensor"]
            out.append((int(index), str(dtype), tuple(shape)))
            return
        for v in value.values():
            _flatten_specs(v, out)
    elif isinstance(value, list):
        for v in value:
            _flatten_specs(v, out)


def checkpoint_files(directory: str, artifact_id: str) -> list[str]:
    """The files of checkpoint ``artifact_id`` in the store ``directory``: its own, its fold parts', leftover
    temporaries; in name order (:func:`checkpoint_sizes` with their sizes)."""
    return list(checkpoint_sizes(directory, artifact_id))


def checkpoint_sizes(directory: str, artifact_id: str) -> dict[str, int]:
    """``{name: bytes}`` of :func:`checkpoint_files`; empty when there are none (or the store cannot be listed)."""
    return checkpoint_sizes_of(directory, [artifact_id]).get(artifact_id, {})


def checkpoint_sizes_of(directory: str, artifact_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """:func:`checkpoint_sizes` of many checkpoints, from one listing of the store (their ids' common
    prefix): ``{id: {name: bytes}}`` of those that have files."""
    ids = set(artifact_ids)
    if not ids:
        return {}
    try:
        found = open_location(directory).list(os.path.commonprefix(sorted(ids)))  # noqa: RUF071 (ids, not paths)
    except OSError:
        return {}
    out: dict[str, dict[str, int]] = {}
    for name in sorted(found):
        # <id>, <id>-folds-<f>..., and a directory's temporaries and spares of them (artifact_of)
        owner = artifact_of(name).split("-folds-")[0]
        if owner in ids:
            out.setdefault(owner, {})[name] = found[name]
    return out


def remove_checkpoints(directory: str, artifact_id: str) -> int:
    """Delete every file of checkpoint ``artifact_id`` (:func:`checkpoint_files`); returns the bytes freed."""
    freed = 0
    loc = open_location(directory)
    for name, size in checkpoint_sizes(directory, artifact_id).items():
        try:
            loc.remove(name)
            freed += size
        except OSError:  # not ours to delete, or the store blinked: nothing lost, a later call tries again
            continue
    return freed


def _digest(values: Any) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.int64).tobytes()).hexdigest()


def stack_fingerprint(
    hps: Sequence[Any],
    splits: Sequence[Any],
    groups: Sequence[int],
    *,
    seed: int,
    n_features: int,
    n_classes: int,
    shapes: Sequence[Sequence[int]],
) -> str:
    """What a checkpoint must have been made for: every member's hyperparameters and params, split
    rows and seeds, the stack's groups, and the shapes of the model's state tensors."""
    from ._config import factory_name

    def hp_dict(hp: Any) -> dict[str, Any]:
        d = {f.name: getattr(hp, f.name) for f in dataclasses.fields(hp)}
        if d.get("factory") is not None:
            d["factory"] = factory_name(d["factory"])
        d["params"] = dict(d.get("params") or {})
        return d

    payload = {
        "hps": [hp_dict(h) for h in hps],
        "splits": [[int(s.fold), s.seeds.init, s.seeds.order, s.seeds.dropout, _digest(s.train), _digest(s.val)]
                   for s in splits],
        "groups": [int(g) for g in groups],
        "seed": int(seed),
        "n_features": int(n_features),
        "n_classes": int(n_classes),
        "shapes": [[int(x) for x in s] for s in shapes],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()


class Checkpointer:
    """A running stack's side of a :class:`CheckpointPlan`: when to save, and the saving and loading.

    A failed save is tried again, with backoff; when every attempt fails, the trial stops at its
    next epoch boundary (or at its end) with :class:`CheckpointWriteError`: the study stops too,
    resumable, and the re-run goes on from the last checkpoint that was written.

    Attributes
    ----------
    messages
        What the trial should tell the user (a checkpoint not used).
    error
        The :class:`CheckpointWriteError` of a save that failed every attempt (raised by :meth:`check`).
    resumed_from_epoch
        The epoch of the checkpoint the trial went on from; None when it started fresh.
    background
        Write in a background thread, from a copy of the state, rather than in the training thread
        from the live state. On a GPU from the start (the caller's choice); on the CPU once two
        writes in a row waited for their store longer than they computed, and over 2 ms (an object
        store, a network file system): a local disk's writes do not wait, and the thread would only
        contend for the worker's core.
    saved, bytes
        Checkpoints written by this run, and the size of the last one.
    blocking_s, waiting_s, writing_s
        Time the saves took from training (capturing the state, and writing it unless in the
        background), time waiting for the previous background write, and time the writes took.
    capture_cpu_s, writing_cpu_s
        CPU time of capturing the state (training thread) and of the writes (whichever thread).
    """

    def __init__(self, plan: CheckpointPlan, clock: Any = time.monotonic, *, background: bool = False) -> None:
        self.plan = plan
        self.background = background
        self._clock = clock
        self._last_save = clock()
        self._last_epoch = 0
        self._skip_load = False
        self._writer: threading.Thread | None = None
        self._waits = 0  # writes in a row that waited for their store
        self._first_write = True
        self.messages: list[str] = []
        self.error: CheckpointWriteError | None = None
        self.resumed_from_epoch: int | None = None
        self.saved = 0
        self.bytes = 0
        self.blocking_s = self.waiting_s = self.writing_s = 0.0
        self.capture_cpu_s = self.writing_cpu_s = 0.0

    def reset(self, message: str) -> None:
        """Start over without loading: the checkpoint turned out unusable while it was restored."""
        self.messages.append(message)
        self.resumed_from_epoch = None
        self._last_epoch = 0
        self._skip_load = True

    def load(self, fingerprint: str, device: Any) -> tuple[int, dict] | None:
        """The checkpoint to go on from, or None (starting fresh; the reason is in :attr:`messages`)."""
        if self._skip_load:
            return None
        try:
            epoch, state = read_checkpoint(self.plan.directory, self.plan.artifact_id, fingerprint, device)
        except CheckpointUnusable as e:
            missing = str(e).startswith("no checkpoint")
            if not missing or self.plan.rerun:
                self.messages.append(f"{e}; the trial starts from epoch 1")
            return None
        self.resumed_from_epoch = self._last_epoch = epoch
        return epoch, state

    @property
    def saved_epoch(self) -> int:
        """The epoch of the last checkpoint saved (or loaded) by this run; 0 when none."""
        return self._last_epoch

    def check(self) -> None:
        """Raise the :class:`CheckpointWriteError` of a save that failed every attempt, if any."""
        if self.error is not None:
            raise self.error

    def due(self, epoch: int) -> bool:
        """Whether to save the state after ``epoch`` (1-based) completed epochs.

        Raises
        ------
        CheckpointWriteError
            When an earlier save failed every attempt (:meth:`check`): training stops here.
        """
        self.check()
        if epoch <= self._last_epoch:
            return False
        p = self.plan
        if p.every_epochs is not None and epoch % p.every_epochs == 0:
            return True
        return p.every_s is not None and self._clock() - self._last_save >= p.every_s

    def save(self, epoch: int, fingerprint: str, capture: Callable[[], Mapping[str, Any]]) -> None:
        """Write the checkpoint of ``epoch``: the state ``capture()`` returns, in the training thread, or
        (:attr:`background`) in a thread of its own while training goes on (``capture()`` must then
        return a copy); the previous background write is waited for first, so at most one is in flight."""
        t0 = time.perf_counter()
        self.wait()
        t1, cpu = time.perf_counter(), time.thread_time()
        self.waiting_s += t1 - t0
        state = capture()
        self.capture_cpu_s += time.thread_time() - cpu
        self._last_epoch = epoch
        self._last_save = self._clock()
        if self.background:
            self._writer = threading.Thread(target=self._write, args=(epoch, fingerprint, state),
                                            name="hpsearch-checkpoint", daemon=True)
            self._writer.start()
        else:
            w0, c0 = time.perf_counter(), time.thread_time()
            first_try = self._write(epoch, fingerprint, state)
            spent = time.thread_time() - c0
            waited = time.perf_counter() - w0 - spent
            # a write that waited for its store (not for a retry's backoff), twice in a row: not a preempted one
            self._waits = self._waits + 1 if first_try and waited > max(_WAITING_WRITE_S, spent) else 0
            if self._waits >= _WAITING_WRITES:
                self.background = True  # the store keeps writes waiting: training goes on while they wait
        self.blocking_s += time.perf_counter() - t1

    def wait(self) -> None:
        """Until the save in flight (if any) is on disk (:func:`~trials._engine.fit_stack` waits before it returns)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None

    def finish(self) -> None:
        """Training ended (or failed): :meth:`wait`, then drop the store's spare file for the next save
        (:meth:`~trials._store.ArtifactLocation.release`); a retry from epoch 1 may still save."""
        self.wait()
        open_location(self.plan.directory).release(self.plan.artifact_id)

    def _write(self, epoch: int, fingerprint: str, state: Mapping[str, Any]) -> bool:
        """Try a failed write again, with backoff; after the last attempt, keep the error for :meth:`check`.
        Whether the first attempt succeeded."""
        t0, cpu = time.perf_counter(), time.thread_time()
        if self._first_write:  # a (re-)run's first save: the spares of the runs before it are not theirs any more
            self._first_write = False
            open_location(self.plan.directory).release(self.plan.artifact_id, every_writer=True)
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                self.bytes = write_checkpoint(self.plan.directory, self.plan.artifact_id, epoch, fingerprint, state)
                self.saved += 1
                self.writing_s += time.perf_counter() - t0
                self.writing_cpu_s += time.thread_time() - cpu
                return attempt == 1
            except OSError as e:
                if attempt == _WRITE_ATTEMPTS:
                    self.error = CheckpointWriteError(self.plan.directory, self.plan.artifact_id,
                                                      str(e.strerror or e), attempt)
                    return False
                time.sleep(_WRITE_BACKOFF_S * 2 ** (attempt - 1))
        return False


# ------------------------------------------------------------------------------ the stack's state


def floats(values: Sequence[float]) -> Any:
    """``values`` as a float64 tensor: a checkpoint writes its bytes as they are, where JSON would print
    every number (a 30-epoch curve of 5 folds: 0.4 ms a save); :func:`float_list` gives them back exactly."""
    import torch

    return torch.tensor(values, dtype=torch.float64)


def float_list(value: Any) -> list[float]:
    """The list of floats :func:`floats` packed (or a list: a checkpoint written before the packing)."""
    return value.tolist() if hasattr(value, "tolist") else [float(v) for v in value]


_REPORT_FIELDS = 3  # train_loss, val_loss, val_accuracy, then the metrics


class ReportHistory:
    """The epoch reports sent so far, packed as they come: a save carries them all (:meth:`packed`),
    at a cost that hardly grows with their number (as JSON, 30 epochs of 5 folds cost 1.1 ms a save;
    packed anew at each save, 0.3 ms).

    ``heads`` holds each report's group, epoch and member count; ``members`` each member's fold and
    stopped flag; ``values`` its losses, accuracy and the metrics named in ``metrics`` (a member
    without one of them: False in ``present``). :func:`unpack_reports` gives the reports back.
    """

    def __init__(self) -> None:
        self._cols: dict[str, int] = {}
        self._heads: list[tuple[int, int, int]] = []
        self._members: list[tuple[int, int]] = []
        self._values: list[list[float]] = []
        self._present: list[list[bool]] = []

    def append(self, group: int, report: Any) -> None:
        """Keep ``report`` (an :class:`~trials.EpochReport`) of ``group``."""
        self._heads.append((int(group), int(report.epoch), len(report.members)))
        for m in report.members:
            for k in m.metrics:
                if k not in self._cols:  # a metric first seen: a column more, absent from the rows so far
                    self._cols[k] = len(self._cols)
                    for v, p in zip(self._values, self._present):
                        v.append(math.nan)
                        p.append(False)
            values = [m.train_loss, m.val_loss, m.val_accuracy, *[math.nan] * len(self._cols)]
            present = [False] * len(self._cols)
            for k, x in m.metrics.items():
                values[_REPORT_FIELDS + self._cols[k]] = x
                present[self._cols[k]] = True
            self._members.append((int(m.fold), int(m.stopped)))
            self._values.append(values)
            self._present.append(present)

    def packed(self) -> dict[str, Any]:
        """The reports so far as tensors (copies: later reports do not change them)."""
        import torch

        rows, k = len(self._members), len(self._cols)
        return {"metrics": list(self._cols),
                "heads": torch.tensor(self._heads, dtype=torch.int64).reshape(len(self._heads), 3),
                "members": torch.tensor(self._members, dtype=torch.int64).reshape(rows, 2),
                "values": torch.tensor(self._values, dtype=torch.float64).reshape(rows, _REPORT_FIELDS + k),
                "present": torch.tensor(self._present, dtype=torch.bool).reshape(rows, k)}


def unpack_reports(packed: Any, *, grouped: bool = True) -> list[tuple[int, Any]]:
    """The ``(group, EpochReport)`` pairs :class:`ReportHistory` packed, in order.

    A checkpoint written before the packing keeps a list: ``[group, report]`` pairs, or (``grouped``
    False, a trainable's) the reports alone, whose group is 0.
    """
    from ._results import EpochReport, MemberReport

    if isinstance(packed, list):
        return [(int(g), _legacy_report(r)) for g, r in (packed if grouped else ((0, r) for r in packed))]
    names = list(packed["metrics"])
    members, values, present = (packed[k].tolist() for k in ("members", "values", "present"))
    out, row = [], 0
    for g, epoch, n in packed["heads"].tolist():
        ms = []
        for (fold, stopped), v, here in zip(members[row:row + n], values[row:row + n], present[row:row + n]):
            ms.append(MemberReport(fold, v[0], v[1], v[2], bool(stopped),
                                   {k: x for k, x, h in zip(names, v[_REPORT_FIELDS:], here) if h}))
        out.append((g, EpochReport(epoch=epoch, members=tuple(ms))))
        row += n
    return out


def _legacy_report(state: Sequence[Any]) -> Any:
    """An :class:`~trials.EpochReport` as a checkpoint kept it before :class:`ReportHistory`."""
    from ._results import EpochReport, MemberReport

    epoch, members = state
    return EpochReport(epoch=int(epoch), members=tuple(
        MemberReport(int(f), float(tl), float(vl), float(va), bool(st), dict(metrics))
        for f, tl, vl, va, st, metrics in members))


def capture_stack_state(
    *,
    live: Sequence[int],
    model: Any,
    best_state: Sequence[Any],
    optimizer: Any,
    plateau: Any,
    records: Sequence[Any],
    curves: Mapping[str, list[list[float]]],
    halted: set[int],
    reports: ReportHistory,
    order_gens: Sequence[Any],
    dropout_gens: Sequence[Any],
    device: Any,
    copy_tensors: bool = True,
) -> dict[str, Any]:
    """Everything the next epoch of :func:`trials._engine.fit_stack` reads, as tensors and plain values.

    ``live`` are the member ids still in the (compacted) stack, in stack order; the model's and the
    optimizer's tensors are those of the live members, ``best_state`` every member's. The tensors are
    copies to the CPU (``copy_tensors``: training goes on while they are written), or on the CPU
    already, the live ones themselves.
    """
    import torch

    def cpu(ts: Sequence[Any]) -> list[Any]:
        return [t.detach().to("cpu", copy=copy_tensors) for t in ts]

    return {
        "live": [int(m) for m in live],
        "model": cpu(model.state_tensors()),
        "best_state": cpu(best_state),
        "lr": cpu([optimizer.lr])[0],
        "optimizer": {k: cpu(v) for k, v in optimizer.state.items()},
        "adam_steps": cpu([optimizer.steps])[0] if optimizer.kind == "adam" else None,
        "plateau": None if plateau is None else {"best": [float(v) for v in plateau.best],
                                                  "num_bad": [int(v) for v in plateau.num_bad]},
        "records": [r.state() for r in records],  # copies (of plain values)
        "curves": {k: [floats(c) for c in v] for k, v in curves.items()},
        "halted": sorted(int(g) for g in halted),
        "reports": reports.packed(),
        "order_gens": [g.get_state() for g in order_gens],
        "dropout_gens": [g.get_state() for g in dropout_gens],
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None,
    }


def restore_stack_state(
    state: Mapping[str, Any],
    *,
    model: Any,
    best_state: Sequence[Any],
    optimizer: Any,
    plateau: Any,
    records: Sequence[Any],
    order_gens: Sequence[Any],
    dropout_gens: Sequence[Any],
    device: Any,
) -> None:
    """Put ``state`` (:func:`capture_stack_state`) back into a stack already compacted to its live members.

    Raises
    ------
    CheckpointUnusable
        When a tensor's shape does not fit the stack (the fingerprint should have caught it).
    """
    import numpy as np
    import torch

    def copy_into(dst: Sequence[Any], src: Sequence[Any], what: str) -> None:
        if len(dst) != len(src) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(dst, src)):
            raise CheckpointUnusable(f"the checkpoint's {what} do not fit this stack")
        with torch.no_grad():
            for a, b in zip(dst, src):
                a.copy_(b)

    copy_into(model.state_tensors(), state["model"], "weights")
    copy_into(best_state, state["best_state"], "best weights")
    copy_into([optimizer.lr], [state["lr"]], "learning rates")
    optimizer.set_lr(optimizer.lr.cpu().numpy())  # the float32 copy SGD steps with
    for name, tensors in optimizer.state.items():
        copy_into(tensors, state["optimizer"][name], f"optimizer state {name}")
    if optimizer.kind == "adam":
        copy_into([optimizer.steps], [state["adam_steps"]], "Adam step counts")
    if plateau is not None:
        plateau.best = np.array(state["plateau"]["best"], dtype=np.float64)
        plateau.num_bad = np.array(state["plateau"]["num_bad"], dtype=np.int64)
    for r, s in zip(records, state["records"], strict=True):
        r.load_state(s)
    for g, s in zip([*order_gens, *dropout_gens], [*state["order_gens"], *state["dropout_gens"]], strict=True):
        g.set_state(s.cpu() if hasattr(s, "cpu") else s)
    torch.set_rng_state(state["rng"].cpu())
    if state.get("cuda_rng") is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
