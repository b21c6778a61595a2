"""End to end: the digits search through hpsearch vs a plain Optuna script (issue 8's goal).

The same search, measured side by side in one run, on the same 2-core machine:

- **hpsearch**: :func:`search.run_study` as ``hpsearch run`` does it: TPE, 20 trials, digits, 3-fold CV
  with the folds stacked into one network, 2 concurrent trials of 1 CPU each on a local Ray that
  the run starts and stops itself (its start-up is inside the measured time), SQLite storage.
- **plain Optuna**: what a typical user writes: ``optuna.create_study(...).optimize(objective)``, one
  trial at a time, and per trial a straightforward torch loop over the 3 folds one after another
  (``TensorDataset`` + ``DataLoader(shuffle=True)``, ``nn.Sequential`` MLP, ``torch.optim.SGD``).
  Run with 1 intra-op thread for every seed and, for the first seed, also with torch's default
  threads (what the user gets; on a busy 2-core machine it can be much slower). The speedup is
  against the faster of the two.

Both use the same data split and folds (``trials.load_dataset`` with the study seed), the same model
(MLP [128, 128], ReLU, dropout), SGD with momentum 0.9, the same space and TPE settings, and the
same early stopping: at most 20 epochs, stop after 3 epochs without a lower validation loss, score
= validation accuracy at the best epoch, trial value = mean over folds. Python imports are outside
both timings; the plain script's data preparation is outside its timing, hpsearch's (``run_study``
loads the data itself) inside.

Three measurements, in this order:

1. **cold** (the goal's measurement), per seed: hpsearch starting its own Ray, then the plain script.
2. **long** (first seed, ``--long-trials``, default 100): the same comparison with more trials, cold;
   hpsearch's start-up is a fixed cost, so this shows how the ratio grows with the study.
3. **warm**, per seed: hpsearch with Ray already running in this process and its workers alive
   with torch imported (a notebook's second study; ``run_study`` uses a connected Ray as is),
   against the plain runs of step 1.

Goal: hpsearch >= 3x faster than the plain script (its faster variant), with an equal or better
best CV accuracy. Both use TPE with the study seed, so their first 10 trials (TPE's random start-up)
have the same params; ``paired_training`` compares the summed trial durations of those trials, the
training speed on identical configurations. ``startup_s`` (call -> first trial runs on a worker) is
split into ``open_s`` (storage, Ray start, data, backend open) and ``first_dispatch_s``.

Usage::

    .venv/bin/python -m bench.bench_e2e --out bench/results          # 20 trials, 20 epochs, seeds 0-4
    .venv/bin/python -m bench.bench_e2e --smoke --out artifacts/bench-smoke   # 2 trials, 2 epochs
    .venv/bin/python -m bench.bench_e2e --stack-trials 2 --out /tmp/e2e-stack2  # 2 trials per task
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    DEFAULT_SPACE,
    TPE_KWARGS,
    ray_init,
    ray_shutdown,
    report_header,
    spec_dict,
    trials_of,
    write_json,
)

GOAL_SPEEDUP = 3.0
HIDDEN = (128, 128)
MOMENTUM = 0.9


# ------------------------------------------------------------------------------ plain Optuna script


def train_fold(X: Any, y: Any, train: Any, val: Any, lr: float, dropout: float, batch_size: int,
               max_epochs: int, patience: int, n_classes: int, seed: int) -> float:
    """One fold the way a typical user writes it; returns validation accuracy at the best epoch."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std[std < 1e-12] = 1.0
    Xtr = torch.tensor((X[train] - mean) / std, dtype=torch.float32)
    Xva = torch.tensor((X[val] - mean) / std, dtype=torch.float32)
    ytr, yva = torch.tensor(y[train]), torch.tensor(y[val])
    layers: list[nn.Module] = []
    width = X.shape[1]
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, n_classes))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(Xtr, ytr), batch_size=batch_size, shuffle=True)
    best_loss, best_acc, best_state, wait = float("inf"), 0.0, None, 0
    for _ in range(max_epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = model(Xva)
            val_loss = loss_fn(out, yva).item()
            val_acc = (out.argmax(1) == yva).float().mean().item()
        if val_loss < best_loss:
            best_loss, best_acc, wait = val_loss, val_acc, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
            if wait >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)  # restore the best epoch, as a careful user does
    return best_acc


def run_plain(seed: int, n_trials: int, max_epochs: int, patience: int, threads: int | None) -> dict[str, Any]:
    import numpy as np
    import optuna
    import torch

    from trials import CVSpec, DataSpec, load_dataset

    data = load_dataset(DataSpec(source="digits"), CVSpec(folds=3), seed)
    X, y = data.X.astype(np.float64), data.y
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    lr, bs = DEFAULT_SPACE["lr"], DEFAULT_SPACE["batch_size"]["choices"]

    def objective(trial: optuna.Trial) -> float:
        p_lr = trial.suggest_float("lr", lr["low"], lr["high"], log=True)
        p_do = trial.suggest_float("dropout", 0.0, 0.5)
        p_bs = trial.suggest_categorical("batch_size", bs)
        scores = [train_fold(X, y, tr, va, p_lr, p_do, p_bs, max_epochs, patience, data.n_classes,
                             seed * 1000 + trial.number * 10 + k)
                  for k, (tr, va) in enumerate(data.folds)]
        return float(np.mean(scores))

    try:
        used = torch.get_num_threads()
        t0 = time.perf_counter()
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=seed, **TPE_KWARGS))
        study.optimize(objective, n_trials=n_trials, n_jobs=1)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    return {"wall_s": wall, "best": study.best_value, "best_params": study.best_params, "threads": used,
            "trials": [{"params": t.params, "value": t.value, "duration_s": t.duration.total_seconds()}
                       for t in study.trials]}


