"""End to end through the service: the digits search via ``hpsearch serve``, ``hpsearch run`` and plain Optuna.

Usage::

    .venv/bin/python -m bench.bench_service_e2e [--smoke] [--sizes 20 60] [--out DIR]

One run measures, on the same 2-core machine, for each size (20 and 60 TPE trials; digits, 3-fold CV,
at most 20 epochs, patience 3, MLP [128, 128], the benchmarks' space and seed 0):

1. **service**: a :class:`search.service.Server` with its API on uvicorn (127.0.0.1) in this
   process, on a local Ray of 2 CPUs started once; a 2-trial warm-up study first (its workers import
   torch), as on a server that has been up for a while. Timed from ``POST /studies`` until
   ``GET /studies/NAME`` says ``done`` (polled every 0.2 s, as a client would).
2. **CLI**: ``hpsearch run FILE`` as a subprocess, cold: Python and torch imports, its own Ray, the
   data, the trials, exit.
3. **plain Optuna**: ``optuna.create_study(...).optimize(objective)`` in this process, one trial at a
   time, each trial the straightforward torch loop over the 3 folds of :mod:`bench.bench_e2e`
   (``run_plain``, 1 intra-op thread), with the same data, folds, model, optimiser and early stopping.

The service and the CLI run 2 trials at a time (``max_concurrent: 2``, 1 CPU each) and, after the
last trial, the final refit of the best configuration on all non-test rows (both always do; the
plain script has no refit): ``wall_s`` includes it, ``to_last_trial_s`` stops at the last trial's end
(from the trials' timestamps in the database). Best = the best trial's mean CV accuracy.
Ratios are against plain Optuna in the same run. ``--smoke``: 2 trials, 2 epochs, one size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, ray_init, ray_shutdown, report_header, spec_dict, trials_of, write_json

SIZES = (20, 60)
SEED = 0
PATIENCE = 3


def _spec(name: str, n_trials: int, max_epochs: int) -> dict[str, Any]:
    return spec_dict(name, strategy="tpe", n_trials=n_trials, seed=SEED, max_epochs=max_epochs, patience=PATIENCE,
                     max_concurrent=2)


def _last_trial_end(url: str, name: str) -> float:
    """Unix time of the last trial's end (the refit is not a trial)."""
    ends = [t.datetime_complete for t in trials_of(url, name) if t.datetime_complete is not None]
    end = max(ends)
    # Optuna keeps naive local time
    return end.timestamp() if end.tzinfo is None else end.astimezone(timezone.utc).timestamp()


def _best(url: str, name: str) -> tuple[float, int]:
    import storage as st

    engine = st.create_engine(url, create=False)
    try:
        row = st.best_trial_row(engine, name)
        summary = st.study_overview(engine, name).summary
    finally:
        engine.dispose()
    assert row is not None and row.value is not None
    return row.value, summary.n_used


