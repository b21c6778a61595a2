"""Orchestration overhead and parallel efficiency (issue 7, benchmarks 1 and 2).

**Overhead.** N trials of a fixed objective that sleeps 0.2 s, run one at a time by

- ``hpsearch``: :func:`search.run_study` with :class:`search.RayBackend` (local Ray, ``max_concurrent=1``),
  SQLite storage, TPE, worker function :func:`bench.common.sleep_worker`; also with concurrency 2;
- ``optuna_memory`` / ``optuna_sqlite``: plain ``optuna.create_study(...).optimize(objective, n_jobs=1)``
  with the same TPE sampler, in memory and on a fresh SQLite file;
- ``tune_default`` / ``tune_reuse``: Ray Tune ``Tuner`` + ``OptunaSearch`` (same TPE sampler,
  ``max_concurrent_trials=1``), default settings and ``reuse_actors=True``.

Per-trial overhead = (last trial end - first trial start - N/c x 0.2 s) / (N/c - 1), from timestamps
taken around the sleep inside the worker (``worker_start``/``worker_end`` for hpsearch): the time one
more trial adds on each of the ``c`` lanes, with one-time start-up (Ray start, study creation, data,
worker processes, Tune's controller) excluded. Start-up is reported separately: ``ray_init_s`` once,
and per run ``startup_s`` (call -> first trial starts) and ``teardown_s`` (last trial ends -> call
returns). All systems share one local Ray (2 CPUs) started once; each gets a warm-up run first;
repeats are interleaved so that load drift on the shared machine hits every system alike.

**Parallel efficiency.** hpsearch with 2 concurrent trials of about 1 s each of CPU-bound work (one
thread of float32 matrix products, 10 epochs with a report per epoch; a sleep variant too):
efficiency = sum of trial durations / (wall x 2), wall = first ``worker_start`` to last
``worker_end`` (first round excluded, as above). Efficiency says whether hpsearch keeps both lanes
busy; whether two CPU-bound trials also finish twice as many trials per second depends on the
machine having two free cores. So the same run measures the trials alone (concurrency 1) and the
machine's own scaling without hpsearch (one trial's work in 1, then 2 spawned processes at once):
``busy_throughput_c2_over_c1`` should be compared with ``raw_throughput_2_over_1``.

Usage::

    .venv/bin/python -m bench.bench_overhead --out bench/results          # N=40, 3 repeats
    .venv/bin/python -m bench.bench_overhead --smoke --out artifacts/bench-smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable (Ray workers need it too)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    DEFAULT_SPACE,
    SLEEP_S,
    TPE_KWARGS,
    BusyWorker,
    SleepWorker,
    busy_work,
    calibrate_busy,
    ray_init,
    ray_shutdown,
    report_header,
    score_of,
    sleep_worker,
    spec_dict,
    stats,
    trials_of,
    worker_probe,
    write_json,
)

GOAL_VS_OPTUNA = 1.5  # hpsearch per-trial overhead <= 1.5 x plain Optuna + SQLite
GOAL_VS_TUNE = 5.0  # Tune (default) per-trial overhead >= 5 x hpsearch's
GOAL_EFFICIENCY = 0.9


def _timing(call_start: float, call_end: float, spans: list[tuple[float, float]], trial_s: float,
            concurrency: int, commits: int | None = None) -> dict[str, Any]:
    """Steady-state timing of one run from the trials' own start/end stamps.

    The first round (the first ``concurrency`` trials to start) is start-up: hpsearch's first poll
    waits for its control actor's process, Tune's first trial for its actor. The window runs from
    the start of the next trial to the end of the last one and holds ``L`` trials per lane, so
    ``L x trial_s`` of work and ``L - 1`` gaps per lane.
    """
    spans = sorted(spans)
    n, c = len(spans), concurrency
    skip = c if n > 2 * c else 0
    window = spans[skip:]
    w_start, w_end = window[0][0], max(e for _, e in spans)
    w_span = w_end - w_start
    lanes = len(window) / c
    durations = [e - s for s, e in spans]
    gaps = [spans[i + 1][0] - spans[i][1] for i in range(skip, n - 1)] if c == 1 else []
    first, last = spans[0][0], w_end
    return {
        "n": n,
        "concurrency": c,
        "call_wall_s": call_end - call_start,
        "startup_s": w_start - call_start - (skip / c) * trial_s,
        "first_trial_start_s": first - call_start,
        "teardown_s": call_end - last,
        "span_s": last - first,
        "window_trials": len(window),
        "window_s": w_span,
        "trials_per_s": len(window) / w_span if w_span > 0 else None,
        "mean_trial_s": statistics.fmean(e - s for s, e in window),
        "mean_trial_all_s": statistics.fmean(durations),
        "overhead_ms": (w_span - lanes * trial_s) / (lanes - 1) * 1e3 if lanes > 1 else None,
        "overhead_incl_startup_ms": (call_end - call_start - n / c * trial_s) / n * 1e3,
        "gap_ms": stats(g * 1e3 for g in gaps) if gaps else None,
        "efficiency": sum(e - s for s, e in window) / (w_span * c) if w_span > 0 else None,
        "efficiency_all_trials": sum(durations) / ((last - first) * c) if last > first else None,
        "db_commits_per_trial": commits / n if commits is not None else None,
        "spans": [[round(s - call_start, 4), round(e - call_start, 4)] for s, e in spans],
    }


class _Commits:
    """Counts SQLAlchemy commits in this process (all engines) while active."""

    def __init__(self) -> None:
        self.n = 0

    def _on(self, conn: Any) -> None:
        self.n += 1

    def __enter__(self) -> _Commits:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "commit", self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "commit", self._on)


# -------------------------------------------------------------------------------------- hpsearch


def run_hpsearch(tmp: Path, tag: str, n: int, concurrency: int, worker: Any = sleep_worker,
                 trial_s: float = SLEEP_S) -> dict[str, Any]:
    from search import RayBackend, run_study

    name = f"overhead-{tag}"
    url = f"sqlite:///{tmp / (name + '.db')}"
    spec = spec_dict(name, strategy="tpe", n_trials=n, max_concurrent=concurrency)
    backend = RayBackend(max_concurrent=concurrency, cpus_per_trial=1)
    with _Commits() as commits:
        t0 = time.time()
        res = run_study(spec, storage=url, backend=backend, worker_fn=worker, refit=False)
        t1 = time.time()
    assert res.done == n, res
    trials = trials_of(url, name)
    spans = [(t.user_attrs["worker_start"], t.user_attrs["worker_end"]) for t in trials]
    assert len(spans) == n and all(t.state.name == "COMPLETE" for t in trials)
    return _timing(t0, t1, spans, trial_s, concurrency, commits.n)


# -------------------------------------------------------------------------------------- Optuna


def _sampler() -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=0, **TPE_KWARGS)


def run_optuna(tmp: Path, tag: str, n: int, sqlite: bool) -> dict[str, Any]:
    import optuna

    spans: list[tuple[float, float]] = []
    lo, hi = DEFAULT_SPACE["lr"]["low"], DEFAULT_SPACE["lr"]["high"]
    choices = DEFAULT_SPACE["batch_size"]["choices"]

    def objective(trial: optuna.Trial) -> float:
        params = {
            "lr": trial.suggest_float("lr", lo, hi, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "batch_size": trial.suggest_categorical("batch_size", choices),
        }
        t0 = time.time()
        time.sleep(SLEEP_S)
        spans.append((t0, time.time()))
        return score_of(params)

    with _Commits() as commits:
        t0 = time.time()
        storage = f"sqlite:///{tmp / f'optuna-{tag}.db'}" if sqlite else None
        study = optuna.create_study(storage=storage, study_name=f"optuna-{tag}", direction="maximize",
                                    sampler=_sampler())
        study.optimize(objective, n_trials=n, n_jobs=1)
        t1 = time.time()
    return _timing(t0, t1, spans, SLEEP_S, 1, commits.n if sqlite else None)


# -------------------------------------------------------------------------------------- Ray Tune


def tune_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: the same 0.2 s objective; reports its own start and end."""
    from ray import tune

    t0 = time.time()
    time.sleep(SLEEP_S)
    t1 = time.time()
    tune.report({"score": score_of(config), "t_start": t0, "t_end": t1})


