"""``hpsearch serve``: submit to first trial running (warm vs the cold CLI), API latency, fair share.

Usage::

    .venv/bin/python -m bench.bench_service [--smoke] [--out DIR]

In one run, on a local Ray of 2 CPUs and a SQLite file:

1. **Cold CLI**: ``hpsearch run FILE`` as a subprocess, from its start to the first trial
   RUNNING in the database (Python and torch imports, Ray start-up, data, the first dispatch).
2. **Warm server**: ``search.service.serve`` in a subprocess, as ``hpsearch serve`` runs it (its API
   in that process, the studies, their orchestrators and Ray in the process it forks), after a first
   study warmed its workers: from ``POST /studies`` to the first trial RUNNING. Then (not with
   ``--smoke``) 2-4 again with everything in this one process (a :class:`search.service.Server` and its API on uvicorn
   threads), the layout before the studies had a process of their own.
3. **API latency**: 50 concurrent clients (threads of another process, one keep-alive connection
   each) polling ``GET /studies/{name}`` while two studies run in the server, back to back (the
   server saturated) and each every 0.5 s (as ``hpsearch watch`` asks): p50 and p99. In the
   one-process layout, measured on two APIs of the same server, interleaved: the default (bodies
   cached for 0.25 s) and ``cache_s=0`` (every request reads the database).
4. **Fair share**: those two studies, submitted at once with ``--slots 2``: each one's share of the
   trial-seconds run while both ran.

Trials sleep (``bench.common.SleepWorker``), so the numbers are the service's, not training's.
Goals: warm submit-to-running under 0.5 s; p99 under 100 ms; shares near one half each.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, SleepWorker, ray_init, ray_shutdown, report_header, spec_dict, stats, write_json

WARM_GOAL_S = 0.5
P99_GOAL_MS = 100.0
CLIENTS = 50
POLL_S = 0.5  # how often `hpsearch watch` asks (search.service.Client.events)


def _running(url: str, name: str) -> bool:
    import storage as st

    try:
        engine = st.create_engine(url, create=False)
    except st.StorageError:  # not created yet
        return False
    try:
        s = next((s for s in st.list_studies(engine) if s.name == name), None)
        return s is not None and (s.n_trials.get("RUNNING", 0) + s.n_trials.get("COMPLETE", 0)) > 0
    except Exception:
        return False
    finally:
        engine.dispose()


def _wait(cond: Any, timeout: float, what: str, step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def cold_cli(tmp: Path) -> float:
    """Seconds from ``hpsearch run`` starting to its first trial RUNNING."""
    url = f"sqlite:///{tmp}/cold.db"
    spec = spec_dict("cold", n_trials=1, folds=2, max_epochs=2, hidden=(32,))
    path = tmp / "cold.yaml"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", "from search.cli import main; main()", "run", str(path), "--storage", url, "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: proc.poll() is not None or _running(url, "cold"), 180, "the CLI's first trial", 0.01)
        took = time.perf_counter() - t0
        if proc.poll() is not None and proc.returncode != 0:
            raise RuntimeError(f"hpsearch run failed: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return took


def _post(base: str, body: dict[str, Any]) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(base + "/studies", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _poller(port: int, name: str, n: int, every_s: float, out: list[float], errors: list[str],
            start: threading.Barrier) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        start.wait()
        for i in range(n):
            if every_s and i:
                time.sleep(every_s)
            t = time.perf_counter()
            conn.request("GET", f"/studies/{name}")
            r = conn.getresponse()
            r.read()
            out.append(time.perf_counter() - t)
            if r.status != 200:
                errors.append(f"HTTP {r.status}")
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def _latency(port: int, per_client: int, every_s: float) -> dict[str, Any]:
    """:func:`_clients` in a process of its own (the clients' threads do not share the server's
    interpreter: they did in the first version of this benchmark)."""
    cmd = [sys.executable, "-c", "import sys; from bench.bench_service import _clients_main; _clients_main()",
           str(port), str(per_client), str(every_s)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"the clients' process failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


_SEQUENTIAL = """
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
for _ in range(int(sys.argv[2])):
    c.request("GET", "/studies/" + sys.argv[3])
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
"""


def _cpu_per_request(port: int, name: str, n: int, cpu: Any) -> dict[str, Any]:
    """The API process's CPU time (``cpu()``, seconds) per ``GET /studies/NAME``, one client (another
    process) asking ``n`` times back to back: the cost of a request, which the machine's load does not
    inflate as it does latencies (the server is idle otherwise: no study runs)."""
    c0, t0 = cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", _SEQUENTIAL, str(port), str(n), name], check=True, timeout=600)
    return {"requests": n, "cpu_ms_per_request": (cpu() - c0) / n * 1e3,
            "wall_ms_per_request": (time.perf_counter() - t0) / n * 1e3}


def _clients_main() -> None:
    port, per_client, every_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(_clients(port, per_client, every_s)))


def _clients(port: int, per_client: int, every_s: float) -> dict[str, Any]:
    """:data:`CLIENTS` threads, each ``per_client`` requests ``every_s`` apart (0: back to back)."""
    lat: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(CLIENTS)
    threads = [threading.Thread(target=_poller, args=(port, ("share_a", "share_b")[i % 2], per_client, every_s, lat,
                                                      errors, barrier)) for i in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat_ms = sorted(x * 1e3 for x in lat)
    return {"clients": CLIENTS, "every_s": every_s, "requests": len(lat_ms), "errors": errors[:5],
            "n_errors": len(errors), "requests_per_s": len(lat_ms) / wall if wall else None,
            "p50_ms": statistics.median(lat_ms) if lat_ms else None,
            "p99_ms": lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))] if lat_ms else None,
            "max_ms": lat_ms[-1] if lat_ms else None}


def _busy_seconds(url: str, name: str, lo: float, hi: float) -> float:
    """Trial-seconds of study ``name`` inside the wall-clock window [lo, hi] (Unix seconds)."""
    from datetime import timezone

    from bench.common import trials_of

    total = 0.0
    for t in trials_of(url, name):
        if t.datetime_start is None:
            continue
        a = t.datetime_start.replace(tzinfo=timezone.utc).timestamp() if t.datetime_start.tzinfo is None \
            else t.datetime_start.timestamp()
        end = t.datetime_complete
        b = (end.replace(tzinfo=timezone.utc).timestamp() if end is not None and end.tzinfo is None
             else end.timestamp() if end is not None else hi)
        total += max(0.0, min(b, hi) - max(a, lo))
    return total


@dataclass(frozen=True)
class _Worker:
    """:class:`bench.common.SleepWorker` for trials; the final refit (which the server always runs)
    answers at once with the trial's score."""

    epochs: int = 5
    epoch_s: float = 0.2

    def __call__(self, data: Any, settings: Any, job: Any, report: Any) -> Any:
        if job.kind == "refit":
            from bench.common import score_of
            from trials import TestResult

            s = score_of(job.params)
            return TestResult(test_accuracy=s, test_loss=1 - s, best_epoch=1, epochs_run=1, duration_s=0.0)
        return SleepWorker(self.epochs, self.epoch_s)(data, settings, job, report)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _no_cache() -> dict[str, Any]:
    """``create_app``'s argument that turns its body cache off (none before the cache existed:
    this benchmark also measured the code before it, with the same clients)."""
    import inspect

    from search.service import create_app

    return {"cache_s": 0.0} if "cache_s" in inspect.signature(create_app).parameters else {}


