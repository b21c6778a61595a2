"""Tests leave the process environment as they found it, so timings do not depend on test order."""

from __future__ import annotations

import os


def test_fake_worker_speed_is_not_left_set_by_another_module() -> None:
    """tests/search/backends/test_ray_e2e.py set FAKE_EPOCH_S at import and never restored it."""
    assert "FAKE_EPOCH_S" not in os.environ
