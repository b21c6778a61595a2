"""What checkpoints cost, and what they save (issue 16, section 3).

``overhead``: one trial on digits (the default 64-200-200-10 MLP, 5 folds as one stack, SGD, every
epoch run: no early stop; 30 epochs, ``--epochs``), timed with and without ``checkpoint.every_epochs:
1`` (a save of the whole stack at every epoch boundary, to a directory on the local disk),
interleaved over rounds in the same process with one intra-op thread (as on a Ray worker). The
goal's ratio is in CPU time, which the load of a shared machine does not inflate: per epoch, the
CPU time of a save (capturing the state, and writing it) over a plain epoch's CPU time
(``cpu_overhead``); on the CPU both are in the training thread, so ``thread_cpu_overhead`` (that
thread's CPU per epoch, checkpointed over plain) is the same cost seen whole, with what the save
does to the training's caches. ``--background`` measures the GPU's way on the CPU instead: the
state copied, then written in a thread of its own (its CPU counted as if it had no core of its
own). Wall time is recorded too: ``t_checkpointed / t_plain - 1`` of the fastest run of each, and
the median of the paired runs. Goal: at most 5 %. The same on the issue's 60000 x 784 synthetic
set (10 classes, the same 200-200 MLP, 5 folds stacked; 3 epochs, 3 rounds):
``overhead_synthetic`` (``--cases synthetic``).

``kill``: a 30-epoch trial (same network) killed after epoch 20 (its process dies right after the
epoch's report, before the next save), then run again from its checkpoint, for ``every_epochs`` 1
and 5. Recorded: the epoch it went on from, the epochs trained again (``20 - resumed_from_epoch``),
the epochs trained after the resume, its wall time against a run from epoch 1, and that its fold
scores equal the uninterrupted run's. Goal: at most ``every_epochs`` epochs trained again.

``--store s3``: the same, with the checkpoints written to an S3 bucket (``s3://bench-ckpt/run/``) on
moto's S3 server, started as a process of its own on 127.0.0.1, so its CPU is not the bench's. A
write then goes through boto3, whose upload of a file over 8 MB runs in threads of its own: the
per-thread CPU ratio above misses those, so ``process_cpu_overhead`` (the whole bench process's CPU
time per epoch, checkpointed over plain) is recorded for both stores.

Usage::

    .venv/bin/python -m bench.bench_checkpoint --out bench/results
    .venv/bin/python -m bench.bench_checkpoint --smoke --out artifacts/bench-smoke
    .venv/bin/python -m bench.bench_checkpoint --store s3 --out bench/results
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def overhead(data: Any, *, epochs: int, rounds: int, where: str, background: bool = False) -> dict[str, Any]:
    from trials import CheckpointPlan, open_location
    from trials._checkpoint import Checkpointer

    settings = _settings(epochs)
    wall: dict[str, list[float]] = {"plain": [], "ckpt": []}
    cpu: dict[str, list[float]] = {"plain": [], "ckpt": []}
    proc_cpu: dict[str, list[float]] = {"plain": [], "ckpt": []}
    blocking, waiting, writing, copy_cpu, write_cpu, size = [], [], [], [], [], 0
    _fit(data, settings)  # warm-up: first-call costs out of the way
    open_location(where).probe()  # ... and the store's (an S3 client is made once per process)
    for r in range(rounds):
        for mode in (("plain", "ckpt") if r % 2 == 0 else ("ckpt", "plain")):
            saver = (Checkpointer(CheckpointPlan(where, f"bench-{r}", every_epochs=1), background=background)
                     if mode == "ckpt" else None)
            t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
            _fit(data, settings, saver)
            wall[mode].append((time.perf_counter() - t0) / epochs)
            cpu[mode].append((time.thread_time() - c0) / epochs)  # the training thread (one intra-op thread)
            proc_cpu[mode].append((time.process_time() - p0) / epochs)  # every thread: boto3's too
            if saver is not None:
                n = saver.saved
                blocking.append(saver.blocking_s / n)
                waiting.append(saver.waiting_s / n)
                writing.append(saver.writing_s / n)
                copy_cpu.append(saver.capture_cpu_s / n)
                write_cpu.append(saver.writing_cpu_s / n)
                size = saver.bytes
    epoch_cpu = min(cpu["plain"])
    saves = (epochs - 1) / epochs  # a save at every epoch boundary but the last
    out = {"background": background, "epochs": epochs, "rounds": rounds, "saves_per_run": epochs - 1,
           "checkpoint_bytes": size,
           "plain_epoch_s": stats(wall["plain"]), "checkpoint_epoch_s": stats(wall["ckpt"]),
           "plain_epoch_cpu_s": stats(cpu["plain"]), "checkpoint_epoch_cpu_s": stats(cpu["ckpt"]),
           # CPU time: what a save costs if it had no core of its own (the copy in the training thread plus the
           # whole background write), per epoch, against a plain epoch's CPU time; a busy machine does not
           # inflate CPU time as it inflates wall time
           # (the least of each over the rounds, as for the plain epoch: what the work itself costs)
           "cpu_overhead": (min(copy_cpu) + min(write_cpu)) * saves / epoch_cpu,
           # the training thread's own CPU time per epoch, checkpointed over plain (a write in the training thread:
           # everything a save costs it, with what the save does to its caches)
           "thread_cpu_overhead": min(cpu["ckpt"]) / epoch_cpu - 1.0,
           "copy_cpu_per_epoch": min(copy_cpu) / epoch_cpu,
           "write_cpu_per_epoch": min(write_cpu) / epoch_cpu,
           "copy_cpu_s": stats(copy_cpu), "write_cpu_s": stats(write_cpu),
           # the whole process's CPU time per epoch (every thread: the writer's, and boto3's upload threads)
           "process_cpu_overhead": min(proc_cpu["ckpt"]) / min(proc_cpu["plain"]) - 1.0,
           # wall time: the fastest run of each, and the median of the paired runs
           "wall_overhead": min(wall["ckpt"]) / min(wall["plain"]) - 1.0,
           "median_paired_wall_overhead": statistics.median(c / p - 1.0 for p, c in zip(wall["plain"], wall["ckpt"])),
           "blocking_per_epoch": statistics.median(blocking) / min(wall["plain"]),
           "waiting_per_epoch": statistics.median(waiting) / min(wall["plain"]),
           "writing_per_epoch": statistics.median(writing) / min(wall["plain"])}
    print(f"overhead ({'background' if background else 'training'} thread): {epoch_cpu * 1e3:.1f} ms CPU per plain "
          f"epoch; a save costs {out['copy_cpu_per_epoch'] * 100:.2f} % of it capturing the state + "
          f"{out['write_cpu_per_epoch'] * 100:.2f} % writing "
          f"({out['cpu_overhead'] * 100:.2f} % per epoch, {size / 1e6:.2f} MB each); wall: "
          f"{min(wall['plain']) * 1e3:.1f} vs {min(wall['ckpt']) * 1e3:.1f} ms/epoch "
          f"({out['wall_overhead'] * 100:+.2f} %, median of pairs {out['median_paired_wall_overhead'] * 100:+.2f} %); "
          f"training thread CPU {out['thread_cpu_overhead'] * 100:+.2f} %, process CPU "
          f"{out['process_cpu_overhead'] * 100:+.2f} %",
          flush=True)
    return out


def kill_and_resume(data: Any, *, epochs: int, kill_at: int, every: int, where: str) -> dict[str, Any]:
    from trials import CheckpointPlan, run_trial

    settings = _settings(epochs)
    t0 = time.perf_counter()
    plain = run_trial(data, {}, settings, seed=0)
    fresh_s = time.perf_counter() - t0
    plan = CheckpointPlan(where, f"kill-{every}", every_epochs=every)

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


@contextlib.contextmanager
def _store(kind: str) -> Iterator[str]:
    """Where the checkpoints go: a temporary directory, or a bucket on moto's S3 server (its own process)."""
    if kind == "directory":
        with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
            yield tmp
        return
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.environ.update(AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        deadline = time.monotonic() + 30
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket="bench-ckpt")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield "s3://bench-ckpt/run/"
    finally:
        server.terminate()
        server.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: 3 epochs, 1 round, a 6-epoch kill")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default 9; smoke 1)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of each digits overhead run (default 30, the kill case's length: what a save carries "
                        "grows with the epochs run, its curves and reports; smoke 3)")
    p.add_argument("--cases", default=None,
                   help="overhead cases, comma-separated: digits, synthetic (60000 x 784, 10 classes; 3 epochs, "
                        "3 rounds). Default both; smoke: digits")
    p.add_argument("--background", action="store_true",
                   help="write each save in a background thread from a copy of the state, as on a GPU (the CPU's "
                        "default: in the training thread, from the live state); results: "
                        "checkpoint[...]-background.json")
    p.add_argument("--store", choices=["directory", "s3"], default="directory",
                   help="where the checkpoints go: a local directory, or a bucket on moto's S3 server (needs "
                        "moto[server], a dev dependency); results: checkpoint[-s3][-synthetic].json")
    args = p.parse_args(argv)
    cases = (args.cases or ("digits" if args.smoke else "digits,synthetic")).split(",")
    unknown = sorted(set(cases) - {"digits", "synthetic"})
    if unknown:
        p.error(f"--cases: unknown case(s) {', '.join(unknown)}; choose from digits, synthetic")
    import torch

    from trials import CVSpec, DataSpec, load_dataset

    torch.set_num_threads(1)
    result = report_header("bench_checkpoint", args.smoke, argv)
    result["waited_for_quiet_s"] = round(wait_for_quiet(1.5, 0 if args.smoke else 120), 1)
    result["load_average_at_start"] = os.getloadavg()[0]
    data = load_dataset(DataSpec(source="digits"), CVSpec(folds=5), seed=0)
    epochs, rounds = (3, 1) if args.smoke else (30, args.rounds or 9)
    epochs = args.epochs or epochs
    total, kill_at = (6, 4) if args.smoke else (30, 20)
    goals = []
    result["store"] = args.store
    with _store(args.store) as where:
        if "digits" in cases:
            result["overhead"] = overhead(data, epochs=epochs, rounds=args.rounds or rounds, where=where,
                                          background=args.background)
            result["kill"] = [kill_and_resume(data, epochs=total, kill_at=kill_at, every=e, where=where)
                              for e in ((1, 2) if args.smoke else (1, 5))]
        if "synthetic" in cases:  # the 60000 x 784 case: the same network with a 784-wide input
            big = load_dataset(DataSpec(source="synthetic", n_samples=60000, n_features=784, n_classes=10),
                               CVSpec(folds=5), seed=0)
            result["overhead_synthetic"] = overhead(big, epochs=3, rounds=args.rounds or 3, where=where,
                                                    background=args.background)
    for key, what in (("overhead", "digits MLP"), ("overhead_synthetic", "60000 x 784 synthetic, MLP 200-200")):
        o = result.get(key)
        if o is None:
            continue
        goals += [{"goal": f"a checkpoint every epoch costs at most 5 % of epoch time ({what}; CPU time of "
                           "capturing the state and writing it, against a plain epoch's)", "value": o["cpu_overhead"],
                   "met": o["cpu_overhead"] <= 0.05},
                  {"goal": f"... and in wall time ({what}; fastest runs; a shared machine's load makes it noisy)",
                   "value": o["wall_overhead"], "met": o["wall_overhead"] <= 0.05}]
    for k in result.get("kill", []):
        goals.append({"goal": f"killed at epoch {k['killed_after_epoch']} of {k['epochs']}: at most every_epochs "
                              f"({k['every_epochs']}) epochs trained again, scores equal",
                      "value": k["epochs_trained_again"],
                      "met": k["epochs_trained_again"] <= k["every_epochs"] and k["scores_equal_uninterrupted"]})
    result["goals"] = goals
    name = ("checkpoint" + ("-s3" if args.store == "s3" else "") + ("-synthetic" if cases == ["synthetic"] else "")
            + ("-background" if args.background else ""))
    write_json(args.out, name, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