def run_tune(tmp: Path, tag: str, n: int, reuse_actors: bool) -> dict[str, Any]:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    space = {
        "lr": tune.loguniform(DEFAULT_SPACE["lr"]["low"], DEFAULT_SPACE["lr"]["high"]),
        "dropout": tune.uniform(0.0, 0.5),
        "batch_size": tune.choice(DEFAULT_SPACE["batch_size"]["choices"]),
    }
    search = OptunaSearch(metric="score", mode="max", sampler=_sampler())
    tuner = tune.Tuner(
        tune_trainable,
        param_space=space,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=n, max_concurrent_trials=1,
                                    reuse_actors=reuse_actors),
        run_config=tune.RunConfig(storage_path=str(tmp / "tune"), name=f"tune-{tag}", verbose=0),
    )
    t0 = time.time()
    grid = tuner.fit()
    t1 = time.time()
    df = grid.get_dataframe()
    assert len(df) == n and not grid.errors, grid.errors
    spans = list(zip(df["t_start"].astype(float), df["t_end"].astype(float)))
    return _timing(t0, t1, spans, SLEEP_S, 1)


def commit_cost(tmp: Path, n: int = 40) -> dict[str, float]:
    """Median ms of one ``trial.set_user_attr`` (one transaction) on hpsearch's storage (SQLite in WAL
    mode, ``storage.create_storage``) and on a plain Optuna SQLite URL: what each stored attribute costs."""
    import optuna

    import storage as st

    out = {}
    for key, stor in (("hpsearch_storage_ms", st.create_storage(f"sqlite:///{tmp / 'attr-hp.db'}")),
                      ("optuna_url_ms", f"sqlite:///{tmp / 'attr-optuna.db'}")):
        trial = optuna.create_study(storage=stor).ask()
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            trial.set_user_attr(f"k{i}", [0.5, 0.25, 0.125])
            times.append(time.perf_counter() - t0)
        out[key] = statistics.median(times) * 1e3
    return out


