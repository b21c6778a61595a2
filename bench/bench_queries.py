"""Time hpsearch's read queries against Optuna's own API on the same SQLite storage.

For each size, a study with that many finished trials is built (3 params, the ``fold_scores`` /
``value_std`` / ``epochs`` / ``duration_s`` / ``node`` / ``curves`` attributes, 20 intermediate
values each; 85 % COMPLETE, 10 % PRUNED, 5 % FAIL). Rows are bulk-inserted with Optuna's own
conversion helpers (``--via-optuna`` uses ``Study.add_trials`` instead: same rows, ~100x slower)
and the first batch is read back through Optuna and compared field by field. Then each query is
timed (median of ``--repeat`` runs after one warm-up).

Usage::

    .venv/bin/python bench/bench_queries.py --out out/bench_queries.json   # 1,000 and 10,000
    .venv/bin/python bench/bench_queries.py --smoke                         # 200 trials
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import TrialState, create_trial
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from storage import best_trial_row, create_storage, list_studies, trial_rows
from storage._optuna_compat import models, study_id

STUDY = "bench"
DISTS = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "units": IntDistribution(16, 512, step=16),
    "activation": CategoricalDistribution(["relu", "tanh", "gelu"]),
}
N_FOLDS = 5
N_STEPS = 20


def _trial(rng: random.Random, number: int, epoch0: datetime) -> optuna.trial.FrozenTrial:
    params = {
        "lr": 10 ** rng.uniform(-5, -1),
        "units": rng.randrange(16, 513, 16),
        "activation": rng.choice(["relu", "tanh", "gelu"]),
    }
    folds = [rng.random() for _ in range(N_FOLDS)]
    mean = sum(folds) / N_FOLDS
    std = (sum((f - mean) ** 2 for f in folds) / N_FOLDS) ** 0.5
    epochs = rng.randrange(5, N_STEPS + 1)
    duration = rng.uniform(1, 100)
    attrs: dict[str, Any] = {
        "fold_scores": folds,
        "value_std": std,
        "fold_epochs": [epochs] * N_FOLDS,
        "epochs": epochs,
        "duration_s": duration,
        "node": f"node-{rng.randrange(4)}",
        "device": "cpu",
        "train_path": "stacked",
        "curves": {
            m: [[rng.random() for _ in range(epochs)] for _ in range(N_FOLDS)]
            for m in ("train_loss", "val_loss", "val_accuracy")
        },
    }
    roll = rng.random()
    state = TrialState.COMPLETE if roll < 0.85 else TrialState.PRUNED if roll < 0.95 else TrialState.FAIL
    intermediate = {step: rng.random() for step in range(N_STEPS)}
    value: float | None = mean
    if state == TrialState.PRUNED:
        value = intermediate[N_STEPS - 1]  # what Optuna's tell() records for a pruned trial
    elif state == TrialState.FAIL:
        value, intermediate = None, {}
        attrs["fail_reason"] = "RuntimeError: simulated"
    trial = create_trial(
        state=state,
        value=value,
        params=params,
        distributions=DISTS,
        user_attrs=attrs,
        intermediate_values=intermediate,
    )
    trial.datetime_start = epoch0 + timedelta(seconds=30 * number)
    trial.datetime_complete = trial.datetime_start + timedelta(seconds=duration)
    return trial


def _utc_naive(local: datetime) -> datetime:
    return local.astimezone(timezone.utc).replace(tzinfo=None)


def _bulk_add(engine: Engine, study_id: int, trials: list[optuna.trial.FrozenTrial]) -> None:
    """Insert finished trials with Core ``executemany``, in exactly the rows Optuna's
    ``add_trials`` would write (Optuna's own conversion helpers), but ~100x faster."""
    t, v, p, a, iv = (
        models.TrialModel.__table__,
        models.TrialValueModel.__table__,
        models.TrialParamModel.__table__,
        models.TrialUserAttributeModel.__table__,
        models.TrialIntermediateValueModel.__table__,
    )
    with engine.begin() as conn:
        next_id = (conn.execute(select(func.max(t.c.trial_id))).scalar() or 0) + 1
        number0 = conn.execute(select(func.count()).select_from(t).where(t.c.study_id == study_id)).scalar()
        rows: dict[str, list[dict[str, Any]]] = {"t": [], "v": [], "p": [], "a": [], "iv": []}
        for i, trial in enumerate(trials):
            tid = next_id + i
            rows["t"].append(
                {
                    "trial_id": tid,
                    "number": number0 + i,
                    "study_id": study_id,
                    "state": trial.state,
                    "datetime_start": _utc_naive(trial.datetime_start),  # type: ignore[arg-type]
                    "datetime_complete": _utc_naive(trial.datetime_complete),  # type: ignore[arg-type]
                }
            )
            if trial.value is not None:
                value, value_type = models.TrialValueModel.value_to_stored_repr(trial.value)
                rows["v"].append({"trial_id": tid, "objective": 0, "value": value, "value_type": value_type})
            for name, external in trial.params.items():
                dist = trial.distributions[name]
                rows["p"].append(
                    {
                        "trial_id": tid,
                        "param_name": name,
                        "param_value": dist.to_internal_repr(external),
                        "distribution_json": distribution_to_json(dist),
                    }
                )
            for key, attr in trial.user_attrs.items():
                rows["a"].append({"trial_id": tid, "key": key, "value_json": json.dumps(attr)})
            for step, inter in trial.intermediate_values.items():
                stored, stored_type = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                    inter
                )
                rows["iv"].append(
                    {
                        "trial_id": tid,
                        "step": step,
                        "intermediate_value": stored,
                        "intermediate_value_type": stored_type,
                    }
                )
        for table, key in ((t, "t"), (v, "v"), (p, "p"), (a, "a"), (iv, "iv")):
            if rows[key]:
                conn.execute(table.insert(), rows[key])


