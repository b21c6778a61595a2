"""Scale: a study with 1,000 and 10,000 finished trials (issue 7, benchmark 5).

The studies are built with ``bench/bench_queries.py``'s builder (same rows Optuna writes: 3 params,
the per-trial user attributes hpsearch stores including learning curves, 20 intermediate values;
85 % COMPLETE, 10 % PRUNED, 5 % FAIL) on a SQLite file. On each:

- **TPE ask**: one ``study.ask()`` of hpsearch's TPE sampler (multivariate, constant liar) through
  hpsearch's storage (``storage.create_storage``: Optuna ``RDBStorage`` with its trial cache). The
  first ask of a process loads every trial (``ask_cold_s``; the orchestrator pays it once per run),
  later asks read only what changed (``ask_s``, the per-trial cost). Each asked trial is told FAIL
  right away (untimed) so the study does not grow RUNNING trials.
- **CLI**: ``hpsearch show NAME -o json``, ``hpsearch best NAME -o json``, ``hpsearch ls -o json``
  (and ``show`` as a table) as subprocesses, wall time including Python start-up; ``cli_startup_s``
  is ``hpsearch --help`` (imports only) for reference, and ``import_s`` the cumulative import times
  of the heavy modules behind ``import search.cli`` (``python -X importtime``).
- **In process**: ``search.inspect.show_study`` / ``best_of`` / ``list_studies``.

Times are medians of ``--repeat`` runs (after one warm-up for in-process calls). Goal: show, best and
ls under 2 s at 10,000 trials (as the CLI, a user's wall time).

Usage::

    .venv/bin/python -m bench.bench_scale --out bench/results        # 1,000 and 10,000 trials
    .venv/bin/python -m bench.bench_scale --smoke --out artifacts/bench-smoke   # 200 trials
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_queries import timed
from bench.common import TPE_KWARGS, report_header, write_json

GOAL_S = 2.0


def _cli(args: list[str]) -> Callable[[], str]:
    exe = Path(sys.executable).with_name("hpsearch")

    def call() -> str:
        out = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"hpsearch {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out.stdout

    return call


IMPORT_NAMES = ("search.cli", "search", "search._api", "trials", "torch", "sklearn", "optuna", "storage",
                "sqlalchemy", "click")


def import_breakdown() -> dict[str, float]:
    """Cumulative import time (s) of the CLI's heavy modules, from ``python -X importtime``."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import search.cli"], capture_output=True,
                         text=True, timeout=300)
    times: dict[str, float] = {}
    for line in out.stderr.splitlines():
        parts = [x.strip() for x in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] in IMPORT_NAMES and parts[1].isdigit():
            times.setdefault(parts[2], int(parts[1]) / 1e6)
    return times


def time_ask(url: str, study_name: str, dists: dict[str, Any], repeat: int) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    import storage as st

    study = optuna.load_study(study_name=study_name, storage=st.create_storage(url, create=False),
                              sampler=optuna.samplers.TPESampler(seed=0, **TPE_KWARGS))
    times, tells = [], []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        trial = study.ask(dists)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        study.tell(trial, state=TrialState.FAIL)
        tells.append(time.perf_counter() - t0)
    return {"ask_cold_s": times[0], "ask_s": statistics.median(times[1:]), "ask_all_s": times,
            "tell_s": statistics.median(tells)}


def bench_size(path: Path, n: int, repeat: int, smoke: bool = False) -> dict[str, Any]:
    from bench.bench_queries import DISTS, STUDY, build
    from search.inspect import _views

    out: dict[str, Any] = {"n_trials": n}
    url = f"sqlite:///{path}"
    if not path.exists():
        out["build_s"] = build(path, n)
    out["db_mb"] = round(path.stat().st_size / 2**20, 1)

    cli: dict[str, Any] = {}
    for key, args, check in (
        ("show_json", ["show", STUDY, "--storage", url, "-o", "json"],
         lambda s: len(json.loads(s)["trials"]) == n),
        ("best_json", ["best", STUDY, "--storage", url, "-o", "json"],
         lambda s: json.loads(s)["number"] is not None),
        ("ls_json", ["ls", "--storage", url, "-o", "json"],
         lambda s: any(x["name"] == STUDY for x in json.loads(s)["studies"])),
        ("show_table", ["show", STUDY, "--storage", url], lambda s: len(s.splitlines()) >= n),
    ):
        if smoke and key == "show_table":
            continue
        t, times, stdout = timed(_cli(args), repeat, warmup=False)
        assert check(stdout), f"unexpected output of hpsearch {' '.join(args)}"
        cli[key] = {"median_s": t, "times_s": times}
        print(f"  n={n:>6} hpsearch {key:<11} {t:6.3f}s", flush=True)
    out["cli"] = cli

    inproc: dict[str, Any] = {}
    for key, fn in (("show_study", lambda: _views.show_study(STUDY, url)),
                    ("best_of", lambda: _views.best_of(STUDY, url)),
                    ("list_studies", lambda: _views.list_studies(url))):
        t, times, _ = timed(fn, repeat)
        inproc[key] = {"median_s": t, "times_s": times}
        print(f"  n={n:>6} in-process {key:<12} {t:6.3f}s", flush=True)
    out["in_process"] = inproc

    out["tpe"] = time_ask(url, STUDY, DISTS, repeat)
    print(f"  n={n:>6} TPE ask cold {out['tpe']['ask_cold_s']:.3f}s, warm {out['tpe']['ask_s']:.3f}s, "
          f"tell {out['tpe']['tell_s']:.3f}s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="one study of 200 trials, 1 repeat")
    p.add_argument("--out", type=Path, help="write scale.json into this directory")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", type=Path, help="keep the SQLite files here (default: a temp dir)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", module="optuna")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sizes, repeat = ([200], 1) if args.smoke else (args.sizes, args.repeat)
    report = report_header("bench_scale", args.smoke, argv)
    report["repeat"] = repeat
    report["cli_startup_s"] = None
    if not args.smoke:  # smoke: the three commands below are enough to show the CLI works
        report["cli_startup_s"] = timed(_cli(["--help"]), repeat)[0]
        print(f"hpsearch --help: {report['cli_startup_s']:.3f}s")
        report["import_s"] = import_breakdown()
        print("import times (cumulative): " + ", ".join(f"{k} {v:.2f}s" for k, v in report["import_s"].items()))
    results = []
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            results.append(bench_size(workdir / f"scale_{n}.db", n, repeat, args.smoke))
    report["results"] = results
    largest = results[-1]
    worst = max(largest["cli"][k]["median_s"] for k in ("show_json", "best_json", "ls_json"))
    report["goals"] = [{
        "goal": f"hpsearch show/best/ls (-o json, subprocess) under {GOAL_S:g} s at {largest['n_trials']} trials",
        "value": worst, "met": worst < GOAL_S,
    }]
    for g in report["goals"]:
        print(f"goal: {g['goal']}: slowest {g['value']:.2f}s -> {'met' if g['met'] else 'MISSED'}")
    write_json(args.out, "scale", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
