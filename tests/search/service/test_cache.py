"""The short-lived cache of ``GET /studies/{name}`` bodies (fake clock; threads ordered by events)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from search.service._cache import DetailCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Reads:
    """A ``compute`` that counts its reads and answers ``{"name", "read"}``."""

    def __init__(self) -> None:
        self.n = 0
        self.mu = threading.Lock()

    def __call__(self, name: str) -> dict[str, Any] | None:
        with self.mu:
            self.n += 1
            return None if name == "missing" else {"name": name, "read": self.n}


def test_a_body_is_reused_for_its_ttl_then_read_again() -> None:
    clock, reads = Clock(), Reads()
    cache = DetailCache(reads, ttl_s=0.25, clock=clock)
    assert cache.fresh("a") is None  # nothing cached: fresh never reads
    assert reads.n == 0
    first = cache.get("a")
    clock.now += 0.2
    assert cache.get("a") is first and cache.fresh("a") is first and reads.n == 1
    clock.now += 0.1
    assert cache.fresh("a") is None
    assert cache.get("a") == {"name": "a", "read": 2}
    assert cache.get("b") == {"name": "b", "read": 3}  # per study


def test_invalidate_drops_the_body_and_unknown_studies_are_not_cached() -> None:
    clock, reads = Clock(), Reads()
    cache = DetailCache(reads, ttl_s=3600, clock=clock)
    cache.get("a")
    cache.invalidate("a")
    assert cache.fresh("a") is None
    assert cache.get("a") == {"name": "a", "read": 2}
    assert cache.get("missing") is None and cache.get("missing") is None
    assert reads.n == 4  # a study created later is found at once


def test_ttl_zero_reads_every_time() -> None:
    reads = Reads()
    cache = DetailCache(reads, ttl_s=0)
    cache.get("a")
    cache.get("a")
    assert reads.n == 2 and cache.fresh("a") is None
    with pytest.raises(ValueError, match="ttl_s must be >= 0"):
        DetailCache(reads, ttl_s=-1)


def test_requests_asking_at_once_share_one_read() -> None:
    entered, release = threading.Event(), threading.Event()
    reads = Reads()

    def slow(name: str) -> dict[str, Any] | None:
        entered.set()
        assert release.wait(30)
        return reads(name)

    cache = DetailCache(slow, ttl_s=3600)
    got: list[Any] = []
    first = threading.Thread(target=lambda: got.append(cache.get("a")))
    first.start()
    assert entered.wait(30)  # the first request is reading
    others = [threading.Thread(target=lambda: got.append(cache.get("a"))) for _ in range(5)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(30)
    assert reads.n == 1 and len(got) == 6 and all(g is got[0] for g in got)


def test_a_change_during_a_read_is_not_hidden_by_that_read() -> None:
    """The read began before the change: its body may predate it, so it is not kept."""
    entered, release = threading.Event(), threading.Event()
    reads = Reads()

    def slow(name: str) -> dict[str, Any] | None:
        entered.set()
        assert release.wait(30)
        return reads(name)

    cache = DetailCache(slow, ttl_s=3600)
    t = threading.Thread(target=cache.get, args=("a",))
    t.start()
    assert entered.wait(30)
    cache.invalidate("a")
    release.set()
    t.join(30)
    assert cache.fresh("a") is None