def run_cli(tmp: Path, n_trials: int, max_epochs: int) -> dict[str, Any]:
    """``hpsearch run FILE`` as a subprocess, from its start to its exit."""
    name = f"cli{n_trials}"
    url = f"sqlite:///{tmp / (name + '.db')}"
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(_spec(name, n_trials, max_epochs)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-c", "from search.cli import main; main()", "run", str(path), "--storage", url, "-q"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"hpsearch run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    best, done = _best(url, name)
    return {"wall_s": wall, "to_last_trial_s": _last_trial_end(url, name) - t0, "best": best, "done": done}


def run_plain_optuna(n_trials: int, max_epochs: int) -> dict[str, Any]:
    import optuna

    from bench.bench_e2e import run_plain

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise
    out = run_plain(SEED, n_trials, max_epochs, PATIENCE, threads=1)
    return {"wall_s": out["wall_s"], "to_last_trial_s": out["wall_s"], "best": out["best"], "done": n_trials}


def _get(base: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + path, timeout=60) as r:
        return json.loads(r.read())


def _post(base: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(base + "/studies", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _through_service(base: str, url: str, name: str, n_trials: int, max_epochs: int) -> dict[str, Any]:
    t0 = time.time()
    _post(base, {"study_file": json.dumps(_spec(name, n_trials, max_epochs))})
    deadline = time.monotonic() + 3600
    while True:
        body = _get(base, f"/studies/{name}")
        if body["state"] not in ("queued", "running"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"study {name} still {body['state']} after an hour")
        time.sleep(0.2)
    wall = time.time() - t0
    if body["state"] != "done" or body["best"] is None:
        raise RuntimeError(f"study {name} ended {body['state']}: {body.get('message')}")
    return {"wall_s": wall, "to_last_trial_s": _last_trial_end(url, name) - t0, "best": body["best"]["value"],
            "done": body["done"]}


def run_service(tmp: Path, sizes: list[int], max_epochs: int) -> dict[str, Any]:
    """Every size through one server (Ray and uvicorn started once, a warm-up study first)."""
    import uvicorn

    from bench.bench_service import _free_port
    from search.service import Server, create_app

    url = f"sqlite:///{tmp / 'serve.db'}"
    t0 = time.time()
    ray_init(num_cpus=2)
    server = Server(url, slots=2, poll_s=0.05).open()
    port = _free_port()
    userver = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning",
                                            access_log=False))
    thread = threading.Thread(target=userver.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 60
        while not userver.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start in 60 s")
            time.sleep(0.01)
        server.start()
        warm = _through_service(base, url, "warmup", 2, 1)
        out["startup_and_warmup_s"] = time.time() - t0
        out["warmup"] = warm
        for n in sizes:
            out[str(n)] = _through_service(base, url, f"serve{n}", n, max_epochs)
            print(f"service, {n} trials: {out[str(n)]['wall_s']:.1f} s, best {out[str(n)]['best']:.4f}", flush=True)
    finally:
        userver.should_exit = True
        thread.join(30)
        server.close()
        ray_shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="2 trials, 2 epochs, one size")
    p.add_argument("--sizes", type=int, nargs="+", help=f"trials per study (default {' '.join(map(str, SIZES))})")
    p.add_argument("--out", type=Path, help="write service_e2e.json into this directory")
    args = p.parse_args(argv)
    sizes = args.sizes or ([2] if args.smoke else list(SIZES))
    max_epochs = 2 if args.smoke else 20
    report = report_header("bench_service_e2e", args.smoke, argv)
    report.update(sizes=sizes, max_epochs=max_epochs, patience=PATIENCE, folds=3, seed=SEED, concurrency=2)
    loads: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        loads["start"] = os.getloadavg()[0]
        report["service"] = run_service(Path(tmp), sizes, max_epochs)
        report["cli"], report["plain"] = {}, {}
        for n in sizes:  # each size: the CLI, then the plain script, back to back
            loads[f"cli{n}"] = os.getloadavg()[0]
            report["cli"][str(n)] = run_cli(Path(tmp), n, max_epochs)
            print(f"CLI, {n} trials: {report['cli'][str(n)]['wall_s']:.1f} s", flush=True)
            loads[f"plain{n}"] = os.getloadavg()[0]
            report["plain"][str(n)] = run_plain_optuna(n, max_epochs)
            print(f"plain Optuna, {n} trials: {report['plain'][str(n)]['wall_s']:.1f} s", flush=True)
        loads["end"] = os.getloadavg()[0]
    report["load_1min"] = loads
    rows = []
    for n in sizes:
        plain = report["plain"][str(n)]
        for system in ("service", "cli", "plain"):
            r = report[system][str(n)]
            rows.append({"trials": n, "system": system, "wall_s": r["wall_s"], "to_last_trial_s": r["to_last_trial_s"],
                         "best": r["best"], "done": r["done"],
                         "speedup_vs_plain": plain["wall_s"] / r["wall_s"],
                         "speedup_vs_plain_to_last_trial": plain["to_last_trial_s"] / r["to_last_trial_s"],
                         "best_minus_plain": r["best"] - plain["best"]})
    report["rows"] = rows
    print(f"{'trials':>6} {'system':>8} {'wall s':>8} {'to last trial s':>16} {'x plain':>8} {'best':>7}")
    for r in rows:
        print(f"{r['trials']:>6} {r['system']:>8} {r['wall_s']:>8.1f} {r['to_last_trial_s']:>16.1f} "
              f"{r['speedup_vs_plain']:>8.2f} {r['best']:>7.4f}")
    write_json(args.out, "service_e2e", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