def build(path: Path, n_trials: int, *, via_optuna: bool = False, batch: int = 1000) -> float:
    """Create the study at ``path``; return the seconds it took."""
    t0 = time.perf_counter()
    storage = create_storage(f"sqlite:///{path}")
    study = optuna.create_study(storage=storage, study_name=STUDY, direction="maximize")
    study.set_user_attr("hpsearch_spec", {"name": STUDY, "strategy": "tpe", "n_trials": n_trials})
    rng = random.Random(0)
    epoch0 = datetime.now() - timedelta(days=7)
    for lo in range(0, n_trials, batch):
        trials = [_trial(rng, lo + i, epoch0) for i in range(min(batch, n_trials - lo))]
        if via_optuna:
            study.add_trials(trials)
        else:
            _bulk_add(storage.engine, study_id(study), trials)
        if lo == 0:  # Optuna reads back what was written, field by field
            check = optuna.load_study(study_name=STUDY, storage=storage).trials[: len(trials)]
            for mine, theirs in zip(trials, check, strict=True):
                for field in ("state", "value", "params", "user_attrs", "intermediate_values"):
                    assert getattr(mine, field) == getattr(theirs, field), field
    storage.engine.dispose()
    return time.perf_counter() - t0


def timed(fn: Callable[[], Any], repeat: int, *, warmup: bool = True) -> tuple[float, list[float], Any]:
    """Median wall time of ``repeat`` runs (after an optional warm-up run), every time, and the last result."""
    result = fn() if warmup else None
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def bench(path: Path, n_trials: int, repeat: int, baseline_repeat: int) -> dict[str, Any]:
    storage = create_storage(f"sqlite:///{path}", create=False)
    engine = storage.engine
    out: dict[str, Any] = {"n_trials": n_trials}
    t, _, summaries = timed(lambda: list_studies(engine), repeat)
    assert summaries[0].total == n_trials
    out["list_studies_s"] = t
    t, _, rows = timed(lambda: trial_rows(engine, STUDY), repeat)
    assert len(rows) == n_trials
    out["trial_rows_s"] = t
    t, _, _ = timed(lambda: trial_rows(engine, STUDY, order="best", limit=20), repeat)
    out["trial_rows_best20_s"] = t
    t, _, best = timed(lambda: best_trial_row(engine, STUDY), repeat)
    out["best_trial_row_s"] = t

    t, _, summaries_o = timed(
        lambda: optuna.get_all_study_summaries(storage, include_best_trial=True),
        baseline_repeat,
        warmup=False,
    )
    out["optuna_get_all_study_summaries_s"] = t
    t, _, trials = timed(
        lambda: optuna.load_study(study_name=STUDY, storage=storage).trials, baseline_repeat, warmup=False
    )
    assert len(trials) == n_trials
    out["optuna_study_trials_s"] = t
    t, _, best_o = timed(lambda: optuna.load_study(study_name=STUDY, storage=storage).best_trial, repeat)
    out["optuna_best_trial_s"] = t
    assert best is not None and best.value == best_o.value == summaries_o[0].best_trial.value

    out["ratio_trials"] = out["optuna_study_trials_s"] / out["trial_rows_s"]
    out["ratio_best"] = out["optuna_best_trial_s"] / out["best_trial_row_s"]
    out["ratio_list"] = out["optuna_get_all_study_summaries_s"] / out["list_studies_s"]
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--smoke", action="store_true", help="one study of 200 trials, 1 repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--baseline-repeat", type=int, default=1, help="runs of the slow Optuna baselines (no warm-up)"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--via-optuna", action="store_true", help="build with Optuna's add_trials (slow) instead of bulk rows"
    )
    parser.add_argument("--workdir", type=Path, help="keep the SQLite files here (default: a temp dir)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sizes, repeat = ([200], 1) if args.smoke else (args.sizes, args.repeat)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            path = workdir / f"bench_{n}.db"
            build_s = None
            if not path.exists():
                build_s = build(path, n, via_optuna=args.via_optuna)
            r = bench(path, n, repeat, args.baseline_repeat)
            r["build_s"] = build_s
            r["db_mb"] = round(os.path.getsize(path) / 2**20, 1)
            results.append(r)
            print(
                f"n={n:>6}  list_studies {r['list_studies_s']:.3f}s "
                f"(optuna summaries {r['optuna_get_all_study_summaries_s']:.3f}s, x{r['ratio_list']:.1f})  "
                f"trial_rows {r['trial_rows_s']:.3f}s (study.trials {r['optuna_study_trials_s']:.3f}s, "
                f"x{r['ratio_trials']:.1f})  best_trial_row {r['best_trial_row_s'] * 1e3:.1f}ms "
                f"(study.best_trial {r['optuna_best_trial_s'] * 1e3:.1f}ms, x{r['ratio_best']:.1f})  "
                f"best20 {r['trial_rows_best20_s'] * 1e3:.1f}ms"
                + (f"  [built in {build_s:.0f}s, {r['db_mb']} MB]" if build_s else ""),
                flush=True,
            )
    report = {
        "bench": "storage_queries",
        "backend": "sqlite",
        "repeat": repeat,
        "baseline_repeat": args.baseline_repeat,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
