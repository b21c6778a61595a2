"""Notifications: the study file's ``notify.webhook`` gets a JSON POST when the study finishes,
fails or stalls.

A run makes one :class:`Notifier` (``search._api`` does, for ``hpsearch run``, ``resume`` and the
server's studies alike). Its callbacks watch the orchestrator: a run in which no trial finished for
``notify.stall_after_s`` seconds (counted from the start of the trial loop or the last trial that
finished) has *stalled*, which is posted once until a trial finishes again. The end of the run
posts ``finished`` (the budget is used up) or ``failed`` (the run raised, or no trial completed); a
stop (Ctrl-C, a cancel, a server shutting down) posts nothing.

Posts go out from a few background threads per process (:data:`SENDER_THREADS`), one queue per
webhook URL: a run never waits for one, a webhook's posts arrive in order, and a dead webhook does
not delay another's. A failed post (no answer, a 5xx, 408 or 429) is retried with exponential
backoff (``HPSEARCH_NOTIFY_BACKOFF_S``, default 2 s, doubled each time, five attempts), then dropped
with a warning. A process that exits waits at most
:data:`FLUSH_AT_EXIT_S` for the posts still due. The URL may hold a secret: logs show only its
scheme and host.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from optuna.trial import FrozenTrial

from ._orchestrator import Callbacks
from ._settings import notify_backoff_s
from ._spec import NotifySpec

__all__ = ["ATTEMPTS", "FLUSH_AT_EXIT_S", "SENDER_THREADS", "Notifier", "flush_notifications", "shown_url"]

_log = logging.getLogger(__name__)

ATTEMPTS = 5
"""Tries of one post before it is dropped."""
FLUSH_AT_EXIT_S = 30.0
"""The longest a process that ends waits for its posts still due."""
SENDER_THREADS = 4
"""The most posting threads a process runs (each sends to one webhook at a time)."""
_TIMEOUT_S = 10.0  # one HTTP request


def shown_url(url: str) -> str:
    """``url`` safe to log: its scheme, host and port; the path, query and user part (where a
    webhook's secret lives) become ``***``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<webhook URL>"
    host = f"[{host}]" if ":" in host else host
    rest = "/***" if (parts.path not in ("", "/") or parts.query or parts.username) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


@dataclass
class _Post:
    url: str
    event: str
    build: Callable[[], dict[str, Any]]
    body: bytes | None = None  # built on the first attempt (the progress as it is when sent)
    attempt: int = 0
    delay: float = 0.0  # the wait before the next attempt


class _Sender:
    """The process's posting threads (at most ``threads``, started as posts arrive) and one queue per URL.

    Posts to one URL go out one at a time, in order; posts to different URLs do not wait for each
    other: a failed attempt does not hold a thread through its backoff (the URL is due again later,
    and the threads serve other URLs meanwhile), and a webhook that never answers holds one thread
    for at most :data:`_TIMEOUT_S` per attempt while the others keep sending. Only ``threads``
    unanswering webhooks at once delay the rest.
    """

    def __init__(self, threads: int = SENDER_THREADS) -> None:
        self._max = threads
        self._cv = threading.Condition()
        self._queues: dict[str, deque[_Post]] = {}  # URL -> its posts not yet sent or dropped, oldest first
        self._due: list[tuple[float, int, str]] = []  # heap of (when, seq, URL): URLs no thread is serving
        self._seq = itertools.count()
        self._busy = 0  # posts queued or being sent
        self._threads: list[threading.Thread] = []

    def put(self, post: _Post) -> None:
        with self._cv:
            queue = self._queues.get(post.url)
            if queue is None:  # else it is due already, waits for a retry, or a thread sends its head
                queue = self._queues[post.url] = deque()
                heapq.heappush(self._due, (time.monotonic(), next(self._seq), post.url))
            queue.append(post)
            self._busy += 1
            if len(self._threads) < min(self._max, len(self._queues)):
                if not self._threads and self is _sender:
                    atexit.register(self.flush, FLUSH_AT_EXIT_S)
                thread = threading.Thread(target=self._loop, name=f"hpsearch-notify-{len(self._threads)}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cv.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every post was sent or dropped (at most ``timeout`` s); True if none is left."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def _next(self) -> _Post:
        """The head post of the URL due first (waits for one); its URL is this thread's until :meth:`_done`."""
        with self._cv:
            while True:
                wait = None
                if self._due:
                    wait = self._due[0][0] - time.monotonic()
                    if wait <= 0:
                        _, _, url = heapq.heappop(self._due)
                        return self._queues[url][0]
                self._cv.wait(wait)

    def _done(self, post: _Post, again_in: float | None) -> None:
        """``post`` was sent or dropped (``again_in`` None), or is tried again in ``again_in`` s."""
        with self._cv:
            queue = self._queues[post.url]
            when = time.monotonic()
            if again_in is None:
                queue.popleft()
                self._busy -= 1
            else:
                when += again_in
            if queue:
                heapq.heappush(self._due, (when, next(self._seq), post.url))
            else:
                del self._queues[post.url]
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            post = self._next()
            again_in: float | None = None
            try:
                again_in = _attempt(post)
            except Exception as e:  # never let the thread die: the next post must still go out
                _log.warning("notify: %s post to %s not sent (%s)", post.event, shown_url(post.url),
                             type(e).__name__)
            finally:
                self._done(post, again_in)


def _attempt(post: _Post) -> float | None:
    """One attempt at sending ``post``: None if it is done with (sent, or given up), else the seconds
    to wait before the next attempt."""
    if post.body is None:
        post.body = json.dumps(post.build(), default=str, allow_nan=False).encode("utf-8")
        post.delay = notify_backoff_s()
    post.attempt += 1
    shown = shown_url(post.url)
    req = urllib.request.Request(post.url, data=post.body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "hpsearch"})
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
            resp.read()
        return None
    except urllib.error.HTTPError as e:
        why, again = f"HTTP {e.code}", e.code >= 500 or e.code in (408, 429)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        why, again = str(reason).replace(post.url, shown), True
    if not again or post.attempt == ATTEMPTS:
        _log.warning("notify: %s post to %s failed (%s); gave up after %d attempt(s)", post.event, shown, why,
                     post.attempt)
        return None
    _log.info("notify: %s post to %s failed (%s); retrying in %.3g s", post.event, shown, why, post.delay)
    delay, post.delay = post.delay, post.delay * 2
    return delay


_sender = _Sender()


def flush_notifications(timeout: float = FLUSH_AT_EXIT_S) -> bool:
    """Wait (at most ``timeout`` s) until this process's notifications were sent or dropped."""
    return _sender.flush(timeout)


class Notifier:
    """The notifications of one run of study ``study``.

    Parameters
    ----------
    spec:
        The study file's ``notify`` section.
    study:
        The study's name.
    engine:
        A SQLAlchemy engine of the storage: a post carries the study's progress as ``ls``/``best``
        ``-o json`` show it, read when it is sent.
    """

    def __init__(self, spec: NotifySpec, study: str, engine: Any) -> None:
        self.spec = spec
        self.study = study
        self.engine = engine
        self._cv = threading.Condition()
        self._last = 0.0  # monotonic time of the loop's start or of the last finished trial
        self._stalled = False
        self._watching = False
        self._closed = False
        self._done: int | None = None
        self._budget: int | None = None
        self._thread: threading.Thread | None = None

    def callbacks(self, inner: Callbacks | None) -> Callbacks:
        """Callbacks that call ``inner``'s and watch the run for a stall."""
        return _Watch(inner or Callbacks(), self)

    # -- what the callbacks tell --------------------------------------------------------------
    def _loop_started(self, done: int, budget: int) -> None:
        with self._cv:
            self._done, self._budget = done, budget
            self._last, self._watching = time.monotonic(), True
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name=f"hpsearch-stall-{self.study}",
                                                daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _trial_finished(self, done: int, budget: int) -> None:
        with self._cv:
            self._done, self._budget = done, budget
            self._last, self._stalled = time.monotonic(), False
            self._cv.notify_all()

    def _loop_ended(self) -> None:  # the refit: no trial finishes while it runs, nor should one
        with self._cv:
            self._watching = False
            self._cv.notify_all()

    def _watch(self) -> None:
        with self._cv:
            while not self._closed:
                wait: float | None = None
                if self._watching and not self._stalled:
                    left = self._last + self.spec.stall_after_s - time.monotonic()
                    if left <= 0:
                        self._stalled = True
                        self._post("stalled", f"no trial finished in the last {self.spec.stall_after_s:g} s "
                                              f"({self._done}/{self._budget} trials done)")
                        continue
                    wait = left
                self._cv.wait(wait)

    # -- the end of the run ---------------------------------------------------------------------
    def finished(self, message: str) -> None:
        """The run used up its budget."""
        self._post("finished", message)

    def failed(self, message: str) -> None:
        """The run failed (it raised, or no trial completed)."""
        self._post("failed", message)

    def close(self) -> None:
        """Stop watching (posts already due still go out)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _post(self, event: str, message: str) -> None:
        done, budget = self._done, self._budget
        _sender.put(_Post(self.spec.webhook, event, lambda: self._payload(event, message, done, budget)))

    def _payload(self, event: str, message: str, done: int | None, budget: int | None) -> dict[str, Any]:
        from .inspect._views import study_progress

        out: dict[str, Any] = {"event": event, "message": message,
                               "sent_at": datetime.now(timezone.utc).isoformat(),
                               "name": self.study, "done": done, "budget": budget, "best": None}
        try:
            progress = study_progress(self.study, engine=self.engine)
        except Exception as e:  # the database away (maybe why the run failed): post what is known
            _log.info("notify: progress of study %r unreadable (%s)", self.study, type(e).__name__)
            progress = None
        out.update(progress or {})
        return out


class _Watch(Callbacks):
    """Forwards every callback to ``inner`` and tells the :class:`Notifier` how the run goes."""

    def __init__(self, inner: Callbacks, notifier: Notifier) -> None:
        self.inner, self.notifier = inner, notifier

    def on_start(self, study: Any, done: int, budget: int, where: str) -> None:
        self.notifier._loop_started(done, budget)
        self.inner.on_start(study, done, budget, where)

    def on_trial_start(self, number: int, params: dict[str, Any]) -> None:
        self.inner.on_trial_start(number, params)

    def on_trial_end(self, trial: FrozenTrial, done: int, budget: int) -> None:
        self.notifier._trial_finished(done, budget)
        self.inner.on_trial_end(trial, done, budget)

    def on_refit_start(self, number: int) -> None:
        self.notifier._loop_ended()
        self.inner.on_refit_start(number)

    def on_message(self, text: str) -> None:
        self.inner.on_message(text)
