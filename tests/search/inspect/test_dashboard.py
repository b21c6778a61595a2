"""``hpsearch dashboard``: optuna-dashboard in a real headless Chromium, next to a running study, and
its safety checks (non-local bind warning, port in use)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import click
import optuna
import pytest
from click.testing import CliRunner

import storage as st
from search import LocalBackend, UsageError, run_study
from search.cli import main as cli_main
from search.inspect import DashboardServer, start_dashboard

from .. import fakes
from ..studies import build_study

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=10000",
]


def hpsearch() -> click.Group:
    return click.Group("hpsearch", commands=dict(cli_main.commands))


def chromium() -> str:
    """Path of a Chromium binary; skips (fails when ``CI`` is set) when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    reason = "Chromium is not installed (apt-get install -y chromium); the browser test cannot run"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def get_json(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, json.loads(r.read())


@pytest.mark.slow
def test_dashboard_renders_study_in_headless_chromium(sqlite_url: str, tmp_path: Path) -> None:
    browser = chromium()
    name = "dash-e2e study"
    build_study(sqlite_url, name)
    with start_dashboard(sqlite_url, port=0) as server:
        status, studies = get_json(f"{server.url}/api/studies")
        assert status == 200
        (study_id,) = [s["study_id"] for s in studies["study_summaries"] if s["study_name"] == name]
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard_study.png"
        shot.unlink(missing_ok=True)
        page = f"{server.url}/dashboard/studies/{study_id}"
        profile = f"--user-data-dir={tmp_path / 'chromium'}"
        base = [browser, *CHROMIUM_FLAGS, profile, "--window-size=1280,900"]
        proc = subprocess.run([*base, f"--screenshot={shot}", "--dump-dom", page],
                              capture_output=True, text=True, timeout=180)
        if proc.returncode == 0 and not shot.exists():  # older headless modes do one of the two per run
            subprocess.run([*base, f"--screenshot={shot}", page], capture_output=True, timeout=180,
                           check=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    # index.html is an empty shell: these only appear once the JS app fetched and rendered the study
    assert name in dom, dom[:2000]
    assert "Best Trial" in dom
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_api_answers_while_a_study_runs(make_spec, sqlite_url: str, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_EPOCH_S", "0.05")
    st.create_storage(sqlite_url).engine.dispose()  # empty storage: the dashboard starts before the study
    spec = make_spec(name="live", n_trials=8, training={"max_epochs": 5})
    answers: list[int] = []
    seen_running = []
    stop = threading.Event()

    def poll(base: str) -> None:
        study_id = None
        while not stop.is_set():
            status, body = get_json(f"{base}/api/studies")
            answers.append(status)
            ids = [s["study_id"] for s in body["study_summaries"] if s["study_name"] == "live"]
            study_id = ids[0] if ids else study_id
            if study_id is not None:
                status, detail = get_json(f"{base}/api/studies/{study_id}")
                answers.append(status)
                states = [t["state"] for t in detail["trials"]]
                if states.count("Complete") < 8:
                    seen_running.append(len(states))
            time.sleep(0.02)

    with start_dashboard(sqlite_url, port=0) as server:
        poller = threading.Thread(target=poll, args=(server.url,), daemon=True)
        poller.start()
        try:
            result = run_study(spec, storage=sqlite_url, backend=LocalBackend(2), worker_fn=fakes.quadratic)
        finally:
            stop.set()
            poller.join(timeout=60)
        # optuna-dashboard caches a study's trials for 2 s: wait for it to see the end of the run
        deadline = time.monotonic() + 30
        while True:
            status, detail = get_json(f"{server.url}/api/studies/1")
            states = [t["state"] for t in detail["trials"]]
            if states == ["Complete"] * 8 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    study = optuna.load_study(study_name="live", storage=st.create_storage(sqlite_url))
    assert {t.state.name for t in study.trials} == {"COMPLETE"} and len(study.trials) == 8
    assert result.done == 8
    assert answers and set(answers) == {200}  # urlopen raises on any other status
    assert seen_running, "the dashboard was never read while the study was running"
    assert status == 200 and states == ["Complete"] * 8


def test_non_local_host_warns_no_authentication(demo_url: str, capsys) -> None:
    with start_dashboard(demo_url, host="0.0.0.0", port=0) as server:
        assert get_json(f"http://127.0.0.1:{server.port}/api/meta")[0] == 200
    err = capsys.readouterr().err
    assert "no authentication" in err and "modify and delete" in err

    with start_dashboard(demo_url, port=0):
        pass
    assert capsys.readouterr().err == ""


def test_cli_dashboard_warns_and_serves(demo_url: str, monkeypatch) -> None:
    served: list[DashboardServer] = []
    monkeypatch.setattr(DashboardServer, "serve_forever", lambda self: served.append(self) or self._close())
    args = ["dashboard", "--storage", demo_url, "--host", "0.0.0.0", "--port", "0"]
    res = CliRunner().invoke(hpsearch(), args)
    assert res.exit_code == 0, res.output
    assert "no authentication" in res.stderr and "/dashboard" in res.stderr
    assert served and served[0].host == "0.0.0.0"
    res = CliRunner().invoke(hpsearch(), ["dashboard", "--storage", demo_url, "--port", "0"])
    assert res.exit_code == 0 and "no authentication" not in res.stderr


def test_port_in_use_is_a_clear_error(demo_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        message = f"port {port} on 127.0.0.1 is in use; pick another with --port"
        with pytest.raises(UsageError, match=message):
            start_dashboard(demo_url, port=port)
        res = CliRunner().invoke(hpsearch(), ["dashboard", "--storage", demo_url, "--port", str(port)])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"hpsearch: error: {message}"


def test_missing_storage_is_a_storage_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(hpsearch(), ["dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}",
                                          "--port", "0"])
    assert res.exit_code == 3 and "does not exist" in res.stderr
    assert not (tmp_path / "none.db").exists()


@pytest.fixture
def demo_url(sqlite_url: str) -> str:
    build_study(sqlite_url, "demo", n_complete=3, n_fail=0, n_pruned=0)
    return sqlite_url