# ----------------------------------------------------------------------------------------- hpsearch


def run_hpsearch(tmp: Path, seed: int, n_trials: int, max_epochs: int, patience: int,
                 tag: str = "", stack_trials: int = 1) -> dict[str, Any]:
    from search import Callbacks, run_study

    class Clock(Callbacks):
        started = 0.0

        def on_start(self, study: Any, done: int, budget: int, where: str) -> None:
            self.started = time.time()

    name = f"e2e{tag}-{seed}"
    url = f"sqlite:///{tmp / (name + '.db')}"
    spec = spec_dict(name, strategy="tpe", n_trials=n_trials, seed=seed, max_epochs=max_epochs,
                     patience=patience, max_concurrent=2)
    spec["resources"]["stack_trials"] = stack_trials
    clock = Clock()
    t0 = time.time()
    res = run_study(spec, storage=url, refit=False, callbacks=clock)  # default backend: Ray from spec.resources
    wall = time.time() - t0
    trials = trials_of(url, name)
    first = min(t.user_attrs["worker_start"] for t in trials)
    assert res.best is not None and res.done == n_trials
    return {"wall_s": wall, "startup_s": first - t0, "wall_after_startup_s": wall - (first - t0),
            # call -> orchestrator starts (storage, data, Ray start, backend open)
            "open_s": clock.started - t0,
            # orchestrator starts -> first trial runs on a worker (task dispatch, worker imports)
            "first_dispatch_s": first - clock.started,
            "best": res.best.value, "best_params": res.best.params,
            "trials": [{"params": t.params, "value": t.value, "duration_s": t.user_attrs["duration_s"],
                        "epochs": t.user_attrs["epochs"]} for t in trials]}


def _warm_ray(tmp: Path, patience: int) -> bool:
    """Start Ray in this process (unless running) and run a throwaway 2-trial study on it, so that
    its workers have imported torch; True if this call started Ray."""
    started = ray_init(num_cpus=2) is not None
    run_hpsearch(tmp, 99, 2, 1, patience, tag="-warmup")
    return started


