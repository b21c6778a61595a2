"""Search quality: grid vs random vs TPE on digits (issue 7, benchmark 4).

Each run is a fresh hpsearch study (:func:`search.run_study`, :class:`search.RayBackend` with 2
concurrent trials of 1 CPU, fresh SQLite file, real training with the default worker): digits,
3-fold CV (stacked folds), MLP ``[128, 128]``, SGD with momentum, ``max_epochs`` 20 with early
stopping on ``val_loss`` (patience 3), no pruning, no refit. The study seed fixes the test split, the
folds, the grid order and the trial seeds, so for one seed the three strategies see the same folds.

- ``random`` and ``tpe`` search the default space: ``lr`` log-uniform in [1e-4, 0.3], ``dropout``
  uniform in [0, 0.5], ``batch_size`` in {32, 64, 128, 256}; TPE is hpsearch's (multivariate,
  constant liar, 10 start-up trials).
- ``grid``: lr in {1e-4, 7e-4, 5e-3, 4e-2, 0.3} (log-spaced over the same range) x dropout in
  {0, 0.25, 0.5} x batch_size in {32, 128} = 30 points, in the order the grid sampler shuffles them
  by the study seed.

For every run the best CV accuracy so far is recorded against the trial number; the summary gives
its mean, std, min and max over seeds, and the plot (``quality.png``) the mean with a min-max band.

Usage::

    .venv/bin/python -m bench.bench_quality --out bench/results       # 30 trials x 5 seeds x 3 strategies
    .venv/bin/python -m bench.bench_quality --smoke --out artifacts/bench-smoke  # 4 trials, 2 epochs, 4-point grid
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DEFAULT_SPACE, ray_init, ray_shutdown, report_header, spec_dict, stats, trials_of, write_json

STRATEGIES = ("grid", "random", "tpe")
GRID_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "values": [1e-4, 7e-4, 5e-3, 4e-2, 0.3]},
    "dropout": {"type": "float", "values": [0.0, 0.25, 0.5]},
    "batch_size": {"type": "categorical", "choices": [32, 128]},
}
# --smoke runs 4 trials, and a grid runs each of its points exactly once: a 2 x 2 x 1 grid of 4 points
SMOKE_GRID_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "values": [7e-4, 4e-2]},
    "dropout": {"type": "float", "values": [0.0, 0.25]},
    "batch_size": {"type": "categorical", "choices": [128]},
}
CHECKPOINTS = (5, 10, 15, 20, 30)


def grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(p.get("values", p.get("choices", []))) for p in space.values())


def run_one(tmp: Path, strategy: str, seed: int, budget: int, max_epochs: int, patience: int,
            grid_space: dict[str, Any]) -> dict[str, Any]:
    from search import RayBackend, run_study

    name = f"quality-{strategy}-{seed}"
    url = f"sqlite:///{tmp / (name + '.db')}"
    space = grid_space if strategy == "grid" else DEFAULT_SPACE
    spec = spec_dict(name, strategy=strategy, n_trials=budget, seed=seed, space=space, max_epochs=max_epochs,
                     patience=patience, max_concurrent=2)
    t0 = time.perf_counter()
    res = run_study(spec, storage=url, backend=RayBackend(max_concurrent=2, cpus_per_trial=1), refit=False)
    wall = time.perf_counter() - t0
    assert res.done == budget, res
    trials = []
    for t in trials_of(url, name):
        trials.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "epochs": t.user_attrs.get("epochs"),
            "duration_s": t.user_attrs.get("duration_s"),
        })
    best_so_far, best = [], -math.inf
    for t in sorted(trials, key=lambda t: t["number"]):
        if t["state"] == "COMPLETE" and t["value"] is not None:
            best = max(best, t["value"])
        best_so_far.append(best if math.isfinite(best) else None)
    return {"strategy": strategy, "seed": seed, "wall_s": wall, "best": best_so_far[-1],
            "best_so_far": best_so_far, "trials": trials}


def summarize(runs: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in STRATEGIES:
        rs = [r for r in runs if r["strategy"] == s]
        if not rs:
            continue
        curve = []
        for k in range(budget):
            curve.append(stats(r["best_so_far"][k] for r in rs if r["best_so_far"][k] is not None))
        out[s] = {
            "curve": curve,
            "at": {str(k): curve[k - 1] for k in CHECKPOINTS if k <= budget},
            "final": curve[-1],
            "wall_s": stats(r["wall_s"] for r in rs),
            "mean_trial_s": stats(t["duration_s"] for r in rs for t in r["trials"] if t["duration_s"]),
        }
    # paired by seed: trials random/TPE need to reach the grid's final best (Bergstra & Bengio 2012)
    grid = {r["seed"]: r["best"] for r in runs if r["strategy"] == "grid"}
    reach: dict[str, Any] = {}
    for s in ("random", "tpe"):
        per_seed = {}
        for r in runs:
            if r["strategy"] != s or r["seed"] not in grid or grid[r["seed"]] is None:
                continue
            k = next((i + 1 for i, b in enumerate(r["best_so_far"]) if b is not None and b >= grid[r["seed"]]), None)
            per_seed[str(r["seed"])] = {"trials_to_reach_grid_best": k,
                                        "final_minus_grid": (r["best"] - grid[r["seed"]]) if r["best"] else None}
        reach[s] = per_seed
    out["vs_grid"] = reach
    tpe = {r["seed"]: r["best"] for r in runs if r["strategy"] == "tpe"}
    rnd = {r["seed"]: r["best"] for r in runs if r["strategy"] == "random"}
    out["tpe_minus_random_final"] = {str(k): tpe[k] - rnd[k] for k in tpe if k in rnd and tpe[k] and rnd[k]}
    return out


def plot(summary: dict[str, Any], budget: int, path: Path, title: str, tpe_startup: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"grid": ("tab:gray", "-", 2.0, 1), "tpe": ("tab:orange", "-", 2.0, 2),
             "random": ("tab:blue", "--", 2.0, 3)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    x = list(range(1, budget + 1))
    for ax, zoom in zip(axes, (False, True)):
        finals = []
        for s in STRATEGIES:
            if s not in summary:
                continue
            color, ls, lw, z = style[s]
            c = summary[s]["curve"]
            xs = [k for k, p in zip(x, c) if p["mean"] is not None]
            mean = [p["mean"] for p in c if p["mean"] is not None]
            lo = [p["min"] for p in c if p["mean"] is not None]
            hi = [p["max"] for p in c if p["mean"] is not None]
            ax.plot(xs, mean, color=color, ls=ls, lw=lw, zorder=z + 10, label=f"{s} (mean)")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0, zorder=z)
            finals.append(min(lo[len(lo) // 3:]) if lo else 1.0)
        if budget > tpe_startup:
            ax.axvline(tpe_startup + 0.5, color="k", lw=0.8, ls=":")
        ax.set_xlabel("trial number")
        ax.set_ylabel("best CV accuracy so far")
        ax.grid(alpha=0.3)
        if zoom and finals:
            ax.set_ylim(min(finals) - 0.004, max(p["max"] for s in STRATEGIES if s in summary
                                                 for p in summary[s]["curve"] if p["max"] is not None) + 0.002)
            ax.set_xlim(budget / 3, budget + 0.5)
            ax.set_title("zoomed: last two thirds of the budget")
        else:
            ax.set_title(title)
            ax.legend(loc="lower right")
    fig.text(0.5, 0.01, f"bands: min-max over seeds. Dotted line: TPE's first {tpe_startup} trials are its "
             "random start-up, the same points as random's for the same seed.", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="4 trials, 1 seed, 2 epochs")
    p.add_argument("--out", type=Path, help="write quality.json and quality.png into this directory")
    p.add_argument("--budget", type=int, help="trials per run (default 30; smoke 4)")
    p.add_argument("--seeds", type=int, nargs="+", help="study seeds (default 0 1 2 3 4; smoke 0)")
    p.add_argument("--max-epochs", type=int, help="default 20; smoke 2")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--replot", action="store_true", help="only redraw quality.png from --out's quality.json")
    args = p.parse_args(argv)
    if args.replot:
        import json

        old = json.loads((args.out / "quality.json").read_text())
        plot(old["summary"], old["budget"], args.out / "quality.png",
             f"digits, {old['budget']} trials, {len(old['seeds'])} seed(s), {old['max_epochs']} epochs max")
        return 0
    warnings.filterwarnings("ignore", module="optuna")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = args.budget or (4 if args.smoke else 30)
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2, 3, 4])
    max_epochs = args.max_epochs or (2 if args.smoke else 20)
    grid_space = SMOKE_GRID_SPACE if args.smoke else GRID_SPACE
    if "grid" in args.strategies and budget != grid_size(grid_space):
        print(f"bench_quality: --budget {budget} differs from the grid's {grid_size(grid_space)} points, and a grid "
              f"runs each point exactly once; use --budget {grid_size(grid_space)} or leave grid out of --strategies",
              file=sys.stderr)
        return 2
    report = report_header("bench_quality", args.smoke, argv)
    report.update(budget=budget, seeds=seeds, max_epochs=max_epochs, patience=args.patience, folds=3,
                  hidden=[128, 128], concurrency=2, space=DEFAULT_SPACE, grid_space=grid_space)
    runs = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        report["ray_init_s"] = ray_init(num_cpus=2)
        try:
            for seed in seeds:  # seeds outermost: machine-load drift spreads over all strategies
                for s in args.strategies:
                    r = run_one(Path(tmp), s, seed, budget, max_epochs, args.patience, grid_space)
                    runs.append(r)
                    print(f"  seed {seed} {s:<6} best {r['best']:.4f}  ({r['wall_s']:.1f}s)", flush=True)
        finally:
            ray_shutdown()
    report["total_wall_s"] = time.perf_counter() - t_all
    report["runs"] = runs
    report["summary"] = summary = summarize(runs, budget)
    for s in args.strategies:
        f = summary[s]["final"]
        print(f"{s:<6} final best: mean {f['mean']:.4f}  std {f['std']:.4f}  min {f['min']:.4f}  max {f['max']:.4f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(summary, budget, args.out / "quality.png",
             f"digits, {budget} trials, {len(seeds)} seed(s), {max_epochs} epochs max")
    write_json(args.out, "quality", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
