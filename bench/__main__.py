"""Run every benchmark and combine their JSON: ``.venv/bin/python -m bench [--smoke] --out DIR``.

Benchmarks (each also runs alone; see its docstring and ``docs/benchmarks.md``):

===========  =================================  =============================================================
name         command                            what
===========  =================================  =============================================================
overhead     python -m bench.bench_overhead     per-trial orchestration overhead; parallel efficiency
scale        python -m bench.bench_scale        TPE ask, show/best/ls at 1,000 and 10,000 trials
queries      python bench/bench_queries.py      storage read queries vs Optuna's API
training     python bench/bench_training.py     training throughput of the stacked folds
quality      python -m bench.bench_quality      grid vs random vs TPE on digits
e2e          python -m bench.bench_e2e          hpsearch vs a plain Optuna script, end to end
refit        python -m bench.bench_refit        the final refit's test score vs the CV score and a plain loop
service      python -m bench.bench_service      hpsearch serve: warm submit vs cold CLI, API p99, fair share
service_e2e  python -m bench.bench_service_e2e  digits, 20 and 60 TPE trials: serve vs run vs plain Optuna
checkpoint   python -m bench.bench_checkpoint   checkpoint cost per epoch; a 30-epoch trial killed at 20
===========  =================================  =============================================================

Each writes ``DIR/<name>.json``; this runner adds ``DIR/results.json`` with every benchmark's status,
wall time, JSON and goals (``--only NAME`` re-runs one benchmark and updates its entry there). The
exit status is 1 if a benchmark crashed (or its script is missing), 0 otherwise: goals are
reported, never enforced.

``--smoke`` (CI: ``make bench-smoke``) runs tiny sizes. In smoke mode the ``bench.*`` modules run in
this process and share one local Ray, which keeps the whole smoke run under two minutes; the scripts
``bench_queries.py`` and ``bench_training.py`` always run as subprocesses. Full runs run every
benchmark in its own process (each with a fresh Ray), so no measurement sees another's leftovers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, machine_info, now_iso

# name -> (kind, target, full-mode extra arguments)
BENCHMARKS: dict[str, tuple[str, str, list[str]]] = {
    "overhead": ("module", "bench.bench_overhead", []),
    "scale": ("module", "bench.bench_scale", []),
    "queries": ("script", "bench/bench_queries.py", []),
    "training": ("script", "bench/bench_training.py", ["--threads", "1"]),
    "quality": ("module", "bench.bench_quality", []),
    "e2e": ("module", "bench.bench_e2e", []),
    "refit": ("module", "bench.bench_refit", []),
    "service": ("module", "bench.bench_service", []),
    "checkpoint": ("module", "bench.bench_checkpoint", []),
    "service_e2e": ("module", "bench.bench_service_e2e", []),
}
TIMEOUT_S = {"smoke": 600, "full": 3600}


def _run_subprocess(cmd: list[str], timeout: float) -> tuple[int, str]:
    print(f"$ {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, timeout=timeout, stdout=sys.stdout, stderr=subprocess.PIPE,
                              text=True)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f}s"
    if proc.stderr:
        sys.stderr.write(proc.stderr[-4000:])
    return proc.returncode, (proc.stderr or "")[-2000:]


def _run_in_process(module: str, args: list[str]) -> tuple[int, str]:
    import importlib

    print(f"$ python -m {module} {' '.join(args)}  (in process)", flush=True)
    try:
        rc = importlib.import_module(module).main(args)
        return int(rc or 0), ""
    except BaseException as e:  # a crashing benchmark must not stop the others
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        return 1, tb[-2000:]


def run_one(name: str, out: Path, smoke: bool, in_process: bool) -> dict[str, Any]:
    kind, target, full_args = BENCHMARKS[name]
    json_path = out / f"{name}.json"
    json_path.unlink(missing_ok=True)
    mode = ["--smoke"] if smoke else full_args
    t0 = time.perf_counter()
    if kind == "script":
        if not (REPO / target).exists():
            return {"status": "failed", "error": f"{target} is missing", "wall_s": 0.0}
        rc, err = _run_subprocess([sys.executable, target, *mode, "--out", str(json_path)],
                                  TIMEOUT_S["smoke" if smoke else "full"])
    elif in_process:
        rc, err = _run_in_process(target, [*mode, "--out", str(out)])
    else:
        rc, err = _run_subprocess([sys.executable, "-m", target, *mode, "--out", str(out)],
                                  TIMEOUT_S["smoke" if smoke else "full"])
    wall = time.perf_counter() - t0
    entry: dict[str, Any] = {"status": "ok" if rc == 0 else "failed", "rc": rc, "wall_s": round(wall, 1)}
    if rc != 0:
        entry["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit status {rc}"
    if json_path.exists():
        try:
            entry["result"] = json.loads(json_path.read_text())
        except json.JSONDecodeError as e:
            entry.update(status="failed", error=f"{json_path} is not valid JSON: {e}")
    elif rc == 0:
        entry.update(status="failed", error=f"exited 0 but wrote no {json_path.name}")
    return entry


def collect_one(name: str, out: Path) -> dict[str, Any]:
    """The entry of a benchmark whose JSON is already in ``out`` (nothing is run)."""
    json_path = out / f"{name}.json"
    if not json_path.exists():
        return {"status": "failed", "error": f"no {json_path.name} to collect", "wall_s": 0.0}
    try:
        result = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        return {"status": "failed", "error": f"{json_path} is not valid JSON: {e}", "wall_s": 0.0}
    return {"status": "ok", "collected": True, "wall_s": 0.0, "result": result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI); under two minutes in all")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the JSON (and PNG) results (default bench/results, smoke artifacts/bench-smoke)")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    p.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[], help="leave these out")
    p.add_argument("--isolate", action="store_true", help="smoke too: one process per benchmark")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: rebuild results.json from the <name>.json files already in --out "
                        "(after running a benchmark module directly)")
    args = p.parse_args(argv)
    out = (args.out or REPO / ("artifacts/bench-smoke" if args.smoke else "bench/results")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    in_process = args.smoke and not args.isolate
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    combined: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]),
        "smoke": args.smoke,
        "started": now_iso(),
        "machine": machine_info(),
        "benchmarks": {},
    }
    path = out / "results.json"
    if (args.only or args.collect) and path.exists():  # a partial run updates the combined results of an earlier one
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("smoke") == args.smoke:
            combined["benchmarks"] = previous.get("benchmarks", {})
    t0 = time.perf_counter()
    shared_ray = False
    try:
        if in_process and not args.collect and any(BENCHMARKS[n][0] == "module" for n in names):
            from bench.common import ray_init

            ray_init(num_cpus=2)
            shared_ray = True
        for name in names:
            print(f"\n=== {name} ===", flush=True)
            entry = collect_one(name, out) if args.collect else run_one(name, out, args.smoke, in_process)
            entry["finished"] = now_iso()
            combined["benchmarks"][name] = entry
            print(f"=== {name}: {entry['status']} in {entry['wall_s']:.1f}s"
                  + (f" ({entry['error']})" if entry.get("error") else ""), flush=True)
    finally:
        if shared_ray:
            from bench.common import ray_shutdown

            ray_shutdown(force=True)
    combined["wall_s"] = round(time.perf_counter() - t0, 1)
    goals = []
    for name, entry in combined["benchmarks"].items():
        for g in (entry.get("result") or {}).get("goals", []) or []:
            goals.append({"benchmark": name, **g})
    combined["goals"] = goals
    path.write_text(json.dumps(combined, indent=2) + "\n")

    print(f"\nbenchmarks ({'smoke' if args.smoke else 'full'}), {combined['wall_s']:.0f}s in all; results in {path}")
    for name, entry in combined["benchmarks"].items():
        if name not in names:
            continue
        err = f"  {entry['error']}" if entry.get("error") else ""
        print(f"  {name:<9} {entry['status']:<7} {entry['wall_s']:7.1f}s{err}")
    if goals:
        print("goals (reported, not enforced" + ("; smoke sizes mean nothing" if args.smoke else "") + "):")
        for g in goals:
            v = g.get("value")
            vs = f"{v:.3g}" if isinstance(v, (int, float)) else str(v)
            print(f"  [{'met' if g.get('met') else 'MISSED':>6}] {g['benchmark']}: {g['goal']} (measured {vs})")
    failed = [n for n in names if combined["benchmarks"][n]["status"] != "ok"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
