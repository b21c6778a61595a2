"""Training throughput of trials' stacked training (a benchmark, not a test).

Usage::

    .venv/bin/python bench/bench_training.py              # full run (~3-5 min on CPU)
    .venv/bin/python bench/bench_training.py --smoke      # tiny sizes, seconds (CI)
    options: --out PATH (default bench/results/training[-smoke].json), --rounds N,
             --cases digits,digits_b32,digits_small,synthetic,digits_cnn, --threads N (default 1),
             --configs M (default 3), --device cpu|cuda

Cases: ``digits`` (1797 x 64, MLP 200-200), ``digits_b32`` (the same with batch 32, the issue's
prototype setting), ``digits_small`` (the same data, MLP 32: a model small enough that per-operation
overhead dominates), ``synthetic`` (make_classification 60000 x 784, 10 classes, MLP 200-200).
Always 5 folds, SGD(momentum 0.9), dropout 0.2, batch 64 unless the case says otherwise.
``digits_cnn``: the digits as images [1, 8, 8] (``data.shape``) and the example CNN
(``examples.digits_cnn:build``, 16 channels, dropout 0.2), which only variants 1 and 1b below run.

For each case it measures the time per epoch (training on the fold's training rows + evaluating
its validation rows) of:

1. ``stacked``: ``trials.run_trial`` on all 5 folds as one stack, versus ``one_by_one``: the same
   5 folds run one after the other, each as a stack of one (sum of the 5 epoch times). Ratio
   ``stack_speedup`` = one_by_one / stacked (goal >= 3x on CPU).
1b. ``digits_cnn`` only: ``stacked`` is the 5 folds as one ``torch.func.vmap`` stack, and
   ``sequential`` the same stack run one member at a time (the fallback for a module vmap cannot
   run: ``FunctionalStack(mode="sequential")``, forced here). Ratio ``vmap_speedup`` =
   sequential / stacked; ``stack_speedup`` as above.
2. One member: ``trials.run_trial`` on fold 0 alone (``trials_1``), versus ``handwritten``: a
   minimal loop over preloaded, pre-standardized tensors with ``nn.Sequential`` + ``nn.Dropout``
   and ``torch.optim.SGD`` doing the same work (``randperm`` batches, then a validation pass
   computing loss and accuracy), and versus ``dataloader``: the same loop fed by
   ``torch.utils.data.DataLoader(TensorDataset, shuffle=True)``. Ratios
   ``trials_vs_handwritten`` (goal <= 1.1) and ``trials_vs_dataloader``.

3. Stretch, k folds x m configurations: ``configs_stacked``, ``trials.run_trials`` on ``--configs``
   configurations (m, default 3; they differ in lr and dropout, as a random search proposes) x 5
   folds as one stack, versus the same configurations run one after the other as 5-fold stacks
   (m x ``stacked``; ratio ``config_stack_speedup``) and versus all m x 5 members one by one
   (m x ``one_by_one``; ratio ``all_members_speedup``).

Every variant runs ``--rounds`` times, interleaved; an epoch's time is the gap between two
successive epoch reports (setup and the first epoch are excluded); a variant's time is the median
over all its epochs. Two clocks are recorded: wall time and process CPU time. With one thread
(the default; more threads on a busy machine make OpenMP wait for descheduled threads, and the
CPU clock then counts their spinning) the CPU time is the work itself and ignores the time the
process spent descheduled, so on a shared machine it is the stable one; the headline ratios use
it (``clock`` in the JSON says which), and the wall-clock ratios are recorded beside them. All
ratios come from the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trials._engine
from trials import (
    CVSpec,
    DataSpec,
    ModelSpec,
    TrainingSpec,
    TrialSettings,
    load_dataset,
    run_trial,
    run_trials,
)
from trials._engine import fit_scaler

BATCH = 64
DROPOUT = 0.2
LR, MOMENTUM = 0.01, 0.9
FOLDS = 5
VARIANTS = ("stacked", "one_by_one", "trials_1", "handwritten", "dataloader", "configs_stacked")
CONFIGS = 3  # --configs: configurations stacked together in variant configs_stacked
DEVICE = torch.device("cpu")  # --device


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def gaps(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps)]


def settings(hidden: tuple[int, ...], epochs: int, batch: int = BATCH) -> TrialSettings:
    return TrialSettings(
        model=ModelSpec(hidden=hidden, dropout=DROPOUT),
        training=TrainingSpec(
            optimizer="sgd",
            lr=LR,
            momentum=MOMENTUM,
            batch_size=batch,
            max_epochs=epochs,
            patience=epochs + 1,  # never stop early: every run does the same number of epochs
            device=DEVICE.type,
        ),
    )


def time_trials(data, hidden, folds: list[int], epochs: int, batch: int,
                s: TrialSettings | None = None, params: dict | None = None) -> list[tuple[float, float]]:
    stamps: list[tuple[float, float]] = []

    def report(_r) -> bool:
        stamps.append(clocks())
        return False

    s = s if s is not None else settings(hidden, epochs, batch)
    run_trial(data, params or {}, s, seed=0, folds=folds, report=report)
    return gaps(stamps)


CNN_FACTORY = "examples.digits_cnn:build"
CNN_PARAMS = {"channels": 16, "dropout": DROPOUT}
CNN_VARIANTS = ("stacked", "sequential", "one_by_one")


def cnn_settings(epochs: int, batch: int) -> TrialSettings:
    base = settings((), epochs, batch)
    return base.model_copy(update={"model": ModelSpec(factory=CNN_FACTORY)})


def time_sequential(data, folds: list[int], epochs: int, batch: int) -> list[tuple[float, float]]:
    """The CNN's stack run one member at a time (the vmap fallback), forced by patching the engine."""
    build = trials._engine.build_factory_stack

    def sequential(*args, **kwargs):
        stack = build(*args, **kwargs)
        stack.mode = "sequential"
        return stack

    trials._engine.build_factory_stack = sequential
    try:
        return time_trials(data, (), folds, epochs, batch, cnn_settings(epochs, batch), CNN_PARAMS)
    finally:
        trials._engine.build_factory_stack = build


