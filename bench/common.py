"""Helpers shared by the benchmarks: machine description, JSON output, Ray start-up, worker functions.

The worker functions here have the signature of :class:`search.backends.WorkerFn` and are defined at
module level in the ``bench`` package, so a Ray worker unpickles them by reference (``bench.common``)
and must be able to import ``bench``. Ray adds the driver's working directory at ``ray.init`` (and
the script's directory) to its workers' ``sys.path``; :func:`ray_init` starts Ray from the
repository root so that this holds wherever a benchmark is started, and :func:`worker_probe` checks
it on a real worker (its answer is stored in the results).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# The default search space (issue 7): lr log-uniform, dropout uniform, batch size categorical.
DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
}
# hpsearch's TPE defaults (search/_strategies.py), used for every baseline that samples with TPE.
TPE_KWARGS: dict[str, Any] = {"n_startup_trials": 10, "multivariate": True, "constant_liar": True}
SLEEP_S = 0.2


# ----------------------------------------------------------------------------------- reporting


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the repository (None without git)."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:
        return None


def machine_info() -> dict[str, Any]:
    """Where and when a benchmark ran (absolute times are only comparable on the same machine)."""
    return {
        "date": now_iso(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": _version("torch"),
        "optuna": _version("optuna"),
        "ray": _version("ray"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def report_header(bench: str, smoke: bool, argv: Sequence[str] | None = None) -> dict[str, Any]:
    cmd = " ".join([".venv/bin/python", "-m", f"bench.{bench}" if not bench.startswith("bench.") else bench,
                    *(sys.argv[1:] if argv is None else argv)])
    return {"bench": bench, "smoke": smoke, "command": cmd, "machine": machine_info()}


def write_json(out: Path | None, name: str, payload: dict[str, Any]) -> Path | None:
    """Write ``payload`` as ``out/name.json`` (non-finite floats become null)."""
    if out is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(_finite(payload), indent=2, sort_keys=False) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def stats(values: Iterable[float]) -> dict[str, float | int | None]:
    """mean, std (ddof=0), min, median, max and n of ``values``."""
    xs = [float(x) for x in values]
    if not xs:
        return {"n": 0, "mean": None, "std": None, "min": None, "median": None, "max": None}
    return {
        "n": len(xs),
        "mean": statistics.fmean(xs),
        "std": statistics.pstdev(xs),
        "min": min(xs),
        "median": statistics.median(xs),
        "max": max(xs),
    }


def wait_for_quiet(max_load: float = 1.5, max_wait_s: float = 0.0) -> float:
    """Wait (up to ``max_wait_s``) for the 1-minute load average to drop below ``max_load``."""
    t0 = time.monotonic()
    while os.getloadavg()[0] >= max_load and time.monotonic() - t0 < max_wait_s:
        time.sleep(5)
    return os.getloadavg()[0]


# ----------------------------------------------------------------------------------------- Ray


_RAY_STARTED_HERE = False


def ray_init(num_cpus: int = 2) -> float | None:
    """Start a fresh local Ray like :class:`search.RayBackend` does; return the seconds it took.

    A backend opened while this Ray runs uses it and leaves it running (it only shuts down a Ray it
    started itself), so one start-up serves several measured runs. If Ray is already running (the
    smoke runner shares one Ray between benchmarks), nothing is started and ``None`` is returned.
    """
    import logging

    import ray

    global _RAY_STARTED_HERE
    if ray.is_initialized():
        return None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray puts the driver's working directory (at init) on its workers' sys.path: make that the
    # repository root so workers can import ``bench`` wherever the benchmark was started from.
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=256 * 1024 * 1024,
                 include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    finally:
        os.chdir(cwd)
    _RAY_STARTED_HERE = True
    return time.perf_counter() - t0


def ray_shutdown(force: bool = False) -> None:
    """Stop the Ray that :func:`ray_init` started (any Ray with ``force``)."""
    import ray

    global _RAY_STARTED_HERE
    if ray.is_initialized() and (_RAY_STARTED_HERE or force):
        ray.shutdown()
        _RAY_STARTED_HERE = False


def _probe() -> dict[str, Any]:
    import importlib.util

    spec = importlib.util.find_spec("bench.common")
    return {"cwd": os.getcwd(), "bench_common": spec.origin if spec else None, "pid": os.getpid(),
            "sys_path_has_repo": str(REPO) in sys.path}


def worker_probe() -> dict[str, Any]:
    """Run a task on a Ray worker that imports ``bench.common``: where it runs and what it imported."""
    import ray

    out = ray.get(ray.remote(num_cpus=1)(_probe).remote())
    out["driver_cwd"] = os.getcwd()
    out["imports_this_repo"] = out["bench_common"] == str(Path(__file__).resolve())
    if not out["imports_this_repo"]:
        raise RuntimeError(f"Ray workers cannot import bench.common from this repository: {out}; run the "
                           "benchmarks from the repository root")
    return out


# ------------------------------------------------------------------------------------- workers


def score_of(params: dict[str, Any]) -> float:
    """A deterministic accuracy-like score of a configuration, best at lr=0.01 (for TPE to chase)."""
    lr = float(params.get("lr", 0.01))
    return max(0.05, 1.0 - (math.log10(lr) + 2.0) ** 2 / 4.0) - 0.05 * float(params.get("dropout", 0.0))


def _result(settings: Any, params: dict[str, Any], epochs: int, t0: float, path: str, stopped: bool = False) -> Any:
    from trials import FoldResult, TrialResult

    s = score_of(params)
    k = settings.cv.folds
    return TrialResult(
        folds=tuple(FoldResult(i, epochs, epochs, 1.0 - s, s) for i in range(k)),
        curves={"val_accuracy": [[s] * epochs for _ in range(k)]},
        epochs_run=epochs,
        duration_s=time.monotonic() - t0,
        device="cpu",
        train_path=path,
        stopped_by_report=stopped,
    )


def sleep_worker(data: Any, settings: Any, job: Any, report: Callable[[Any], bool]) -> Any:
    """The fixed short objective of the overhead benchmark: sleep ``SLEEP_S`` (0.2 s), no reports."""
    t0 = time.monotonic()
    time.sleep(SLEEP_S)
    return _result(settings, job.params, 1, t0, "sleep")


@dataclass(frozen=True)
class SleepWorker:
    """Sleep ``epochs x epoch_s`` seconds, reporting after each epoch like a real trial."""

    epochs: int = 10
    epoch_s: float = 0.1

    def __call__(self, data: Any, settings: Any, job: Any, report: Callable[[Any], bool]) -> Any:
        from trials import EpochReport, MemberReport

        t0 = time.monotonic()
        s = score_of(job.params)
        for e in range(1, self.epochs + 1):
            time.sleep(self.epoch_s)
            if report(EpochReport(e, tuple(MemberReport(i, 1 - s, 1 - s, s, False)
                                           for i in range(settings.cv.folds)))):
                return _result(settings, job.params, e, t0, "sleep", stopped=True)
        return _result(settings, job.params, self.epochs, t0, "sleep")


def busy_work(iters: int, n: int = 192) -> float:
    """``iters`` float32 ``n x n`` matrix products on one thread: a fixed amount of CPU work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.rand(n, n, generator=g)
        b = torch.rand(n, n, generator=g) / n
        for _ in range(iters):
            a = torch.tanh(a @ b)
        return float(a[0, 0])
    finally:
        torch.set_num_threads(before)


