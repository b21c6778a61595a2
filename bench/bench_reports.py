"""Probe: what per-epoch reports cost a Ray worker, blocking on the control actor or not.

Usage::

    .venv/bin/python bench/bench_reports.py [--rounds 3]

Starts a local Ray (2 CPUs) and the control actor (``search.backends._ray_control.Control``), then runs the
same 8 digits trials (3 folds, MLP [128, 128], 20 epochs, batch sizes 256/32/64/128, twice) back
to back in one Ray task, three ways per round, interleaved: without reports (``none``), with a
blocking call on the actor after every epoch (``blocking``, what hpsearch did before) and with
hpsearch's reporter (``per_epoch``: ``search.backends._ray._Reporter``, which sends every epoch without
waiting and reads the previous reply). Prints the total trial time of each and the median/max time
a report callback took. Not part of ``python -m bench``: it measures a design decision, not a goal.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def work(data: Any, settings: Any, params: list[dict[str, Any]], control: Any, mode: str) -> dict[str, Any]:
    """Run ``params`` one after another in this worker; ``mode``: none, blocking or per_epoch."""
    import ray

    from search.backends._ray import _Reporter
    from trials import run_trial

    lat: list[float] = []

    def blocking(r: Any) -> bool:
        return bool(ray.get(control.report.remote("k", pickle.dumps(r))))

    reporter = {"none": None, "blocking": blocking, "per_epoch": _Reporter(control, "k")}[mode]

    def timed(r: Any) -> bool:
        t = time.perf_counter()
        stop = reporter(r)
        lat.append(time.perf_counter() - t)
        return stop

    report = None if reporter is None else timed
    t0 = time.perf_counter()
    for p in params:
        run_trial(data, p, settings, seed=5, report=report)
    if isinstance(reporter, _Reporter):
        reporter.close()
    return {"total_s": time.perf_counter() - t0,
            "report_median_ms": statistics.median(lat) * 1e3 if lat else None,
            "report_max_ms": max(lat) * 1e3 if lat else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import ray

    from bench.common import ray_init, ray_shutdown, spec_dict
    from search._spec import parse_spec
    from search.backends._ray_control import Control
    from trials import load_dataset

    spec = parse_spec(spec_dict("probe", n_trials=8))
    data = load_dataset(spec.data, spec.cv, spec.seed)
    params = [{"lr": 0.008, "dropout": 0.35, "batch_size": b} for b in (256, 32, 64, 128)] * 2
    ray_init(num_cpus=2)
    try:
        control = ray.remote(num_cpus=0)(Control).remote()
        task = ray.remote(num_cpus=1)(work)
        ref = ray.put(data)
        ray.get(task.remote(ref, spec.settings, params[:1], control, "none"))  # import torch once
        for r in range(args.rounds):
            for mode in ("none", "blocking", "per_epoch"):
                out = ray.get(task.remote(ref, spec.settings, params, control, mode))
                lat = "" if out["report_median_ms"] is None else (
                    f"  report median {out['report_median_ms']:.2f} ms, max {out['report_max_ms']:.1f} ms")
                print(f"round {r + 1} {mode:<9} {out['total_s']:6.2f} s{lat}", flush=True)
    finally:
        ray_shutdown()


if __name__ == "__main__":
    main()