def paired_training(hp: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any] | None:
    """Trials both runs trained with the same params (TPE's random start-up, same seed): summed
    durations, so the training speed is compared on identical configurations."""
    same = [(a, b) for a, b in zip(hp["trials"], plain["trials"]) if a["params"] == b["params"]]
    if not same:
        return None
    hp_s = sum(a["duration_s"] for a, _ in same)
    plain_s = sum(b["duration_s"] for _, b in same)
    return {"n_same_params": len(same), "hpsearch_trial_s_sum": hp_s, "plain_trial_s_sum": plain_s,
            "per_trial_speedup": plain_s / hp_s if hp_s > 0 else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="2 trials, 2 epochs, seed 0")
    p.add_argument("--out", type=Path, help="write e2e.json into this directory")
    p.add_argument("--n-trials", type=int, help="default 20; smoke 2")
    p.add_argument("--max-epochs", type=int, help="default 20; smoke 2")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", help="study seeds, one paired comparison each (default 0-4)")
    p.add_argument("--stack-trials", type=int, default=1,
                   help="hpsearch's resources.stack_trials (trials stacked per task; default 1)")
    p.add_argument("--long-trials", type=int, default=100,
                   help="also run a search of this many trials (first seed, cold Ray); 0 skips it (smoke: skipped)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", module="optuna")
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = args.n_trials or (2 if args.smoke else 20)
    epochs = args.max_epochs or (2 if args.smoke else 20)
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2, 3, 4])
    report = report_header("bench_e2e", args.smoke, argv)
    report.update(n_trials=n, max_epochs=epochs, patience=args.patience, folds=3, hidden=list(HIDDEN),
                  stack_trials=args.stack_trials,
                  concurrency=2, torch_default_threads=torch.get_num_threads(), seeds=seeds)
    variants = {"plain_default_threads": None, "plain_1_thread": 1}
    rows = []
    long_n = 0 if args.smoke else args.long_trials
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        # 1. cold: every hpsearch run starts its own Ray (what `hpsearch run` does)
        for seed in seeds:
            row: dict[str, Any] = {"seed": seed}
            row["hpsearch"] = run_hpsearch(Path(tmp), seed, n, epochs, args.patience, stack_trials=args.stack_trials)
            print(f"  seed {seed} hpsearch {row['hpsearch']['wall_s']:7.1f}s  best {row['hpsearch']['best']:.4f}"
                  f"  (start-up {row['hpsearch']['startup_s']:.1f}s)", flush=True)
            for v, threads in variants.items():
                if threads is None and seed != seeds[0]:
                    continue  # torch's default threads: first seed only (slow on a busy machine)
                row[v] = run_plain(seed, n, epochs, args.patience, threads)
                print(f"  seed {seed} {v:<22} {row[v]['wall_s']:7.1f}s  best {row[v]['best']:.4f}"
                      f"  ({row[v]['threads']} threads)", flush=True)
            fastest = min((v for v in variants if v in row), key=lambda v: row[v]["wall_s"])
            row["baseline"] = fastest
            row["speedup"] = row[fastest]["wall_s"] / row["hpsearch"]["wall_s"]
            row["speedup_after_startup"] = row[fastest]["wall_s"] / row["hpsearch"]["wall_after_startup_s"]
            if "plain_default_threads" in row:
                row["speedup_vs_default_threads"] = row["plain_default_threads"]["wall_s"] / row["hpsearch"]["wall_s"]
            row["best_diff"] = row["hpsearch"]["best"] - row[fastest]["best"]
            row["paired_training"] = paired_training(row["hpsearch"], row[fastest])
            rows.append(row)
        # 2. a longer search (seed 0): start-up is a fixed cost, so the ratio grows with the study
        if long_n:
            seed = seeds[0]
            hp = run_hpsearch(Path(tmp), seed, long_n, epochs, args.patience, tag="-long",
                              stack_trials=args.stack_trials)
            plain = run_plain(seed, long_n, epochs, args.patience, 1)
            report["long"] = {"n_trials": long_n, "seed": seed, "hpsearch": hp, "plain_1_thread": plain,
                              "speedup": plain["wall_s"] / hp["wall_s"],
                              "speedup_after_startup": plain["wall_s"] / hp["wall_after_startup_s"],
                              "best_diff": hp["best"] - plain["best"]}
            print(f"  {long_n} trials, seed {seed}: hpsearch {hp['wall_s']:.1f}s (start-up {hp['startup_s']:.1f}s), "
                  f"plain {plain['wall_s']:.1f}s -> {report['long']['speedup']:.2f}x", flush=True)
        # 3. warm: Ray already running in this process, its workers alive with torch imported (a
        #    notebook's second study); the plain runs of step 1 are the baseline
        started = _warm_ray(Path(tmp), args.patience)
        try:
            for row in rows:
                hp = run_hpsearch(Path(tmp), row["seed"], n, epochs, args.patience, tag="-warm",
                                  stack_trials=args.stack_trials)
                row["hpsearch_warm"] = hp
                row["speedup_warm"] = row[row["baseline"]]["wall_s"] / hp["wall_s"]
                print(f"  seed {row['seed']} hpsearch, Ray warm {hp['wall_s']:7.1f}s  best {hp['best']:.4f}  "
                      f"(start-up {hp['startup_s']:.1f}s) -> {row['speedup_warm']:.2f}x", flush=True)
        finally:
            if started:  # not the smoke runner's shared Ray
                ray_shutdown()
    report["runs"] = rows
    speedup = statistics.median(r["speedup"] for r in rows)
    report["summary"] = {
        "speedup_median": speedup,
        "speedup_min": min(r["speedup"] for r in rows),
        "speedup_after_startup_median": statistics.median(r["speedup_after_startup"] for r in rows),
        "speedup_warm_median": statistics.median(r["speedup_warm"] for r in rows),
        "startup_s_median": statistics.median(r["hpsearch"]["startup_s"] for r in rows),
        "startup_warm_s_median": statistics.median(r["hpsearch_warm"]["startup_s"] for r in rows),
        "speedup_vs_default_threads": [r["speedup_vs_default_threads"] for r in rows
                                       if "speedup_vs_default_threads" in r],
        "hpsearch_best_mean": statistics.fmean(r["hpsearch"]["best"] for r in rows),
        "baseline_best_mean": statistics.fmean(r[r["baseline"]]["best"] for r in rows),
        "best_diff_per_seed": [r["best_diff"] for r in rows],
        "paired_per_trial_speedup": [r["paired_training"]["per_trial_speedup"] for r in rows
                                     if r["paired_training"]],
    }
    acc_ok = report["summary"]["hpsearch_best_mean"] >= report["summary"]["baseline_best_mean"]
    report["goals"] = [
        {"goal": f"hpsearch >= {GOAL_SPEEDUP:g}x faster than the plain Optuna script (its faster variant)",
         "value": speedup, "met": speedup >= GOAL_SPEEDUP},
        {"goal": "hpsearch's best CV accuracy (mean over seeds) >= the plain script's",
         "value": report["summary"]["best_diff_per_seed"] and statistics.fmean(report["summary"]["best_diff_per_seed"]),
         "met": acc_ok},
    ]
    for g in report["goals"]:
        print(f"goal: {g['goal']}: {g['value']:.3f} -> {'met' if g['met'] else 'MISSED'}")
    write_json(args.out, "e2e", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