# -------------------------------------------------------------------------------------- runs

SYSTEMS = ("hpsearch_c1", "hpsearch_c2", "optuna_memory", "optuna_sqlite", "tune_default", "tune_reuse")
# smoke leaves out systems whose code path another one exercises (tune_default; the parallel part's c=2 runs)
SMOKE_SKIP = ("tune_reuse", "hpsearch_c2")


def run_system(system: str, tmp: Path, tag: str, n: int, smoke: bool = False) -> dict[str, Any]:
    if system == "hpsearch_c1":
        return run_hpsearch(tmp, tag, n, 1)
    if system == "hpsearch_c2":
        return run_hpsearch(tmp, tag, n, 2)
    if system == "optuna_memory":
        return run_optuna(tmp, tag, n, sqlite=False)
    if system == "optuna_sqlite":
        return run_optuna(tmp, tag, n, sqlite=True)
    if system == "tune_default":
        return run_tune(tmp, tag, min(n, 2) if smoke else n, reuse_actors=False)  # smoke: its code path, not its time
    if system == "tune_reuse":
        return run_tune(tmp, tag, n, reuse_actors=True)
    raise ValueError(system)


def _fmt(v: float | None, spec: str) -> str:
    return format(v, spec) if v is not None else "n/a".rjust(len(format(0.0, spec)))


def overhead(tmp: Path, n: int, repeats: int, systems: tuple[str, ...], smoke: bool) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    if not smoke:
        for s in systems:  # worker processes, imports, Tune's first experiment
            print(f"warm-up {s}", flush=True)
            run_system(s, tmp, f"warm-{s}", 4)
    for rep in range(repeats):
        for s in systems:
            r = run_system(s, tmp, f"{s}-{rep}", n, smoke)
            r.update(system=s, rep=rep)
            runs.append(r)
            print(f"  rep {rep} {s:<14} overhead {_fmt(r['overhead_ms'], '8.1f')} ms/trial  window "
                  f"{r['window_s']:6.2f}s  start-up {r['startup_s']:5.2f}s  teardown {r['teardown_s']:5.2f}s",
                  flush=True)
    summary: dict[str, Any] = {}
    for s in systems:
        rs = [r for r in runs if r["system"] == s]
        summary[s] = {
            k: stats(r[k] for r in rs if r[k] is not None)
            for k in ("overhead_ms", "overhead_incl_startup_ms", "startup_s", "teardown_s", "window_s",
                      "trials_per_s", "db_commits_per_trial")
        }
    med = {s: summary[s]["overhead_ms"]["median"] for s in systems}
    goals = []
    if med.get("hpsearch_c1") and med.get("optuna_sqlite"):
        ratio = med["hpsearch_c1"] / med["optuna_sqlite"]
        goals.append({"goal": f"hpsearch per-trial overhead <= {GOAL_VS_OPTUNA}x plain Optuna + SQLite",
                      "value": ratio, "met": ratio <= GOAL_VS_OPTUNA})
    if med.get("hpsearch_c1") and med.get("tune_default"):
        ratio = med["tune_default"] / med["hpsearch_c1"]
        goals.append({"goal": f"Ray Tune (default) per-trial overhead >= {GOAL_VS_TUNE}x hpsearch's",
                      "value": ratio, "met": ratio >= GOAL_VS_TUNE})
    scaling = None
    if "hpsearch_c1" in summary and "hpsearch_c2" in summary:
        scaling = summary["hpsearch_c2"]["trials_per_s"]["median"] / summary["hpsearch_c1"]["trials_per_s"]["median"]
    return {"n_trials": n, "repeats": repeats, "trial_s": SLEEP_S, "runs": runs, "summary": summary,
            "median_overhead_ms": med, "throughput_c2_over_c1": scaling, "goals": goals}


