"""The runner: concurrent across keys, in order within a key, bounded in what it holds."""

from __future__ import annotations

import asyncio

import pytest

from workers.keyed import KeyedRunner

pytestmark = pytest.mark.unit


async def test_same_key_runs_in_submission_order_and_one_at_a_time() -> None:
    """Jobs of one key never overlap and finish in the order they were submitted."""
    runner = KeyedRunner(limit=10)
    seen: list[int] = []
    running = 0

    def job(n: int):
        async def run() -> None:
            nonlocal running
            running += 1
            assert running == 1
            await asyncio.sleep(0)
            seen.append(n)
            running -= 1

        return run

    for n in range(5):
        await runner.submit("order-1", job(n))
    async with asyncio.timeout(5):
        await runner.wait_idle()
    assert seen == [0, 1, 2, 3, 4]


async def test_different_keys_do_not_wait_for_each_other() -> None:
    """A job blocked on one key does not hold up a job of another key."""
    runner = KeyedRunner(limit=10)
    release = asyncio.Event()
    other_done = asyncio.Event()

    async def blocked() -> None:
        await release.wait()

    async def other() -> None:
        other_done.set()

    await runner.submit("slow", blocked)
    await runner.submit("fast", other)
    async with asyncio.timeout(5):
        await other_done.wait()
    release.set()
    async with asyncio.timeout(5):
        await runner.wait_idle()


async def test_submit_waits_while_the_limit_is_held() -> None:
    """The limit is backpressure: a submit beyond it waits until a job finishes."""
    runner = KeyedRunner(limit=2)
    release = asyncio.Event()

    async def blocked() -> None:
        await release.wait()

    await runner.submit("a", blocked)
    await runner.submit("b", blocked)
    third = asyncio.create_task(runner.submit("c", blocked))
    for _ in range(20):  # a free slot would let it finish within a few loop turns
        await asyncio.sleep(0)
    assert not third.done()
    assert runner.held == 2
    release.set()
    async with asyncio.timeout(5):
        await third
        await runner.wait_idle()


async def test_a_failing_job_is_recorded_for_the_owner() -> None:
    """A job that raises is not swallowed: the runner keeps it for the consumer to stop on."""
    runner = KeyedRunner(limit=2)

    async def broken() -> None:
        raise RuntimeError("bug")

    await runner.submit("k", broken)
    async with asyncio.timeout(5):
        await runner.wait_idle()
    assert isinstance(runner.failure, RuntimeError)


async def test_the_watchdog_sees_a_job_older_than_its_bound() -> None:
    """`overdue` names the running jobs past a bound, oldest first; a finished job is gone."""
    runner = KeyedRunner(4)
    release = asyncio.Event()

    async def stuck() -> None:
        await release.wait()

    await runner.submit("m:slow", stuck)
    await asyncio.sleep(0.05)
    await runner.submit("m:later", stuck)
    await asyncio.sleep(0.01)
    assert [key for key, _ in runner.overdue(0.0)] == ["m:slow", "m:later"]
    assert runner.overdue(10.0) == []
    release.set()
    await runner.wait_idle()
    assert runner.overdue(0.0) == []


async def test_cancel_is_bounded_when_a_job_loses_its_cancel() -> None:
    """A job whose cancel is swallowed (as inside a redis-py call) no longer holds up shutdown:
    `cancel` returns at its bound and says how many jobs still run."""
    runner = KeyedRunner(4)
    release = asyncio.Event()

    async def deaf() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # the cancel is lost: it goes on until told otherwise

    async def polite() -> None:
        await asyncio.sleep(3600)

    await runner.submit("m:deaf", deaf)
    await runner.submit("m:polite", polite)
    await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        assert await runner.cancel(bound=0.2) == 1
    release.set()
    async with asyncio.timeout(5):
        assert await runner.cancel(bound=1.0) == 0
