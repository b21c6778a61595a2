"""The link between ``hpsearch serve``'s API process and the process that runs its studies."""

from __future__ import annotations

import threading
import time

from search.service._runner import start_runner


class _InstantServer:
    """A server whose scheduler changes a study the moment it starts (a restart that resumes a running one)."""

    slots = 3

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._changed = None

    def open(self) -> None:
        pass

    def on_change(self, callback) -> None:  # type: ignore[no-untyped-def]
        self._changed = callback

    def start(self) -> None:
        self._changed("k1")  # type: ignore[misc]

    def _check_resources(self, spec: object) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_study_changed_as_the_runner_starts_reaches_the_api_after_ready() -> None:
    """The runner says "ready" (its slots) before its scheduler can report a change: read the other way
    round, the API took the study's name for the slot count and `hpsearch serve` ended (int('k1'))."""
    seen: list[str] = []
    link = start_runner(_InstantServer(), seen.append)
    try:
        assert link.slots == 3
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == ["k1"]
    finally:
        link.close()
    assert link.exit_code == 0
