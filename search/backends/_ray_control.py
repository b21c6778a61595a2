"""The Ray control actor: epoch reports from workers to the driver, stop flags back.

Kept import-light on purpose: the actor's process imports only this module (not torch, not
``trials``), because on a small machine its start-up competes with the workers' for the CPUs.
Reports travel as pickled bytes that the actor stores without unpickling.
"""

from __future__ import annotations

import asyncio

__all__ = ["Control"]


class Control:
    """An async actor: ``report`` from workers; ``wait`` (a long poll) and ``drain`` from the driver.

    The driver keeps one ``wait`` call outstanding and waits on it together with the trial tasks
    (``ray.wait``) instead of polling the actor; when it returns, or when a task has finished, the
    driver takes the queued reports with ``drain``. Only ``drain`` takes reports, and a task's
    reports reach the actor before the task returns, so the driver sees every report of a trial
    before its outcome.
    """

    def __init__(self) -> None:
        self._reports: list[tuple[str, bytes]] = []
        self._stop: set[str] = set()
        self._arrived: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._arrived is None:  # created inside the actor's event loop
            self._arrived = asyncio.Event()
        return self._arrived

    async def report(self, key: str, blob: bytes) -> bool:
        """Queue one pickled report of job ``key``; True if the job should stop."""
        self._reports.append((key, blob))
        self._event().set()
        return key in self._stop

    async def wait(self, wait_s: float, linger_s: float = 0.0) -> bool:
        """Return when reports are queued (True) or after ``wait_s`` seconds (False).

        Having waited for a first report, it lingers ``linger_s`` seconds so that reports arriving
        together (several trials' epochs) reach the driver, and its database, as one batch.
        """
        event = self._event()
        if self._reports:
            return True
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), wait_s)
        except asyncio.TimeoutError:
            return bool(self._reports)
        await asyncio.sleep(linger_s)
        return True

    async def drain(self) -> list[tuple[str, bytes]]:
        """Take every queued report."""
        out, self._reports = self._reports, []
        return out

    async def stop(self, keys: list[str]) -> None:
        self._stop.update(keys)

    async def forget(self, keys: list[str]) -> None:
        self._stop.difference_update(keys)
