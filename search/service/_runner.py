"""The studies of ``hpsearch serve`` in a process of their own, away from the API's interpreter.

:func:`start_runner` forks the process that runs the :class:`~search.service.Server`'s scheduler,
its studies' orchestrators and its Ray connection; the process that called it keeps only the API
(submits and cancels write the queue in the database, reads read it). The two share nothing but
the database and one pipe, on which the API's side sends

- ``("wake",)``: the queue changed (a submit, a cancel): look now, not at the next poll;
- ``("check", id, spec)``: can this Ray cluster run the study? (``submit`` refuses it otherwise);
- ``("close",)``: stop every study as on Ctrl-C (in-flight trials recorded), then exit;

and the runner answers ``("ready", slots)`` or ``("failed", error)`` once opened, ``("checked", id,
error or None)``, and ``("changed", name)`` whenever it changed a study (the API drops its cached
body).

Why: in one process, the orchestrators' ask/tell and Ray's client threads held the GIL that the
API's requests wait for; with 50 clients polling while two studies ran, that wait was the API's
tail latency (docs/benchmarks.md, ``service``).

The runner dies with the API's process: on Linux it gets SIGKILL when its parent dies (a ``kill
-9`` of ``hpsearch serve`` stops everything, as it did in one process), and elsewhere it stops
its studies when the pipe closes. It ignores SIGINT and SIGTERM: Ctrl-C in a terminal, or a
service manager's SIGTERM to the whole group, reaches the API's process, which closes the runner.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

__all__ = ["RunnerDied", "RunnerLink", "start_runner"]

_log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 600.0  # opening the database and starting (or joining) Ray
_CHECK_TIMEOUT_S = 60.0


class RunnerDied(RuntimeError):
    """The process that runs the studies ended while the API served (its exit status in ``code``)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"the process running the studies ended (exit status {code}); restart `hpsearch serve`: "
                         "queued studies stay queued and running ones resume")
        self.code = code


class RunnerLink:
    """The API's side of the runner process: its pipe, its pid and the slots it schedules.

    Built by :func:`start_runner`; ``on_change(name)`` is called (from a reader thread) for each
    study the runner changed, and ``on_death()`` once if the runner ends before :meth:`close`.
    """

    def __init__(self, conn: Connection, pid: int, on_change: Callable[[str], None]) -> None:
        self.conn, self.pid, self.on_change = conn, pid, on_change
        self.slots = 0
        self.on_death: Callable[[], None] | None = None
        self.exit_code: int | None = None
        self.died = False  # it ended before close(): the API stops, and serve raises RunnerDied
        self._send_lock = threading.Lock()
        self._replies: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._next_id = 0
        self._closing = False
        self._reader: threading.Thread | None = None

    # -- start-up --------------------------------------------------------------------------------
    def _wait_ready(self) -> None:
        if not self.conn.poll(_READY_TIMEOUT_S):
            self._reap(kill=True)
            raise RuntimeError(f"the process running the studies did not start within {_READY_TIMEOUT_S:g} s")
        try:
            kind, value = self.conn.recv()
        except EOFError:
            raise RunnerDied(self._reap()) from None
        if kind == "failed":
            self._reap()
            raise value
        self.slots = int(value)
        self._reader = threading.Thread(target=self._read, name="hpsearch-runner-link", daemon=True)
        self._reader.start()

    # -- requests --------------------------------------------------------------------------------
    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def wake(self) -> None:
        """Tell the runner to look at the queue now (a lost wake-up costs one poll interval)."""
        try:
            self._send(("wake",))
        except OSError as e:  # the runner is gone: its death is reported by the reader
            _log.warning("could not wake the process running the studies: %s", e)

    def check_resources(self, spec: Any) -> None:
        """Raise what the runner's backend raises for ``spec`` (a :class:`~search.ResourceError`)."""
        event, box = threading.Event(), []
        with self._send_lock:
            self._next_id += 1
            rid = self._next_id
            self._replies[rid] = (event, box)
            self.conn.send(("check", rid, spec))
        try:
            if not event.wait(_CHECK_TIMEOUT_S):
                raise RuntimeError(f"the process running the studies did not answer within {_CHECK_TIMEOUT_S:g} s "
                                   "whether its Ray cluster can run the study; submit it again")
        finally:
            self._replies.pop(rid, None)
        if box and box[0] is not None:
            raise box[0]

    # -- the reader ------------------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "changed":
                try:
                    self.on_change(message[1])
                except Exception as e:  # a listener's bug must not stop the link
                    _log.warning("change listener failed for study %r: %s", message[1], e)
            elif message[0] == "checked":
                waiting = self._replies.get(message[1])
                if waiting is not None:
                    waiting[1].append(message[2])
                    waiting[0].set()
        for event, box in list(self._replies.values()):  # nobody will answer them now
            box.append(RunnerDied(None))
            event.set()
        if not self._closing:
            self.died = True
            self.exit_code = self._reap()
            _log.error("%s", RunnerDied(self.exit_code))
            if self.on_death is not None:
                self.on_death()

    # -- shut-down -------------------------------------------------------------------------------
    def close(self, timeout: float = 120.0) -> None:
        """Stop the runner's studies (in-flight trials recorded; they resume at the next start) and
        wait for it to exit; kill it after ``timeout`` seconds."""
        self._closing = True
        try:
            self._send(("close",))
        except OSError:
            pass  # gone already
        self.exit_code = self._reap(timeout=timeout, kill=True)
        self.conn.close()

    def _reap(self, timeout: float = 10.0, kill: bool = False) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already
                return self.exit_code
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= deadline:
                if not kill:
                    return None
                os.kill(self.pid, signal.SIGKILL)
                kill, deadline = False, time.monotonic() + 10.0
            time.sleep(0.05)


