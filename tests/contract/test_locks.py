"""The locks' contract (shared.ports.Locks: the sweeper's lease), on Redis
(shared.adapters.redis_lock.Locks) and on the in-memory fake (tests/support/fakes.py)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from shared.adapters.redis_lock import Locks
from shared.clock import ManualClock
from tests.support.fakes import MemoryLocks
from tests.support.redis_db import open_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from shared.ports import Locks as LocksPort

TTL_MS = 300


@dataclass
class Backend:
    locks: LocksPort
    advance: Callable[[float], Awaitable[None]]


@pytest.fixture
async def backend(redis_or_memory: str | None) -> AsyncIterator[Backend]:
    if redis_or_memory is None:
        clock = ManualClock()

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        yield Backend(MemoryLocks(clock), advance)
        return
    redis = open_redis(redis_or_memory)
    try:
        yield Backend(Locks(redis), asyncio.sleep)
    finally:
        await redis.aclose()


def _key() -> str:
    return f"pn:test:lock:{uuid.uuid4().hex}"


async def test_a_lock_is_held_by_one_token_at_a_time(backend: Backend) -> None:
    key = _key()
    token = await backend.locks.acquire(key, TTL_MS, holder="pod-1")
    assert token is not None
    assert token.startswith("pod-1/")
    assert await backend.locks.acquire(key, TTL_MS, holder="pod-2") is None
    assert not await backend.locks.release(key, "pod-2/not-the-token")
    assert await backend.locks.release(key, token)
    assert not await backend.locks.release(key, token)  # already free
    assert await backend.locks.acquire(key, TTL_MS) is not None


async def test_only_the_holder_renews_and_an_unrenewed_lock_expires(backend: Backend) -> None:
    kept, lapsed = _key(), _key()
    kept_token = await backend.locks.acquire(kept, TTL_MS)
    lapsed_token = await backend.locks.acquire(lapsed, TTL_MS)
    assert kept_token is not None
    assert lapsed_token is not None
    assert not await backend.locks.renew(kept, "not-the-token", TTL_MS)
    await backend.advance(TTL_MS / 1000 * 0.6)
    assert await backend.locks.renew(kept, kept_token, TTL_MS)
    await backend.advance(TTL_MS / 1000 * 0.6)
    assert await backend.locks.acquire(kept, TTL_MS) is None  # renewed: still held
    assert await backend.locks.acquire(lapsed, TTL_MS) is not None  # expired: free again
    assert not await backend.locks.renew(lapsed, lapsed_token, TTL_MS)


async def test_a_holder_name_with_a_slash_is_refused(backend: Backend) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        await backend.locks.acquire(_key(), TTL_MS, holder="a/b")
