"""A run's hold on its study: the lease (one orchestrator per study) and the retried storage calls."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import storage as st

from ._settings import lease_stale_after
from ._stop import StopToken

__all__ = ["Session", "leased"]

T = TypeVar("T")

_log = logging.getLogger(__name__)


class Session:
    """The storage calls of one run.

    Every call is retried with backoff while it fails transiently (``HPSEARCH_DB_RETRY_ATTEMPTS``);
    a stop asked for during a backoff ends it at once (:class:`~search._stop.StopRequested`). Once
    the run holds its lease (:func:`leased`), every attempt first makes sure the lease is still
    its own (:meth:`storage.Lease.ensure_valid`), so no write, retried or not, lands after another
    orchestrator may have taken the study over.

    Parameters
    ----------
    url:
        The storage URL (shown redacted in messages).
    study_name:
        The study, as the ``hpsearch resume NAME`` hint names it (shell-quoted).
    stop:
        The run's stop token.
    attempts:
        Attempts of one call, the first included.
    """

    def __init__(self, url: str, study_name: str, stop: StopToken, attempts: int) -> None:
        self.url = url
        self.study_name = study_name
        self.stop = stop
        self.attempts = attempts
        self.lease: st.Lease | None = None

    def _lease_valid(self) -> None:
        if self.lease is not None:
            self.lease.check()  # a loss the heartbeat thread saw
            self.lease.ensure_valid()  # a heartbeat too old to be sure: re-validated first

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried; raises :class:`storage.StorageUnavailable` (or a disk-full
        :class:`storage.StorageError`) when the database stays away, :class:`storage.LeaseLost`
        when the lease is gone."""
        try:
            return st.retrying(fn, url=self.url, study_name=self.study_name, attempts=self.attempts,
                               before_attempt=self._lease_valid, sleep=self.stop.sleep)
        except st.StorageUnavailable as e:
            full = st.disk_full_reason(e)
            if full is None:
                raise
            raise st.StorageError(
                f"the disk holding the database {st.redact(self.url)} is full ({full}). Finished trials are "
                f"saved; free some space, then run `hpsearch resume {self.study_name}` to continue."
            ) from e


@contextmanager
def leased(engine: Any, name: str, session: Session) -> Iterator[st.Lease]:
    """Hold study ``name``'s lease while inside; ``session``'s calls then check it before each attempt.

    A stop asked for while the lease was released after a finished run is raised after it.
    """
    stale_after = lease_stale_after()
    lease = session.call(lambda: st.Lease(engine, name, stale_after=stale_after))
    session.call(lease.acquire)
    lease.start_heartbeat()
    session.lease = lease
    try:
        yield lease
    except BaseException:
        session.lease = None
        _release(lease, name, stale_after)  # an interrupt in there: the one propagating says it all
        raise
    session.lease = None
    if _release(lease, name, stale_after):
        raise KeyboardInterrupt  # a forced stop while the lease was released after a finished run
    session.stop.check()


def _release(lease: st.Lease, name: str, stale_after: float) -> bool:
    """Release ``lease``; True if a forced stop (a second Ctrl-C) landed in the release, which is
    completed first: it is one quick statement, and a row left behind would make the next run on
    another host wait for it to go stale."""
    interrupted = False
    for _ in range(3):
        try:
            lease.release()
            break
        except KeyboardInterrupt:
            interrupted = True
        except Exception as e:  # database gone: the row goes stale and the next run takes it over
            lease.stop_heartbeat()
            _log.warning("could not release the lease of study %r (%s); it expires after %g s without "
                         "heartbeat", name, str(e).splitlines()[0] if str(e) else type(e).__name__, stale_after)
            break
    return interrupted
