"""The Ray control actor's contract, run directly on asyncio (no Ray), and its import weight."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from search.backends._ray_control import Control


def test_reports_come_back_in_order_with_the_stop_flag() -> None:
    async def scenario() -> None:
        c = Control()
        assert await c.report("a", b"1") is False
        await c.stop(["a"])
        assert await c.report("a", b"2") is True
        assert await c.report("b", b"3") is False
        assert await c.drain() == [("a", b"1"), ("a", b"2"), ("b", b"3")]
        assert await c.drain() == []
        await c.forget(["a"])
        assert await c.report("a", b"4") is False

    asyncio.run(scenario())


def test_wait_is_a_long_poll() -> None:
    async def scenario() -> None:
        c = Control()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await c.wait(0.05) is False  # nothing came: returns after its timeout
        assert loop.time() - t0 >= 0.05
        await c.report("a", b"1")
        t0 = loop.time()
        assert await c.wait(5.0, linger_s=1.0) is True  # already queued: at once, no linger
        assert loop.time() - t0 < 0.5
        await c.drain()

        async def later() -> None:
            await asyncio.sleep(0.05)
            await c.report("a", b"2")
            await asyncio.sleep(0.01)
            await c.report("b", b"3")  # arrives while wait lingers: same batch

        t0 = loop.time()
        task = asyncio.create_task(later())
        assert await c.wait(5.0, linger_s=0.2) is True  # woken by the report, long before 5 s
        assert 0.05 <= loop.time() - t0 < 2.0
        await task
        assert await c.drain() == [("a", b"2"), ("b", b"3")]

    asyncio.run(scenario())


@pytest.mark.slow
def test_actor_module_does_not_import_torch() -> None:
    """The actor's process imports only search.backends._ray_control; on a small machine its start-up
    competes with the workers' torch imports."""
    code = ("import sys, search.backends._ray_control; "
            "print(sorted(m for m in ('torch', 'trials', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
