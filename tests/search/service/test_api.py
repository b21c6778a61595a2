"""The HTTP API and the CLI client against real uvicorn on 127.0.0.1 (studies on in-process backends)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import storage as st
from search.cli import main
from search.inspect import best_of, show_study
from search.service import Client, Refused
from tests.search.resume_checks import GRID_POINTS, check_invariants, fake_spec, trials_of


def hpsearch(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_submit_watch_complete_and_best_matches_the_local_best(url: str, tmp_path: Path, make_server,
                                                              serve_api) -> None:
    server = make_server(url, slots=2)
    base = serve_api(server)
    study = tmp_path / "a.yaml"
    study.write_text(yaml.safe_dump(fake_spec("grid", "a")))
    env = {"HPSEARCH_SERVER": base, "HPSEARCH_TOKEN": ""}
    out = hpsearch("submit", str(study), "-o", "json", env=env)
    assert out.exit_code == 0, out.output
    submitted = json.loads(out.stdout)
    assert submitted["name"] == "a" and submitted["state"] in ("queued", "running") and submitted["budget"] == 6
    watched = hpsearch("watch", "a", "-o", "json", env=env)
    assert watched.exit_code == 0, watched.output
    final = json.loads(watched.stdout)
    assert final["state"] == "done" and final["done"] == 6
    assert final["best"] == best_of("a", url)  # the local `hpsearch best a -o json`
    local = hpsearch("best", "a", "--storage", url, "-o", "json")
    assert json.loads(local.stdout) == final["best"]
    assert Client(base).trials("a") == json.loads(json.dumps(show_study("a", url)))
    listed = json.loads(hpsearch("ls", "-o", "json", env=env).stdout)["studies"]
    local_ls = json.loads(hpsearch("ls", "--storage", url, "-o", "json").stdout)["studies"]
    assert [{k: s[k] for k in local_ls[0]} for s in listed] == local_ls  # the same keys, and more
    assert listed[0]["state"] == "done" and listed[0]["owner"] is None
    check_invariants(trials_of(url, "a"), budget=6, seed=3, grid=GRID_POINTS)


def test_bad_study_files_get_the_cli_messages(sqlite_url: str, tmp_path: Path, make_server, serve_api) -> None:
    base = serve_api(make_server(sqlite_url))
    files = {
        "bad.yaml": "name: x\nstrategy: foo\nn_trials: 3\nspace: {}\n",
        "dup.yaml": "name: x\nname: y\n",
        "syntax.yaml": "name: [x\n",
        "data.yaml": yaml.safe_dump(fake_spec("grid", "d", data={"source": "csv", "path": str(tmp_path / "no.csv"),
                                                                  "target": "y"})),
    }
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        run = CliRunner().invoke(main, ["run", str(path), "--storage", f"sqlite:///{tmp_path}/local.db"])
        submit = CliRunner().invoke(main, ["submit", str(path), "--server", base])
        assert run.exit_code == submit.exit_code == 2, (name, run.output, submit.output)
        assert submit.stderr == run.stderr and submit.stderr.startswith("hpsearch: error: "), name
    with pytest.raises(Refused) as e:
        Client(base).submit("n_trials: 0\n")
    assert e.value.status == 400 and "name" in e.value.detail
    req = urllib.request.Request(base + "/studies", data=b'{"priority": 0}', method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req)
    body = json.loads(http.value.read())
    assert http.value.code == 422 and body["detail"].startswith("invalid request: ")
    assert "study_file: Field required" in body["detail"] and "priority:" in body["detail"]


def test_tokens_missing_wrong_and_another_users_study(sqlite_url: str, tmp_path: Path, make_server,
                                                      serve_api) -> None:
    server = make_server(sqlite_url)
    ann = st.create_token(server.engine, "ann")
    bob = st.create_token(server.engine, "bob")
    root = st.create_token(server.engine, "root", admin=True)
    base = serve_api(server, require_token=True)
    text = json.dumps(fake_spec("tpe", "t", n_trials=60, training={"max_epochs": 20}))
    for path in ("/studies", "/studies/t", "/openapi.json"):
        for token in (None, "hps_wrong", ann + "x"):
            with pytest.raises(Refused) as e:
                Client(base, token)._json("GET", path)
            assert e.value.status == 401 and "token" in e.value.detail, (path, token)
    basic = urllib.request.Request(base + "/studies", headers={"Authorization": "Basic YTpi"})
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(basic)
    assert http.value.code == 401
    assert Client(base, ann).submit(text)["owner"] == "ann"
    with pytest.raises(Refused) as e:
        Client(base, bob).cancel("t")
    assert e.value.status == 403 and e.value.detail == ("study 't' belongs to ann; only its owner or an admin "
                                                        "token may cancel it")
    out = CliRunner().invoke(main, ["cancel", "t", "--server", base, "--token", bob])
    assert out.exit_code == 2 and out.stderr.startswith("hpsearch: error: study 't' belongs to ann")
    cancelled = Client(base, root).cancel("t")
    assert cancelled["state"] == "cancelled" and cancelled["message"] == "cancelled by root"
    assert "paths" in Client(base, bob)._json("GET", "/openapi.json")
    for secret in (ann, bob, root):  # never in a response, nor in a study attribute
        assert secret not in json.dumps(Client(base, root).studies())
        assert secret not in json.dumps(st.study_attrs(server.engine, "t"))


def test_serve_beyond_loopback_refuses_to_start_without_a_token(sqlite_url: str) -> None:
    from search import UsageError
    from search.service import Server, is_loopback, serve

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    server = Server(sqlite_url, backend_factory=lambda spec: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(UsageError, match=r"--host 0\.0\.0\.0 is reachable from other machines.*none exists"):
        serve(server, host="0.0.0.0", port=1)
    out = CliRunner().invoke(main, ["serve", "--storage", sqlite_url, "--host", "0.0.0.0"])
    assert out.exit_code == 2 and out.stderr.startswith("hpsearch: error: --host 0.0.0.0 is reachable")
    made = CliRunner().invoke(main, ["token", "create", "ann", "--admin", "--storage", sqlite_url])
    assert made.exit_code == 0 and made.stdout.startswith("hps_")
    secret = made.stdout.strip()
    assert "shown only now" in made.stderr and secret not in made.stderr
    assert st.token_user(st.create_engine(sqlite_url), secret) == st.TokenUser("ann", True)
    again = CliRunner().invoke(main, ["token", "create", "ann", "--storage", sqlite_url])
    assert again.exit_code == 2 and "a token named 'ann' exists already" in again.stderr


@pytest.mark.parametrize(("resources", "message"), [
    ({"gpus_per_trial": 2}, r"^resources\.gpus_per_trial: 2 GPU per trial requested, but the Ray cluster has 8 CPUs "
                            r"and 1 GPUs in 2 node\(s\) .*no node has that many: lower resources\.gpus_per_trial to 1"),
    ({"cpus_per_trial": 6}, r"^resources\.cpus_per_trial: 6 CPUs per trial requested, but no node has that many "
                            r"\(.*per node: 4 CPU \+ 1 GPU, 4 CPU \+ 0 GPU\)\); lower resources\.cpus_per_trial$"),
], ids=["gpus", "cpus"])
def test_a_study_the_cluster_can_never_run_is_refused_at_submit_naming_the_value_and_fix(
        sqlite_url: str, serve_api, resources: dict, message: str) -> None:
    import re

    from search import make_backend
    from search.service import Server

    def factory(spec):  # type: ignore[no-untyped-def]
        backend = make_backend(spec)  # the server's own RayBackend, on a cluster of two 4-CPU nodes
        backend._node_resources = lambda: [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0}]  # type: ignore[method-assign]
        return backend

    server = Server(sqlite_url, slots=2, backend_factory=factory).open()
    try:
        base = serve_api(server)
        with pytest.raises(Refused) as e:
            Client(base).submit(json.dumps(fake_spec("grid", "big", resources=resources)))
        assert e.value.status == 400 and re.match(message, e.value.detail), e.value.detail
        assert Client(base).studies() == []  # nothing queued, no study left behind
    finally:
        server.close()


def test_open_event_streams_do_not_hold_the_api_s_threads(sqlite_url: str, make_server) -> None:
    """45 watchers of a queued study (more than the 40 threads that serve sync endpoints), each
    between two polls 60 s apart, and a GET still answers at once. Before: each stream slept in a
    worker thread, so 40 watchers left none for the API and the GET waited for the next poll."""
    import http.client
    import threading

    import uvicorn

    from search.service import create_app

    from .conftest import free_port, wait_until

    server = make_server(sqlite_url)  # opened, not started: the study stays queued (an active state)
    server.submit(json.dumps(fake_spec("grid", "watched")))
    port = free_port()
    userver = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=userver.run, daemon=True)
    thread.start()
    conns: list[http.client.HTTPConnection] = []
    try:
        wait_until(lambda: userver.started, 30, "uvicorn to start")
        for _ in range(45):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/studies/watched/events?interval=60")
            resp = c.getresponse()
            assert resp.status == 200
            assert resp.readline().startswith(b"event: progress")  # the first event; next poll in 60 s
            conns.append(c)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/studies/watched", timeout=20) as r:
            assert json.load(r)["state"] == "queued"
    finally:
        for c in conns:
            c.close()
        userver.should_exit = True
        thread.join(30)


def test_the_servers_own_changes_are_seen_at_once_through_the_cached_bodies(sqlite_url: str, make_server,
                                                                           serve_api) -> None:
    """Bodies cached for an hour: every change the server makes (submit, start, each trial, the
    end, a cancel, a resubmit) drops the study's body, so polls still follow the study to its end."""
    from .conftest import wait_until

    server = make_server(sqlite_url, slots=2)
    client = Client(serve_api(server, cache_s=3600))
    client.submit(json.dumps(fake_spec("grid", "a")))
    seen: list[int] = []

    def finished() -> bool:
        body = client.study("a")
        seen.append(body["done"])
        return body["state"] == "done"

    wait_until(finished, 120, "the study to finish, seen through GET /studies/a")
    final = client.study("a")
    assert final["done"] == 6 and final["best"] == json.loads(json.dumps(best_of("a", sqlite_url)))
    assert seen == sorted(seen)  # never an older body after a newer one
    client.submit(json.dumps(fake_spec("tpe", "b", n_trials=60, training={"max_epochs": 20})))
    assert client.study("b")["state"] in ("queued", "running")
    assert client.cancel("b")["state"] == "cancelled"
    assert client.study("b")["state"] == "cancelled"
    assert client.submit(json.dumps(fake_spec("tpe", "b", n_trials=60, training={"max_epochs": 20})))["state"] \
        in ("queued", "running")
    assert client.study("b")["state"] in ("queued", "running")
    client.cancel("b")
