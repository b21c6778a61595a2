"""What checkpoints cost, and what they save (issue 16, section 3).

``overhead``: one trial on digits (the default 64-200-200-10 MLP, 5 folds as one stack, SGD, every
epoch run: no early stop), timed with and without ``checkpoint.every_epochs: 1`` (a save of the
whole stack at every epoch boundary, to a directory on the local disk), interleaved over rounds in
the same process with one intra-op thread (as on a Ray worker). The ratio is per epoch,
``t_checkpointed / t_plain - 1`` of the fastest run of each (a shared machine's load inflates the
others; the median of the paired runs is recorded too), and, measured inside each save, the time the
training thread spends on it (copying the state) and the time the background write takes, as
fractions of an epoch. Goal: at most 5 %.

``kill``: a 30-epoch trial (same network) killed after epoch 20 (its process dies right after the
epoch's report, before the next save), then run again from its checkpoint, for ``every_epochs`` 1
and 5. Recorded: the epoch it went on from, the epochs trained again (``20 - resumed_from_epoch``),
the epochs trained after the resume, its wall time against a run from epoch 1, and that its fold
scores equal the uninterrupted run's. Goal: at most ``every_epochs`` epochs trained again.

Usage::

    .venv/bin/python -m bench.bench_checkpoint --out bench/results
    .venv/bin/python -m bench.bench_checkpoint --smoke --out artifacts/bench-smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import report_header, stats, wait_for_quiet, write_json


class _Killed(Exception):
    """Stands for the worker process dying after an epoch's report."""


def _settings(epochs: int) -> Any:
    from trials import ModelSpec, TrainingSpec, TrialSettings

    return TrialSettings(model=ModelSpec(hidden=(200, 200)),
                         training=TrainingSpec(optimizer="sgd", lr=0.05, batch_size=64, max_epochs=epochs,
                                               patience=10_000))


def _fit(data: Any, settings: Any, checkpoint: Any = None) -> Any:
    """One trial's stack (every fold), as :func:`trials.run_trial` trains it, with ``checkpoint`` (a Checkpointer)."""
    import torch

    from trials import resolve_hyperparams
    from trials._engine import MemberSplit, fit_stack
    from trials._seeding import member_seeds

    hp = resolve_hyperparams(settings, {})
    splits = [MemberSplit(f, tr, va, member_seeds(0, f)) for f, (tr, va) in enumerate(data.folds)]
    return fit_stack(data.X, data.y, splits, hp, n_classes=data.n_classes, device=torch.device("cpu"), seed=0,
                     checkpoint=checkpoint)


def overhead(data: Any, *, epochs: int, rounds: int, tmp: Path) -> dict[str, Any]:
    from trials import CheckpointPlan
    from trials._checkpoint import Checkpointer

    settings = _settings(epochs)
    plain_s, ckpt_s, blocking, waiting, writing, size = [], [], [], [], [], 0
    _fit(data, settings)  # warm-up: first-call costs out of the way
    for r in range(rounds):
        for mode in (("plain", "ckpt") if r % 2 == 0 else ("ckpt", "plain")):
            saver = Checkpointer(CheckpointPlan(str(tmp), f"bench-{r}", every_epochs=1)) if mode == "ckpt" else None
            t0 = time.perf_counter()
            _fit(data, settings, saver)
            dt = (time.perf_counter() - t0) / epochs
            if saver is None:
                plain_s.append(dt)
            else:
                ckpt_s.append(dt)
                blocking.append(saver.blocking_s / saver.saved)
                waiting.append(saver.waiting_s / saver.saved)
                writing.append(saver.writing_s / saver.saved)
                size = saver.bytes
    epoch = min(plain_s)
    ratios = [c / p - 1.0 for p, c in zip(plain_s, ckpt_s)]
    out = {"epochs": epochs, "rounds": rounds, "saves_per_run": epochs - 1,
           "plain_epoch_s": stats(plain_s), "checkpoint_epoch_s": stats(ckpt_s), "paired_ratios": ratios,
           # the fastest run of each: what a machine shared with other work disturbs least
           "wall_overhead": min(ckpt_s) / min(plain_s) - 1.0,
           "median_paired_overhead": statistics.median(ratios),
           # per save, against the fastest plain epoch: what the training thread waits for (the copy of the
           # state), and what the background write costs (paid on another core, or shared with training)
           "blocking_per_epoch": statistics.median(blocking) / epoch,
           "waiting_per_epoch": statistics.median(waiting) / epoch,
           "writing_per_epoch": statistics.median(writing) / epoch,
           "checkpoint_bytes": size}
    print(f"overhead: {min(plain_s) * 1e3:.1f} ms/epoch plain, {min(ckpt_s) * 1e3:.1f} ms/epoch with a checkpoint "
          f"every epoch ({out['wall_overhead'] * 100:+.2f} %; median of paired runs "
          f"{out['median_paired_overhead'] * 100:+.2f} %); per save: {out['blocking_per_epoch'] * 100:.2f} % of an "
          f"epoch copying the state, {out['waiting_per_epoch'] * 100:.2f} % waiting for the previous write, "
          f"{out['writing_per_epoch'] * 100:.2f} % in the writer; "
          f"{size / 1e6:.2f} MB each", flush=True)
    return out


