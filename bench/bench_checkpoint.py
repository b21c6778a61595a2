"""What checkpoints cost, and what they save (issue 16, section 3).

``overhead``: one trial on digits (the default 64-200-200-10 MLP, 5 folds as one stack, SGD, every
epoch run: no early stop), timed with and without ``checkpoint.every_epochs: 1`` (a save of the
whole stack at every epoch boundary, to a directory on the local disk), interleaved over rounds in
the same process with one intra-op thread (as on a Ray worker). The ratio is per epoch:
``(t_checkpointed - t_plain) / t_plain`` of the median round. Goal: at most 5 %.

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
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import report_header, stats, write_json


class _Killed(Exception):
    """Stands for the worker process dying after an epoch's report."""


def _settings(epochs: int) -> Any:
    from trials import ModelSpec, TrainingSpec, TrialSettings

    return TrialSettings(model=ModelSpec(hidden=(200, 200)),
                         training=TrainingSpec(optimizer="sgd", lr=0.05, batch_size=64, max_epochs=epochs,
                                               patience=10_000))


def overhead(data: Any, *, epochs: int, rounds: int, tmp: Path) -> dict[str, Any]:
    from trials import CheckpointPlan, run_trial
    from trials._checkpoint import checkpoint_files

    settings = _settings(epochs)
    plain_s, ckpt_s, size = [], [], 0
    run_trial(data, {}, settings, seed=0)  # warm-up: first-call costs out of the way
    for r in range(rounds):
        for mode in (("plain", "ckpt") if r % 2 == 0 else ("ckpt", "plain")):
            plan = CheckpointPlan(str(tmp), f"bench-{r}", every_epochs=1) if mode == "ckpt" else None
            t0 = time.perf_counter()
            res = run_trial(data, {}, settings, seed=0, checkpoint=plan)
            dt = (time.perf_counter() - t0) / res.epochs_run
            (ckpt_s if plan else plain_s).append(dt)
            if plan is not None:
                files = checkpoint_files(str(tmp), plan.artifact_id)
                size = (tmp / files[0]).stat().st_size if files else 0
    ratios = [c / p - 1.0 for p, c in zip(plain_s, ckpt_s)]
    out = {"epochs": epochs, "rounds": rounds, "plain_epoch_s": stats(plain_s), "checkpoint_epoch_s": stats(ckpt_s),
           "ratios": ratios, "overhead": statistics.median(ratios), "checkpoint_bytes": size}
    print(f"overhead: {statistics.median(plain_s) * 1e3:.1f} ms/epoch plain, "
          f"{statistics.median(ckpt_s) * 1e3:.1f} ms/epoch with a checkpoint every epoch "
          f"({out['overhead'] * 100:+.2f} %, {size / 1e6:.2f} MB each)", flush=True)
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
    p.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default 5; smoke 1)")
    args = p.parse_args(argv)
    import torch

    from trials import CVSpec, DataSpec, load_dataset

    torch.set_num_threads(1)
    result = report_header("bench_checkpoint", args.smoke, argv)
    data = load_dataset(DataSpec(source="digits"), CVSpec(folds=5), seed=0)
    epochs, rounds = (3, 1) if args.smoke else (10, args.rounds or 5)
    total, kill_at = (6, 4) if args.smoke else (30, 20)
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        result["overhead"] = overhead(data, epochs=epochs, rounds=args.rounds or rounds, tmp=Path(tmp))
        result["kill"] = [kill_and_resume(data, epochs=total, kill_at=kill_at, every=e, tmp=Path(tmp))
                          for e in ((1, 2) if args.smoke else (1, 5))]
    goals = [{"goal": "a checkpoint every epoch costs at most 5 % of epoch time (digits MLP)",
              "value": result["overhead"]["overhead"], "met": result["overhead"]["overhead"] <= 0.05}]
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
