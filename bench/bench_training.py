"""Training throughput of trials' stacked training (a benchmark, not a test).

Usage::

    .venv/bin/python bench/bench_training.py                 # full run (a few minutes on CPU)
    .venv/bin/python bench/bench_training.py --smoke         # tiny sizes, seconds (CI)
    .venv/bin/python bench/bench_training.py --threads 1 --out bench/results/training.json

For each data set (digits; synthetic 60000x784 with 10 classes) it measures the time per epoch
(training on the fold's training rows + evaluating its validation rows) of:

1. ``stacked``: ``trials.run_trial`` on all 5 folds as one stack, versus ``one_by_one``: the same
   5 folds run one after the other, each as a stack of one. Ratio: ``stack_speedup`` =
   one_by_one / stacked (goal >= 3x on CPU).
2. One member: ``trials.run_trial`` on fold 0 alone, versus ``handwritten``: a minimal loop over
   preloaded, pre-standardized tensors with ``nn.Sequential`` and ``torch.optim.SGD`` doing the same
   work (same widths, dropout, batch size, optimizer; ``randperm`` batches; validation pass), and
   versus ``dataloader``: the same loop fed by ``torch.utils.data.DataLoader(TensorDataset)``.
   Ratios ``trials_vs_handwritten`` (goal <= 1.1) and ``trials_vs_dataloader``.

Every variant runs ``--rounds`` times, interleaved, for ``--epochs`` epochs; an epoch's time is
the gap between two successive epoch reports (so setup and the first epoch are excluded), the
variant's time is the median over epochs and rounds. All ratios come from the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trials import CVSpec, DataSpec, ModelSpec, TrainingSpec, TrialSettings, load_dataset, run_trial  # noqa: E402
from trials._engine import fit_scaler  # noqa: E402

HIDDEN = (200, 200)
BATCH = 64
DROPOUT = 0.2
LR, MOMENTUM = 0.01, 0.9


def settings(epochs: int) -> TrialSettings:
    return TrialSettings(
        model=ModelSpec(hidden=HIDDEN, dropout=DROPOUT),
        training=TrainingSpec(
            optimizer="sgd", lr=LR, momentum=MOMENTUM, batch_size=BATCH, max_epochs=epochs,
            patience=epochs + 1, device="cpu",
        ),
    )


def epoch_gaps(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def time_trials(data, folds: list[int], epochs: int) -> list[float]:
    stamps: list[float] = []
    run_trial(data, {}, settings(epochs), seed=0, folds=folds, report=lambda r: stamps.append(time.perf_counter()) and False)
    return epoch_gaps(stamps)


def time_handwritten(data, epochs: int, loader: bool) -> list[float]:
    """A minimal preloaded-tensor loop (or the same through a DataLoader) on fold 0."""
    train, val = data.folds[0]
    mean, scale = fit_scaler(data.X, train)
    Xs = torch.from_numpy((data.X - mean) / scale)
    y = torch.from_numpy(data.y)
    Xtr, ytr, Xva, yva = Xs[train], y[train], Xs[val], y[val]
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = data.n_features
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(DROPOUT)]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, data.n_classes))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(0)
    dl = None
    if loader:
        dl = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(Xtr, ytr), batch_size=BATCH, shuffle=True, generator=gen
        )
    stamps = []
    for _ in range(epochs):
        model.train()
        if dl is not None:
            batches = iter(dl)
        else:
            perm = torch.randperm(len(ytr), generator=gen)
            batches = ((Xtr[idx], ytr[idx]) for idx in perm.split(BATCH))
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            total, correct = 0.0, 0
            for xb, yb in zip(Xva.split(4096), yva.split(4096)):
                out = model(xb)
                total += F.cross_entropy(out, yb, reduction="sum").item()
                correct += int((out.argmax(1) == yb).sum())
        stamps.append(time.perf_counter())
    return epoch_gaps(stamps)


def bench_dataset(name: str, data, epochs: int, rounds: int) -> dict:
    k = len(data.folds)
    samples: dict[str, list[float]] = {"stacked": [], "one_by_one": [], "trials_1": [], "handwritten": [], "dataloader": []}
    for r in range(rounds):
        samples["stacked"].append(statistics.median(time_trials(data, list(range(k)), epochs)))
        per_fold = [statistics.median(time_trials(data, [f], epochs)) for f in range(k)]
        samples["one_by_one"].append(sum(per_fold))
        samples["trials_1"].append(per_fold[0])
        samples["handwritten"].append(statistics.median(time_handwritten(data, epochs, loader=False)))
        samples["dataloader"].append(statistics.median(time_handwritten(data, epochs, loader=True)))
        print(f"  [{name}] round {r + 1}/{rounds}: " + ", ".join(f"{key}={v[-1] * 1e3:.1f}ms" for key, v in samples.items()), flush=True)
    t = {key: statistics.median(v) for key, v in samples.items()}
    n_train = len(data.folds[0][0])
    return {
        "rows": int(len(data.y) + len(data.y_test)),
        "features": data.n_features,
        "classes": data.n_classes,
        "folds": k,
        "train_rows_per_fold": n_train,
        "epochs_per_run": epochs,
        "rounds": rounds,
        "epoch_s": {key: round(v, 6) for key, v in t.items()},
        "samples_s": {key: [round(x, 6) for x in v] for key, v in samples.items()},
        "stack_speedup": round(t["one_by_one"] / t["stacked"], 3),
        "trials_vs_handwritten": round(t["trials_1"] / t["handwritten"], 3),
        "trials_vs_dataloader": round(t["trials_1"] / t["dataloader"], 3),
        "stacked_member_epochs_per_s": round(k / t["stacked"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, finishes in seconds")
    parser.add_argument("--out", default=None, help="JSON output (default bench/results/training[-smoke].json)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        cases = [
            ("digits", DataSpec(source="digits"), 3),
            ("synthetic_2000x784", DataSpec(source="synthetic", n_samples=2000, n_features=784, n_classes=10), 3),
        ]
        rounds = args.rounds or 1
    else:
        cases = [
            ("digits", DataSpec(source="digits"), 8),
            ("synthetic_60000x784", DataSpec(source="synthetic", n_samples=60000, n_features=784, n_classes=10), 3),
        ]
        rounds = args.rounds or 3
    out = Path(args.out or f"bench/results/training{'-smoke' if args.smoke else ''}.json")
    command = " ".join([".venv/bin/python", "bench/bench_training.py", *sys.argv[1:]])
    report = {
        "benchmark": "training throughput",
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
        "device": "cpu",
        "model": {"hidden": list(HIDDEN), "dropout": DROPOUT, "batch_size": BATCH, "optimizer": "sgd", "momentum": MOMENTUM},
        "results": {},
    }
    t0 = time.perf_counter()
    for name, spec, epochs in cases:
        data = load_dataset(spec, CVSpec(folds=5), seed=0)
        print(f"{name}: {len(data.y)} search rows x {data.n_features}, {epochs} epochs per run, {rounds} round(s)", flush=True)
        report["results"][name] = res = bench_dataset(name, data, epochs, rounds)
        e = res["epoch_s"]
        print(
            f"{name}: epoch  stacked(5)={e['stacked'] * 1e3:.1f}ms  one-by-one(5)={e['one_by_one'] * 1e3:.1f}ms  "
            f"-> stack speedup {res['stack_speedup']:.2f}x\n"
            f"{name}: 1 member trials={e['trials_1'] * 1e3:.1f}ms  handwritten={e['handwritten'] * 1e3:.1f}ms  "
            f"dataloader={e['dataloader'] * 1e3:.1f}ms  -> trials/handwritten {res['trials_vs_handwritten']:.2f}, "
            f"trials/dataloader {res['trials_vs_dataloader']:.2f}",
            flush=True,
        )
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