def _freeze_startup_heap() -> None:
    try:
        from search.service._serve import freeze_startup_heap
    except ImportError:  # the code before it existed (this benchmark measured that too)
        return
    freeze_startup_heap()


class _InProcess:
    """The server and its API in this process (``Server`` + ``create_app`` on uvicorn threads), and
    the same server's API without the body cache on a second port: everything in one interpreter."""

    def __init__(self, tmp: Path) -> None:
        import uvicorn

        from search.service import Server, create_app

        self.url = f"sqlite:///{tmp}/serve.db"
        ray_init(num_cpus=2)
        self.server = Server(self.url, slots=2, worker_fn=_Worker(epochs=5, epoch_s=0.2), poll_s=0.05).open()
        self.port, self.port_nocache = _free_port(), _free_port()
        self.userver = uvicorn.Server(uvicorn.Config(create_app(self.server), host="127.0.0.1", port=self.port,
                                                     log_level="warning", access_log=False))
        # the same server's API without the body cache: what every request costs when it reads the database
        self.nocache = uvicorn.Server(uvicorn.Config(create_app(self.server, **_no_cache()), host="127.0.0.1",
                                                     port=self.port_nocache, log_level="warning", access_log=False))
        self.threads = [threading.Thread(target=u.run, daemon=True) for u in (self.userver, self.nocache)]
        for thread in self.threads:
            thread.start()
        _wait(lambda: self.userver.started and self.nocache.started, 60, "uvicorn")
        _freeze_startup_heap()  # as `hpsearch serve` does before it starts the scheduler
        self.server.start()

    def idle(self) -> bool:
        return self.server.wait_idle(0.01)

    def cancel(self, name: str) -> None:
        self.server.cancel(name)

    def cpu_s(self) -> float:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def close(self) -> None:
        for u in (self.userver, self.nocache):
            u.should_exit = True
        for thread in self.threads:
            thread.join(30)
        self.server.close()
        ray_shutdown()