def bench_cnn_case(name: str, data, epochs: int, rounds: int, batch: int) -> dict:
    k = len(data.folds)
    s = cnn_settings(epochs, batch)
    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in CNN_VARIANTS}
    for r in range(rounds):
        samples["stacked"] += time_trials(data, (), list(range(k)), epochs, batch, s, CNN_PARAMS)
        samples["sequential"] += time_sequential(data, list(range(k)), epochs, batch)
        per_fold = [time_trials(data, (), [f], epochs, batch, s, CNN_PARAMS) for f in range(k)]
        samples["one_by_one"] += [tuple(map(sum, zip(*epoch))) for epoch in zip(*per_fold)]
        last = ", ".join(f"{v}={statistics.median(x[1] for x in samples[v]) * 1e3:.1f}" for v in CNN_VARIANTS)
        print(f"  [{name}] after round {r + 1}/{rounds}, median CPU ms/epoch: {last}", flush=True)

    def ratios(t: dict[str, float]) -> dict[str, float]:
        return {"vmap_speedup": round(t["sequential"] / t["stacked"], 3),
                "stack_speedup": round(t["one_by_one"] / t["stacked"], 3)}

    return {
        "rows": int(len(data.y) + len(data.y_test)),
        "input_shape": list(data.input_shape),
        "classes": data.n_classes,
        "model": f"{CNN_FACTORY} {CNN_PARAMS}",
        "batch_size": batch,
        "folds": k,
        "train_rows_per_fold": len(data.folds[0][0]),
        "epochs_per_run": epochs,
        "rounds": rounds,
        **timings(samples, ratios),
    }


def timings(samples: dict[str, list[tuple[float, float]]],
            ratios: Callable[[dict[str, float]], dict[str, float]]) -> dict[str, Any]:
    """Each variant's median epoch time (wall, CPU) and the case's ratios: of CPU time on the CPU,
    of wall clock on a GPU (CPU time says nothing about GPU work)."""
    wall = {v: statistics.median(x[0] for x in xs) for v, xs in samples.items()}
    cpu = {v: statistics.median(x[1] for x in xs) for v, xs in samples.items()}
    on_gpu = DEVICE.type == "cuda"
    return {
        "epochs_timed_per_variant": len(samples["stacked"]),
        "clock": "wall" if on_gpu else "cpu",
        "epoch_s_cpu": {v: round(t, 6) for v, t in cpu.items()},
        "epoch_s_wall": {v: round(t, 6) for v, t in wall.items()},
        **ratios(wall if on_gpu else cpu),
        "wall_ratios": ratios(wall),
    }