def start_runner(server: Any, on_change: Callable[[str], None]) -> RunnerLink:
    """Fork the process that opens ``server`` (unopened: nothing of it may exist yet in this
    process) and runs its studies; return once it is ready.

    Raises whatever ``server.open()`` raises in the runner (a :class:`~search.UsageError` for an
    artifact directory that cannot be written, Ray's errors), or :class:`RunnerDied`.
    """
    ours, theirs = Pipe(duplex=True)
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the runner
        code = 1
        try:
            ours.close()
            code = _runner_main(server, theirs, parent)
        finally:
            os._exit(code)
    theirs.close()
    link = RunnerLink(ours, pid, on_change)
    link._wait_ready()
    return link


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux); elsewhere the closed pipe stops it."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _runner_main(server: Any, conn: Connection, parent: int) -> int:
    from .._stop import ignore_stop_signals

    ignore_stop_signals()
    _die_with_parent(parent)
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            try:
                conn.send(message)
            except OSError:  # the API's process is gone: the pipe's EOF stops this one
                pass

    try:
        server.open()
    except BaseException as e:
        send(("failed", _picklable(e)))
        return 2
    ignore_stop_signals()  # again: ray.init installs handlers of its own (a SIGTERM killed this process)
    server.on_change(lambda name: send(("changed", name)))
    # "ready" before the scheduler starts: it is the first message the API reads (its slots), and a study
    # the scheduler resumes at once sends "changed" (read before "ready", that ended the server: int('k1'))
    send(("ready", server.slots))
    server.start()
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the API's process ended without closing us (a kill elsewhere than Linux)
            if message[0] == "wake":
                server._wake.set()
            elif message[0] == "check":
                try:
                    server._check_resources(message[2])
                    send(("checked", message[1], None))
                except Exception as e:
                    send(("checked", message[1], _picklable(e)))
            elif message[0] == "close":
                break
    finally:
        server.close()
    return 0


def _picklable(e: BaseException) -> BaseException:
    """``e`` itself if it survives a pickle round trip (its class and message reach the API), else a
    RuntimeError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")