def calibrate_busy(target_s: float = 0.1, n: int = 192) -> int:
    """Iterations of :func:`busy_work` that take about ``target_s`` seconds on one idle core."""
    busy_work(50, n)  # warm-up
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        busy_work(200, n)
        best = min(best, (time.perf_counter() - t0) / 200)
    return max(1, round(target_s / best))


@dataclass(frozen=True)
class BusyWorker:
    """CPU-bound trial: ``epochs`` epochs of ``iters_per_epoch`` matrix products, one report per epoch."""

    epochs: int = 10
    iters_per_epoch: int = 100

    def __call__(self, data: Any, settings: Any, job: Any, report: Callable[[Any], bool]) -> Any:
        from trials import EpochReport, MemberReport

        t0 = time.monotonic()
        s = score_of(job.params)
        for e in range(1, self.epochs + 1):
            busy_work(self.iters_per_epoch)
            if report(EpochReport(e, tuple(MemberReport(i, 1 - s, 1 - s, s, False)
                                           for i in range(settings.cv.folds)))):
                return _result(settings, job.params, e, t0, "busy", stopped=True)
        return _result(settings, job.params, self.epochs, t0, "busy")


# ------------------------------------------------------------------------------------ studies


def spec_dict(name: str, *, strategy: str = "tpe", n_trials: int | None, seed: int = 0,
              space: dict[str, Any] | None = None, folds: int = 3, max_epochs: int = 20, patience: int = 3,
              hidden: Sequence[int] = (128, 128), max_concurrent: int | None = None) -> dict[str, Any]:
    """A study spec on digits with the benchmarks' defaults (3 folds, 20 epochs, patience 3)."""
    spec: dict[str, Any] = {
        "name": name,
        "strategy": strategy,
        "seed": seed,
        "space": space or DEFAULT_SPACE,
        "data": {"source": "digits"},
        "model": {"hidden": list(hidden)},
        "training": {"max_epochs": max_epochs, "patience": patience},
        "cv": {"folds": folds},
        "resources": {"cpus_per_trial": 1, "max_concurrent": max_concurrent},
    }
    if n_trials is not None:
        spec["n_trials"] = n_trials
    return spec


def trials_of(storage_url: str, name: str) -> list[Any]:
    """The study's trials (FrozenTrial), in number order."""
    import optuna

    return optuna.load_study(study_name=name, storage=storage_url).get_trials(deepcopy=False)