def config_params(m: int) -> list[dict[str, float]]:
    """m configurations that may share a stack: learning rates and dropout rates around the defaults."""
    return [{"lr": LR * 2.0 ** (i - m // 2), "dropout": 0.1 + 0.2 * i / max(m - 1, 1)} for i in range(m)]


def time_configs(data, hidden, m: int, epochs: int, batch: int) -> list[tuple[float, float]]:
    stamps: list[tuple[float, float]] = []

    def report(i: int, _r) -> bool:
        if i == 0:  # one stamp per epoch (the report comes once per configuration)
            stamps.append(clocks())
        return False

    run_trials(data, config_params(m), settings(hidden, epochs, batch), seeds=list(range(m)), report=report)
    return gaps(stamps)


def time_handwritten(data, hidden, epochs: int, loader: bool, batch: int) -> list[tuple[float, float]]:
    """A minimal preloaded-tensor loop (or the same through a DataLoader) on fold 0."""
    train, val = data.folds[0]
    mean, scale = fit_scaler(data.X, train)
    Xs = torch.from_numpy((data.X - mean) / scale)
    y = torch.from_numpy(data.y)
    Xtr, ytr, Xva, yva = (t.to(DEVICE) for t in (Xs[train], y[train], Xs[val], y[val]))
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = data.n_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(DROPOUT)]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, data.n_classes)).to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(0)
    dl = None
    if loader:
        dl = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(Xtr, ytr), batch_size=batch, shuffle=True, generator=gen
        )
    stamps = []
    for _ in range(epochs):
        model.train()
        if dl is not None:
            batches = iter(dl)
        else:
            perm = torch.randperm(len(ytr), generator=gen).to(DEVICE)
            batches = ((Xtr[idx], ytr[idx]) for idx in perm.split(batch))
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
        stamps.append(clocks())
    return gaps(stamps)


