"""Stopping a run: the one place that handles SIGINT (Ctrl-C) and SIGTERM (``kill``, ``docker stop``).

Cooperative: a first signal only *asks* the run to stop. It sets a :class:`StopToken`; the
orchestrator checks the token between polls (so a trial is never half-recorded), a retry's backoff
waits on it (so a database outage does not hold a stop for a minute), and start-up checks it
between its steps (so ``ray.init`` is never cut in half and leaves no Ray processes behind). The
run then records its in-flight trials, releases its lease and raises :class:`StopRequested`.

A second signal stops the run at once: it raises :class:`KeyboardInterrupt` wherever the main
thread is. In-flight trials are then left RUNNING in the database, and the next resume re-runs
them (as after a kill).

A token needs no signal at all: code that runs several studies in one process (a service, a
notebook's thread) calls :meth:`StopToken.set` to stop one of them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["StopRequested", "StopToken", "ignore_stop_signals", "stop_on_signals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """The run was asked to stop (``reason``: ``"Ctrl-C"``, ``"SIGTERM"`` or the caller's words).

    A :class:`KeyboardInterrupt`, so that no ``except Exception`` on the way out swallows it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StopToken:
    """A request to stop a run, set once (by a signal handler or by code), read by the run's loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.forced = False  # a second signal arrived: the run stops without recording more
        self.draining = False  # the run records its in-flight trials: retries sleep their full backoff

    def set(self, reason: str) -> None:
        """Ask the run to stop; the first reason is kept."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop was asked for."""
        if self._event.is_set():
            raise StopRequested(self.reason or "stopped")

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or raise :class:`StopRequested` as soon as a stop is asked for.

        While the run records its in-flight trials after a stop (``draining``), it sleeps the whole
        time: a transient database error there is retried as usual, and only a second signal
        (KeyboardInterrupt, which ends any sleep) cuts it short.
        """
        if self.draining:
            time.sleep(max(0.0, seconds))
            return
        if self._event.wait(max(0.0, seconds)):
            raise StopRequested(self.reason or "stopped")


def _signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextmanager
def stop_on_signals(token: StopToken) -> Iterator[StopToken]:
    """While inside, SIGINT and SIGTERM set ``token``; a second one raises KeyboardInterrupt at once.

    Only the main thread of the main interpreter can handle signals: elsewhere this does nothing
    (the caller stops the run through the token). The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    received = [0]  # signals this run got (a token set by code is no signal)

    def on_signal(signum: int, frame: Any) -> None:
        received[0] += 1
        if received[0] > 1:  # the second one: stop now, wherever the run is
            token.forced = True
            raise KeyboardInterrupt(_signal_name(signum))
        token.set(_signal_name(signum))

    previous: dict[int, Any] = {}
    try:
        for sig in _SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:  # ignored by whoever started us (nohup, trap ''): kept
                continue
            previous[sig] = signal.signal(sig, on_signal)
    except ValueError:  # not the main interpreter
        pass
    try:
        yield token
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM in this process for good: a child whose parent decides when it stops
    (``hpsearch serve``'s runner: Ctrl-C in a terminal, or a service manager's SIGTERM, reaches the
    whole process group, and the parent closes the child)."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
