"""A short-lived cache of each study's ``GET /studies/{name}`` body.

Many clients poll the same few studies (``hpsearch watch`` asks twice a second, a dashboard more):
without a cache every poll reads the database, and 50 clients at once queue behind each other on
the server's CPU. A body is reused for at most ``ttl_s`` seconds, computed once however many
requests ask for it at the same moment, and dropped as soon as the server itself changes the study
(a submit, a cancel, a trial started or told, the end of a run): the server's own writes are seen at
once, and a write by another process (``hpsearch run`` on the same database) within ``ttl_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DEFAULT_TTL_S", "DetailCache"]

DEFAULT_TTL_S = 0.25
"""How long a study's body is reused (half of ``hpsearch watch``'s poll interval)."""

Body = TypeVar("Body")


class DetailCache(Generic[Body]):
    """Each study's body for ``ttl_s`` seconds (0: never cached), computed by ``compute``.

    Parameters
    ----------
    compute:
        The body of a study (None: no such study; not cached, so a study created later is found).
    ttl_s:
        How long a body is reused, counted from the start of the read that made it.
    clock:
        Monotonic seconds (tests pass a fake one).
    """

    def __init__(self, compute: Callable[[str], Body | None], ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self._compute = compute
        self.ttl_s = ttl_s
        self._clock = clock
        self._mu = threading.Lock()
        self._bodies: dict[str, tuple[float, Body]] = {}  # name -> (read started at, body)
        self._gen: dict[str, int] = {}  # name -> invalidations so far
        self._locks: dict[str, threading.Lock] = {}  # one read at a time per study

    def fresh(self, name: str) -> Body | None:
        """The cached body if it is young enough, else None; never reads the database (an async
        endpoint answers a hit on the event loop, without a worker thread)."""
        with self._mu:
            hit = self._bodies.get(name)
        if hit is not None and self._clock() - hit[0] < self.ttl_s:
            return hit[1]
        return None

    def get(self, name: str) -> Body | None:
        """The body of study ``name``: cached, or read now (once for all the requests asking at the
        same moment: the others wait for that read and share it)."""
        hit = self.fresh(name)
        if hit is not None or self.ttl_s == 0:
            return hit if hit is not None else self._compute(name)
        with self._mu:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            hit = self.fresh(name)  # read by the request this one waited for
            if hit is not None:
                return hit
            with self._mu:
                gen = self._gen.get(name, 0)
            started = self._clock()
            body = self._compute(name)
            with self._mu:
                if body is not None and self._gen.get(name, 0) == gen:  # not changed while it was read
                    self._bodies[name] = (started, body)
            return body

    def invalidate(self, name: str) -> None:
        """Study ``name`` changed: the next request reads it again."""
        with self._mu:
            self._gen[name] = self._gen.get(name, 0) + 1
            self._bodies.pop(name, None)