def bench_case(
    name: str, data, hidden: tuple[int, ...], epochs: int, rounds: int, batch: int, m: int = CONFIGS
) -> dict:
    k = len(data.folds)
    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        samples["stacked"] += time_trials(data, hidden, list(range(k)), epochs, batch)
        per_fold = [time_trials(data, hidden, [f], epochs, batch) for f in range(k)]
        samples["one_by_one"] += [tuple(map(sum, zip(*epoch))) for epoch in zip(*per_fold)]
        samples["trials_1"] += per_fold[0]
        samples["handwritten"] += time_handwritten(data, hidden, epochs, loader=False, batch=batch)
        samples["dataloader"] += time_handwritten(data, hidden, epochs, loader=True, batch=batch)
        samples["configs_stacked"] += time_configs(data, hidden, m, epochs, batch)
        last = ", ".join(f"{v}={statistics.median(x[1] for x in samples[v]) * 1e3:.1f}" for v in VARIANTS)
        print(f"  [{name}] after round {r + 1}/{rounds}, median CPU ms/epoch: {last}", flush=True)

    def ratios(t: dict[str, float]) -> dict[str, float]:
        return {
            "stack_speedup": round(t["one_by_one"] / t["stacked"], 3),
            "trials_vs_handwritten": round(t["trials_1"] / t["handwritten"], 3),
            "trials_vs_dataloader": round(t["trials_1"] / t["dataloader"], 3),
            "config_stack_speedup": round(m * t["stacked"] / t["configs_stacked"], 3),
            "all_members_speedup": round(m * t["one_by_one"] / t["configs_stacked"], 3),
        }

    return {
        "rows": int(len(data.y) + len(data.y_test)),
        "features": data.n_features,
        "classes": data.n_classes,
        "hidden": list(hidden),
        "batch_size": batch,
        "folds": k,
        "configs": m,
        "train_rows_per_fold": len(data.folds[0][0]),
        "epochs_per_run": epochs,
        "rounds": rounds,
        **timings(samples, ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, finishes in seconds")
    parser.add_argument("--out", default=None, help="JSON output (default bench/results/training[-smoke].json)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as on a Ray worker)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default 3; smoke 1)")
    parser.add_argument("--cases", default="digits,digits_b32,digits_small,synthetic,digits_cnn",
                        help="comma list of cases")
    parser.add_argument("--configs", type=int, default=CONFIGS, help="configurations in variant configs_stacked")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on cuda the headline clock is wall time)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    big = (2000, 3) if args.smoke else (60000, 3)
    small_epochs = 3 if args.smoke else 6
    cases = [
        ("digits", DataSpec(source="digits"), (200, 200), small_epochs, BATCH),
        ("digits_b32", DataSpec(source="digits"), (200, 200), small_epochs, 32),
        ("digits_small", DataSpec(source="digits"), (32,), small_epochs, BATCH),
        (
            "synthetic",
            DataSpec(source="synthetic", n_samples=big[0], n_features=784, n_classes=10),
            (200, 200),
            big[1],
            BATCH,
        ),
        ("digits_cnn", DataSpec(source="digits", shape=(1, 8, 8)), (), small_epochs, BATCH),
    ]
    wanted = {c.strip() for c in args.cases.split(",")}
    cases = [c for c in cases if c[0] in wanted]
    rounds = args.rounds or (1 if args.smoke else 3)
    out = Path(args.out or f"bench/results/training{'-smoke' if args.smoke else ''}.json")
    report = {
        "benchmark": "training throughput",
        "command": " ".join([".venv/bin/python", "bench/bench_training.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
        "device": str(DEVICE),
        "training": {"batch_size": "per case (default 64)", "optimizer": "sgd", "momentum": MOMENTUM,
                     "dropout": DROPOUT, "folds": FOLDS},
        "results": {},
    }
    t0 = time.perf_counter()
    for name, spec, hidden, epochs, batch in cases:
        data = load_dataset(spec, CVSpec(folds=FOLDS), seed=0)
        if name == "digits_cnn":
            print(f"{name}: {len(data.y)} search rows of {list(data.input_shape)}, {CNN_FACTORY}, batch {batch}, "
                  f"{epochs} epochs per run, {rounds} round(s)", flush=True)
            report["results"][name] = res = bench_cnn_case(name, data, epochs, rounds, batch)
            e = res[f"epoch_s_{res['clock']}"]
            print(f"{name}: {res['clock']} s/epoch  vmap(5)={e['stacked']:.4f}  one member at a time(5)="
                  f"{e['sequential']:.4f}  one-by-one(5)={e['one_by_one']:.4f}  -> vmap speedup "
                  f"{res['vmap_speedup']:.2f}x (wall {res['wall_ratios']['vmap_speedup']:.2f}x), stack speedup "
                  f"{res['stack_speedup']:.2f}x", flush=True)
            continue
        print(
            f"{name}: {len(data.y)} search rows x {data.n_features}, hidden {hidden}, batch {batch}, "
            f"{epochs} epochs per run, {rounds} round(s)",
            flush=True,
        )
        report["results"][name] = res = bench_case(name, data, hidden, epochs, rounds, batch, args.configs)
        e = res[f"epoch_s_{res['clock']}"]
        print(
            f"{name}: {res['clock']} s/epoch  stacked(5)={e['stacked']:.4f}  one-by-one(5)={e['one_by_one']:.4f}  "
            f"-> stack speedup {res['stack_speedup']:.2f}x (wall {res['wall_ratios']['stack_speedup']:.2f}x)\n"
            f"{name}: 1 member  trials={e['trials_1']:.4f}  handwritten={e['handwritten']:.4f}  "
            f"dataloader={e['dataloader']:.4f}  -> trials/handwritten {res['trials_vs_handwritten']:.2f} "
            f"(wall {res['wall_ratios']['trials_vs_handwritten']:.2f}), trials/dataloader "
            f"{res['trials_vs_dataloader']:.2f} (wall {res['wall_ratios']['trials_vs_dataloader']:.2f})\n"
            f"{name}: {args.configs} configs x 5 folds in one stack={e['configs_stacked']:.4f}  -> vs "
            f"{args.configs} 5-fold stacks {res['config_stack_speedup']:.2f}x, vs {args.configs * 5} members one "
            f"by one {res['all_members_speedup']:.2f}x (wall {res['wall_ratios']['all_members_speedup']:.2f}x)",
            flush=True,
        )
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