def kill_and_resume(data: Any, *, epochs: int, kill_at: int, every: int, tmp: Path) -> dict[str, Any]:
    from trials import CheckpointPlan, run_trial

    settings = _settings(epochs)
    t0 = time.perf_counter()
    plain = run_trial(data, {}, settings, seed=0)
    fresh_s = time.perf_counter() - t0
    plan = CheckpointPlan(str(tmp), f"kill-{every}", every_epochs=every)

    def dies(r: Any) -> bool:
        if r.epoch == kill_at:
            raise _Killed
        return False

    try:
        run_trial(data, {}, settings, seed=0, report=dies, checkpoint=plan)
    except _Killed:
        pass
    t0 = time.perf_counter()
    resumed = run_trial(data, {}, settings, seed=0, checkpoint=plan)
    resumed_s = time.perf_counter() - t0
    went_on = resumed.resumed_from_epoch or 0
    out = {"every_epochs": every, "epochs": epochs, "killed_after_epoch": kill_at, "resumed_from_epoch": went_on,
           "epochs_trained_again": kill_at - went_on, "epochs_after_resume": resumed.epochs_run - went_on,
           "fresh_s": round(fresh_s, 3), "resumed_s": round(resumed_s, 3),
           "scores_equal_uninterrupted": resumed.folds == plain.folds}
    print(f"kill at {kill_at}/{epochs}, every_epochs {every}: went on from epoch {went_on}, "
          f"{out['epochs_trained_again']} epoch(s) trained again; {resumed_s:.2f} s vs {fresh_s:.2f} s from "
          f"epoch 1; scores equal: {out['scores_equal_uninterrupted']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: 3 epochs, 1 round, a 6-epoch kill")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default 9; smoke 1)")
    args = p.parse_args(argv)
    import torch

    from trials import CVSpec, DataSpec, load_dataset

    torch.set_num_threads(1)
    result = report_header("bench_checkpoint", args.smoke, argv)
    result["waited_for_quiet_s"] = round(wait_for_quiet(1.5, 0 if args.smoke else 300), 1)
    result["load_average_at_start"] = os.getloadavg()[0]
    data = load_dataset(DataSpec(source="digits"), CVSpec(folds=5), seed=0)
    epochs, rounds = (3, 1) if args.smoke else (6, args.rounds or 9)
    total, kill_at = (6, 4) if args.smoke else (30, 20)
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        result["overhead"] = overhead(data, epochs=epochs, rounds=args.rounds or rounds, tmp=Path(tmp))
        result["kill"] = [kill_and_resume(data, epochs=total, kill_at=kill_at, every=e, tmp=Path(tmp))
                          for e in ((1, 2) if args.smoke else (1, 5))]
    goals = [{"goal": "a checkpoint every epoch costs at most 5 % of epoch time (digits MLP)",
              "value": result["overhead"]["wall_overhead"], "met": result["overhead"]["wall_overhead"] <= 0.05},
             {"goal": "the training thread spends at most 5 % of an epoch per checkpoint (copy + wait)",
              "value": result["overhead"]["blocking_per_epoch"] + result["overhead"]["waiting_per_epoch"],
              "met": result["overhead"]["blocking_per_epoch"] + result["overhead"]["waiting_per_epoch"] <= 0.05}]
    for k in result["kill"]:
        goals.append({"goal": f"killed at epoch {k['killed_after_epoch']} of {k['epochs']}: at most every_epochs "
                              f"({k['every_epochs']}) epochs trained again, scores equal",
                      "value": k["epochs_trained_again"],
                      "met": k["epochs_trained_again"] <= k["every_epochs"] and k["scores_equal_uninterrupted"]})
    result["goals"] = goals
    write_json(args.out, "checkpoint", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