_SERVE = """
import sys
from bench.bench_service import _Worker
from search.service import Server, serve
serve(Server(sys.argv[1], slots=2, worker_fn=_Worker(epochs=5, epoch_s=0.2), poll_s=0.05), port=int(sys.argv[2]))
"""


class _Split:
    """``search.service.serve`` in a subprocess, as ``hpsearch serve`` runs: its API in that process,
    the studies (scheduler, orchestrators, Ray) in the process it forks."""

    port_nocache = None

    def __init__(self, tmp: Path) -> None:
        self.url = f"sqlite:///{tmp}/split.db"
        self.port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE, self.url, str(self.port)], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait(lambda: self.proc.poll() is not None or self._up(), 300, "hpsearch serve", 0.1)
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve failed: {self.proc.stderr.read()[-2000:] if self.proc.stderr else ''}")

    def _up(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/studies")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def idle(self) -> bool:
        import storage as st

        engine = st.create_engine(self.url)
        try:
            return not st.queue_rows(engine, st.ACTIVE_STATES)
        finally:
            engine.dispose()

    def cancel(self, name: str) -> None:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/studies/{name}/cancel", data=b"", method="POST")
        urllib.request.urlopen(req, timeout=60).read()

    def cpu_s(self) -> float:
        """The API process's CPU seconds (its runner is another process)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def warm_server(tmp: Path, smoke: bool, split: bool = False) -> dict[str, Any]:
    """Warm submits, CPU per request, latency and shares of one server: ``split`` as ``hpsearch serve``
    runs (:class:`_Split`), else everything in this process (:class:`_InProcess`)."""
    srv: Any = _Split(tmp) if split else _InProcess(tmp)
    url, port = srv.url, srv.port
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    try:
        _post(base, {"study_file": json.dumps(spec_dict("warmup", n_trials=2, folds=2, max_epochs=2))})
        _wait(srv.idle, 300, "the warm-up study", 0.01)
        samples = []
        for i in range(1 if smoke else 5):
            name = f"warm{i}"
            t0 = time.perf_counter()
            _post(base, {"study_file": json.dumps(spec_dict(name, n_trials=1, folds=2, max_epochs=2))})
            _wait(lambda n=name: _running(url, n), 120, "the first trial")
            samples.append(time.perf_counter() - t0)
            _wait(srv.idle, 300, name, 0.01)
        out["warm_submit_to_running_s"] = stats(samples)
        out["warm_samples_s"] = samples
        n_seq = 200 if smoke else 1000
        if srv.port_nocache is not None:
            out["cpu_per_request_nocache"] = _cpu_per_request(srv.port_nocache, "warm0", n_seq, srv.cpu_s)
        out["cpu_per_request"] = _cpu_per_request(port, "warm0", n_seq, srv.cpu_s)

        # two studies at once, long enough to outlast the polling
        n_trials = 8 if smoke else 120
        for name in ("share_a", "share_b"):
            _post(base, {"study_file": json.dumps(spec_dict(name, n_trials=n_trials, folds=2, max_epochs=2))})
        _wait(lambda: _running(url, "share_a") and _running(url, "share_b"), 120, "both studies running")
        lo = time.time()
        per_client = 5 if smoke else 40
        rounds = 1 if smoke else 2
        apis = [("api", port)] + ([("api_nocache", srv.port_nocache)] if srv.port_nocache is not None else [])
        runs: dict[str, list[dict[str, Any]]] = {k + w: [] for k, _ in apis for w in ("", "_watch_rate")}
        for _ in range(rounds):  # interleaved: both APIs see the same load of the machine
            for key, p in reversed(apis):
                runs[key].append(_latency(p, per_client, 0.0))  # back to back: the server saturated
                # each client as often as `hpsearch watch` asks
                runs[key + "_watch_rate"].append(_latency(p, per_client // 2 or 1, POLL_S))
        for key, samples in runs.items():  # the round with the worse p99 (the claim is about the tail)
            out[key] = max(samples, key=lambda r: r["p99_ms"] or 0.0)
            out[key + "_rounds"] = samples
        if not smoke:  # let the shares settle over more trials than the polling took
            time.sleep(max(0.0, 20.0 - (time.time() - lo)))
        hi = time.time()
        busy = {n: _busy_seconds(url, n, lo, hi) for n in ("share_a", "share_b")}
        total = sum(busy.values()) or 1.0
        out["shares"] = {"window_s": hi - lo, "busy_s": busy, "share": {n: b / total for n, b in busy.items()},
                         "slots_used": total / (hi - lo)}
        for name in ("share_a", "share_b"):
            srv.cancel(name)
    finally:
        srv.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="1 warm sample, 5 polls per client, no cold CLI run")
    p.add_argument("--out", type=Path, help="write service.json into this directory")
    args = p.parse_args(argv)
    report = report_header("bench_service", args.smoke, argv)
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        cold = None if args.smoke else cold_cli(Path(tmp))
        if cold is not None:
            print(f"cold CLI: run to first trial running {cold:.2f} s")
        report["cold_cli_to_running_s"] = cold
        # as `hpsearch serve` runs (the studies in a process of their own), then all in one process (not in
        # a smoke run: CI's time; the one-process server is what the service's tests run)
        report.update(warm_server(Path(tmp), args.smoke, split=True))
        one = None if args.smoke else warm_server(Path(tmp), args.smoke)
        report["one_process"] = one
    warm = report["warm_submit_to_running_s"]["median"]
    api, paced, shares = report["api"], report["api_watch_rate"], report["shares"]
    cpu = report["cpu_per_request"]
    print(f"API process CPU per GET /studies/NAME (one client, no study running): {cpu['cpu_ms_per_request']:.2f} ms"
          + ("" if one is None else f"; all in one process {one['cpu_per_request']['cpu_ms_per_request']:.2f} ms, "
             f"without the body cache {one['cpu_per_request_nocache']['cpu_ms_per_request']:.2f} ms"))
    print(f"warm server: POST /studies to first trial running, median {warm:.3f} s"
          + (f" ({cold / warm:.0f}x faster than the cold CLI)" if cold else "")
          + ("" if one is None else f"; all in one process {one['warm_submit_to_running_s']['median']:.3f} s"))
    layouts = [("hpsearch serve (studies in their own process)", api, paced)]
    if one is not None:
        layouts += [("all in one process", one["api"], one["api_watch_rate"]),
                    ("all in one process, without the body cache", one["api_nocache"], one["api_nocache_watch_rate"])]
    for label, r, w in layouts:
        print(f"API, {label}: {r['requests']} GET /studies/NAME from {CLIENTS} clients while two studies run: "
              f"back to back p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms ({r['requests_per_s']:.0f}/s); "
              f"each every {POLL_S:g} s p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms; "
              f"{r['n_errors'] + w['n_errors']} errors")
    if one is not None:
        print(f"p99 ratio serve / one process: back to back {api['p99_ms'] / one['api']['p99_ms']:.2f}, "
              f"every {POLL_S:g} s {paced['p99_ms'] / one['api_watch_rate']['p99_ms']:.2f}")
    print("fair share over {:.1f} s: ".format(shares["window_s"])
          + ", ".join(f"{n} {s:.2f}" for n, s in shares["share"].items())
          + f" ({shares['slots_used']:.2f} of 2 slots busy)")
    report["goals"] = [
        {"goal": f"warm submit to first trial running under {WARM_GOAL_S:g} s", "value": warm,
         "met": warm < WARM_GOAL_S},
        {"goal": f"API p99 under {P99_GOAL_MS:g} ms with {CLIENTS} clients polling back to back while two studies run",
         "value": api["p99_ms"], "met": api["p99_ms"] is not None and api["p99_ms"] < P99_GOAL_MS},
        {"goal": f"API p99 under {P99_GOAL_MS:g} ms with {CLIENTS} clients polling every {POLL_S:g} s (watch's rate)",
         "value": paced["p99_ms"], "met": paced["p99_ms"] is not None and paced["p99_ms"] < P99_GOAL_MS},
        {"goal": "two studies at once on 2 slots get about half each (0.4-0.6)",
         "value": min(shares["share"].values()), "met": all(0.4 <= s <= 0.6 for s in shares["share"].values())},
    ]
    for g in report["goals"]:
        print(f"goal: {g['goal']}: {g['value']} -> {'met' if g['met'] else 'MISSED'}")
    write_json(args.out, "service", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
