"""The events a backend returns: every kind of failure is one the orchestrator records."""

from __future__ import annotations

import pytest

from search.backends import FAILURE_KINDS, Failed


def test_every_failure_kind_is_recorded_by_the_orchestrator() -> None:
    """A cancelled job produces no event (Backend.cancel_all); a ``Failed(kind="cancelled")`` used to
    be accepted and silently dropped by the orchestrator, which left its trial RUNNING."""
    assert FAILURE_KINDS == ("error", "oom", "crash", "store")
    for kind in FAILURE_KINDS:
        assert Failed("0.0", "why", kind).kind == kind
    with pytest.raises(ValueError, match=r"Failed\.kind must be one of error, oom, crash, store, got .cancelled."):
        Failed("0.0", "why", "cancelled")  # type: ignore[arg-type]