def _busy_proc(iters: int, q: Any, start: Any) -> None:
    busy_work(5)  # import torch and warm up before the clock starts
    start.wait()
    t0 = time.perf_counter()
    busy_work(iters)
    q.put(time.perf_counter() - t0)


def raw_scaling(iters: int) -> dict[str, Any]:
    """The machine's own scaling, without hpsearch: the work of one trial in 1 process, then in 2
    processes at once (spawned, as Ray's workers are). Throughput 2-over-1 near 2 means two free cores."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {}
    for k in (1, 2):
        q, start = ctx.Queue(), ctx.Barrier(k + 1)
        procs = [ctx.Process(target=_busy_proc, args=(iters, q, start)) for _ in range(k)]
        for pr in procs:
            pr.start()
        start.wait()  # every process has imported torch; go
        for pr in procs:
            pr.join()
        out[f"procs_{k}_s"] = [q.get() for _ in range(k)]
    solo, pair = out["procs_1_s"][0], max(out["procs_2_s"])
    out["throughput_2_over_1"] = 2 * solo / pair
    return out


def parallel(tmp: Path, n: int, epochs: int, repeats: int, smoke: bool) -> dict[str, Any]:
    iters = calibrate_busy(0.1)
    busy = BusyWorker(epochs=epochs, iters_per_epoch=iters)
    sleep = SleepWorker(epochs=epochs, epoch_s=0.1)
    trial_s = epochs * 0.1
    # smoke: the CPU-bound case at concurrency 2 only (the others run the same code)
    cases = [("busy", busy, 2, n)] if smoke else [("busy", busy, 1, 4), ("busy", busy, 2, n), ("sleep", sleep, 2, n)]
    runs, raw = [], []
    for rep in range(repeats):
        if not smoke:
            raw.append(raw_scaling(epochs * iters))
            print(f"  rep {rep} raw processes: 1 alone {raw[-1]['procs_1_s'][0]:.2f}s, 2 at once "
                  f"{max(raw[-1]['procs_2_s']):.2f}s -> throughput x{raw[-1]['throughput_2_over_1']:.2f}", flush=True)
        for kind, worker, c, k in cases:
            r = run_hpsearch(tmp, f"par-{kind}-c{c}-{rep}", k, c, worker, trial_s)
            r.update(kind=kind, rep=rep)
            runs.append(r)
            print(f"  rep {rep} {kind:<5} c={c}: efficiency {r['efficiency']:.3f} (all trials "
                  f"{r['efficiency_all_trials']:.3f})  mean trial {r['mean_trial_s']:.3f}s  window "
                  f"{r['window_s']:.2f}s", flush=True)

    def pick(kind: str, c: int) -> list[dict[str, Any]]:
        return [r for r in runs if r["kind"] == kind and r["concurrency"] == c]

    busy2, busy1, sleep2 = pick("busy", 2), pick("busy", 1), pick("sleep", 2)
    eff_busy = statistics.median(r["efficiency"] for r in busy2)
    eff_sleep = statistics.median(r["efficiency"] for r in sleep2) if sleep2 else None
    out: dict[str, Any] = {
        "n_trials": n,
        "epochs": epochs,
        "busy_iters_per_epoch": iters,
        "trial_s_nominal": trial_s,
        "runs": runs,
        "efficiency_busy": eff_busy,
        "efficiency_sleep": eff_sleep,
        "efficiency_busy_all_trials": statistics.median(r["efficiency_all_trials"] for r in busy2),
        "efficiency_sleep_all_trials": (statistics.median(r["efficiency_all_trials"] for r in sleep2)
                                        if sleep2 else None),
        "busy_trial_s_concurrent": statistics.median(r["mean_trial_s"] for r in busy2),
    }
    if busy1:
        alone = statistics.median(r["mean_trial_s"] for r in busy1)
        out["busy_trial_s_alone"] = alone
        out["busy_slowdown_when_concurrent"] = out["busy_trial_s_concurrent"] / alone
        # throughput of 2 concurrent CPU-bound trials over one-at-a-time (window trials per second)
        out["busy_throughput_c2_over_c1"] = (statistics.median(r["trials_per_s"] for r in busy2)
                                             / statistics.median(r["trials_per_s"] for r in busy1))
    if raw:
        out["raw_processes"] = raw
        out["raw_throughput_2_over_1"] = statistics.median(r["throughput_2_over_1"] for r in raw)
    out["goals"] = [
        {"goal": f"parallel efficiency (CPU-bound, 2 concurrent) >= {GOAL_EFFICIENCY}",
         "value": eff_busy, "met": eff_busy >= GOAL_EFFICIENCY},
    ]
    if eff_sleep is not None:
        out["goals"].append({"goal": f"parallel efficiency (sleep, 2 concurrent) >= {GOAL_EFFICIENCY}",
                             "value": eff_sleep, "met": eff_sleep >= GOAL_EFFICIENCY})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="N=6, 1 repeat, short parallel trials")
    p.add_argument("--out", type=Path, help="write overhead.json into this directory")
    p.add_argument("-n", "--n-trials", type=int, help="trials per run (default 40; smoke 6)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 3; smoke 1)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS,
                   help="default: all; smoke: all but tune_reuse and hpsearch_c2 (code paths exercised elsewhere)")
    p.add_argument("--parts", nargs="+", choices=("overhead", "parallel"), default=["overhead", "parallel"],
                   help="run only these parts; the others are kept from an existing --out/overhead.json")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", module="optuna")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = args.n_trials or (6 if args.smoke else 40)
    repeats = args.repeats or (1 if args.smoke else 3)
    report = report_header("bench_overhead", args.smoke, argv)
    old_path = args.out / "overhead.json" if args.out else None
    if set(args.parts) != {"overhead", "parallel"} and old_path and old_path.exists():
        old = json.loads(old_path.read_text())
        for part in {"overhead", "parallel"} - set(args.parts):
            if part in old:  # kept from the earlier run, with that run's header
                report[part] = {**old[part], "machine": old[part].get("machine", old["machine"]),
                                "command": old[part].get("command", old["command"])}
                for key in ("ray_init_s", "set_user_attr_ms", "worker_probe") if part == "overhead" else ():
                    if key in old:
                        report[part].setdefault(key, old[key])
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        report["ray_init_s"] = ray_init(num_cpus=2)
        try:
            report["worker_probe"] = worker_probe()
            started = f"{report['ray_init_s']:.2f}s" if report["ray_init_s"] is not None else "(shared, not timed)"
            print(f"Ray started in {started}; workers import bench from "
                  f"{report['worker_probe']['bench_common']} (cwd {report['worker_probe']['cwd']})", flush=True)
            if "overhead" in args.parts:
                systems = tuple(args.systems or [s for s in SYSTEMS if not (args.smoke and s in SMOKE_SKIP)])
                report["overhead"] = overhead(Path(tmp), n, repeats, systems, args.smoke)
                report["overhead"].update(machine=report["machine"], command=report["command"])
                report["set_user_attr_ms"] = commit_cost(Path(tmp))
                print("one set_user_attr: " + ", ".join(f"{k} {v:.2f}" for k, v in report["set_user_attr_ms"].items()))
            if "parallel" in args.parts:
                report["parallel"] = (parallel(Path(tmp), 6, 3, 1, smoke=True) if args.smoke
                                      else parallel(Path(tmp), 12, 10, repeats, smoke=False))
                report["parallel"].update(machine=report["machine"], command=report["command"])
        finally:
            ray_shutdown()
    if "set_user_attr_ms" not in report and "overhead" in report:
        report["set_user_attr_ms"] = report["overhead"].get("set_user_attr_ms")
    goals = report.get("overhead", {}).get("goals", []) + report.get("parallel", {}).get("goals", [])
    report["goals"] = goals
    for g in goals:
        print(f"goal: {g['goal']}: {g['value']:.2f} -> {'met' if g['met'] else 'MISSED'}")
    write_json(args.out, "overhead", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
