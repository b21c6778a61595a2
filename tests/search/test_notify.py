"""``notify.webhook``: a local HTTP server receives the posts of ``run_study`` and of the service."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import storage as st
from search import LocalBackend, SpecError, parse_spec, run_study
from search._notify import SENDER_THREADS, _Post, _Sender, flush_notifications, shown_url
from search._spec import load_spec_text
from tests.search import fakes
from tests.search.resume_checks import fake_spec
from tests.search.service.conftest import free_port, wait_until
from tests.search.webhook import SECRET, Hook

pytestmark = pytest.mark.usefixtures("fast_notify")

def _run(url: str, spec: dict[str, Any]):  # type: ignore[no-untyped-def]
    return run_study(spec, storage=url, backend=LocalBackend(2), worker_fn=fakes.quadratic)


def test_a_finished_study_posts_its_progress_and_best_with_the_json_keys(sqlite_url: str, hook: Hook) -> None:
    result = _run(sqlite_url, fake_spec("grid", "n", notify={"webhook": hook.url}))
    assert flush_notifications(30)
    assert hook.events() == ["finished"] and hook.paths == [f"/hooks/{SECRET}?token=abc"]
    body = hook.bodies[0]
    from search.inspect import best_of
    from search.inspect._views import study_progress

    progress = json.loads(json.dumps(study_progress("n", sqlite_url)))
    assert {k: body[k] for k in progress} == progress  # the ls -o json keys, done, budget and best -o json
    assert body["name"] == "n" and body["done"] == body["budget"] == result.budget == 6
    assert body["best"] == json.loads(json.dumps(best_of("n", sqlite_url)))
    assert body["message"] == "6/6 trials done"
    # the URL is not stored with the study (the dashboard shows its attributes)
    assert SECRET not in json.dumps(st.study_attrs(st.create_engine(sqlite_url), "n"))


def test_a_failed_study_posts_failed(sqlite_url: str, hook: Hook) -> None:
    from search import NoTrialCompleted

    def failing(*args: Any) -> Any:
        raise RuntimeError("boom")

    with pytest.raises(NoTrialCompleted):
        run_study(fake_spec("grid", "f", notify={"webhook": hook.url}, retries={"max_retries": 0}),
                  storage=sqlite_url, backend=LocalBackend(2), worker_fn=failing)
    assert flush_notifications(30)
    assert hook.events() == ["failed"]
    assert hook.bodies[0]["message"].startswith("no trial of study 'f' completed")
    assert hook.bodies[0]["done"] == 6 and hook.bodies[0]["best"] is None


def test_a_study_with_no_trial_finished_for_stall_after_s_posts_stalled(sqlite_url: str, hook: Hook,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_EPOCH_S", "0.5")  # a trial takes 1 s; stalled after 0.1 s without one finished
    _run(sqlite_url, fake_spec("grid", "s", space={"lr": {"values": [0.01]}},
                               notify={"webhook": hook.url, "stall_after_s": 0.1}))
    assert flush_notifications(30)
    events = hook.events()
    assert events[0] == "stalled" and events[-1] == "finished"
    assert hook.bodies[0]["message"] == "no trial finished in the last 0.1 s (0/1 trials done)"


def test_failed_posts_are_retried_with_backoff(sqlite_url: str) -> None:
    flaky = Hook([500, 503])
    try:
        _run(sqlite_url, fake_spec("grid", "r", notify={"webhook": flaky.url}))
        assert flush_notifications(30)
        assert len(flaky.paths) == 3 and flaky.events() == ["finished"]  # two 5xx, then delivered
    finally:
        flaky.close()


def test_a_dead_webhook_never_fails_the_study_and_its_url_is_never_logged(
        sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hooks/{SECRET}"  # nothing listens there
    with caplog.at_level(logging.INFO, logger="search._notify"):
        result = _run(sqlite_url, fake_spec("grid", "d", notify={"webhook": dead}))
        assert result.done == 6 and result.best is not None
        assert flush_notifications(30)
    logged = [r.getMessage() for r in caplog.records if r.name == "search._notify"]
    assert sum("retrying in" in m for m in logged) == 4  # five attempts
    assert logged[-1].startswith(f"notify: finished post to http://127.0.0.1:{dead.split(':')[2].split('/')[0]}/*** "
                                 "failed (") and logged[-1].endswith("gave up after 5 attempt(s)")
    assert not any(SECRET in m for m in logged)


def test_the_notify_section_is_validated_and_never_stored() -> None:
    with pytest.raises(SpecError, match=r"notify\.webhook: must be an http:// or https:// URL with a host"):
        parse_spec(fake_spec("grid", notify={"webhook": "ftp://x/y"}))
    with pytest.raises(SpecError, match=r"notify\.stall_after_s: Input should be greater than 0"):
        parse_spec(fake_spec("grid", notify={"webhook": "https://h/x", "stall_after_s": 0}))
    with pytest.raises(SpecError, match=r"notify\.hook: unknown key"):
        load_spec_text(json.dumps(fake_spec("grid", notify={"webhook": "https://h/x", "hook": 1})))
    spec = parse_spec(fake_spec("grid", notify={"webhook": "https://h/x"}))
    assert spec.notify is not None and spec.notify.stall_after_s == 3600
    assert "notify" not in spec.to_dict()
    assert shown_url("https://user:pw@hooks.example.com:8443/T0/B1?k=v") == "https://hooks.example.com:8443/***"
    assert shown_url("http://[::1]:9/") == "http://[::1]:9"


class Stuck:
    """A webhook that accepts every post and answers none until :attr:`release` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.answered = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                hook.entered.set()
                hook.release.wait(60)
                hook.answered += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stuck"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _post(url: str, event: str) -> _Post:
    return _Post(url, event, lambda: {"event": event})


def test_a_webhook_that_never_answers_does_not_delay_another_studys_post(hook: Hook) -> None:
    """Before: one thread sent every post, so a live webhook's post waited behind each of a dead
    one's attempts (10 s each, five of them). Now the live post arrives while the dead one is still
    unanswered, and a refused URL's backoff holds no thread either."""
    sender = _Sender()
    stuck = Stuck()
    refused = f"http://127.0.0.1:{free_port()}/refused"  # nothing listens: retried with backoff
    try:
        sender.put(_post(stuck.url, "finished"))
        assert stuck.entered.wait(30)  # a thread is inside the stuck webhook's post
        sender.put(_post(refused, "failed"))
        for event in ("stalled", "finished"):
            sender.put(_post(hook.url, event))
        assert sender.flush(0.0) is False
        wait_until(lambda: len(hook.bodies) == 2, 30, "the live webhook's posts")
        assert hook.events() == ["stalled", "finished"]  # in order, per URL
        assert stuck.answered == 0  # ... while the stuck post is still unanswered
        stuck.release.set()
        assert sender.flush(60)
        assert stuck.answered == 1
    finally:
        stuck.close()


def test_posting_threads_are_bounded() -> None:
    sender = _Sender()
    stuck = [Stuck() for _ in range(SENDER_THREADS + 2)]
    try:
        for s in stuck:
            sender.put(_post(s.url, "finished"))
        assert stuck[0].entered.wait(30)
        assert len(sender._threads) == SENDER_THREADS
        assert not sender.flush(0.0)
        for s in stuck:
            s.release.set()
        assert sender.flush(60)
        assert [s.answered for s in stuck] == [1] * len(stuck)  # the posts that waited for a thread went out too
        assert len(sender._threads) == SENDER_THREADS
    finally:
        for s in stuck:
            s.close()
