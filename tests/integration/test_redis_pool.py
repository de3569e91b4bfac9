"""The single-server pool's promises (shared.adapters.redis_client.GatedConnectionPool), on a real
Redis: with every connection busy a caller waits for one (never redis-py's MaxConnectionsError),
the wait is bounded (POOL_TIMEOUT, then a ConnectionError, which callers take for an outage),
no more connections are opened than asked for, and every connection keeps its socket timeout.
A plain `redis.asyncio.ConnectionPool` of the same size fails the first of these (the control
test below shows it)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from redis import exceptions
from redis.asyncio import ConnectionPool, Redis

from shared.adapters import redis_client
from shared.adapters.outages import REDIS_OUTAGES
from shared.adapters.redis_client import SOCKET_TIMEOUT, GatedConnectionPool, connect_redis
from tests.support.redis_db import in_db

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.integration

CONNECTIONS = 4
CALLERS = 300


@pytest.fixture
def single_url(redis_url: str) -> str:
    if redis_client.is_cluster_url(redis_url):
        pytest.skip("the single-server pool (a cluster client gates its commands itself)")
    return in_db(redis_url, 9)


@pytest.fixture
async def gated(single_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(single_url, max_connections=CONNECTIONS)
    try:
        yield client
    finally:
        await client.aclose()


def _pool(client: Redis) -> GatedConnectionPool:
    pool = client.connection_pool
    assert isinstance(pool, GatedConnectionPool)
    return pool


async def _clients_named(single_url: str, name: str) -> int:
    observer = Redis.from_url(single_url)
    try:
        return sum(1 for entry in await observer.client_list() if entry.get("name") == name)
    finally:
        await observer.aclose()


async def test_more_callers_than_connections_all_succeed_on_few_connections(
    single_url: str,
) -> None:
    name = f"pooltest-{uuid.uuid4().hex[:8]}"
    client = connect_redis(f"{single_url}?client_name={name}", max_connections=CONNECTIONS)
    key = f"test:pool:{uuid.uuid4().hex}"
    try:
        # A script call per caller, as the worker makes them (EVALSHA through the pool).
        incr = client.register_script("return redis.call('INCR', KEYS[1])")
        results = await asyncio.gather(*(incr(keys=[key]) for _ in range(CALLERS)))
        assert sorted(results) == list(range(1, CALLERS + 1))
        assert await _clients_named(single_url, name) <= CONNECTIONS
    finally:
        await client.delete(key)
        await client.aclose()


async def test_a_plain_pool_of_that_size_refuses_instead_of_waiting(single_url: str) -> None:
    """The control: what the gate prevents (redis-py's plain pool raises past its size)."""
    client = Redis.from_pool(ConnectionPool.from_url(single_url, max_connections=CONNECTIONS))
    try:
        results = await asyncio.gather(
            *(client.ping() for _ in range(CALLERS)), return_exceptions=True
        )
        assert any(isinstance(result, exceptions.MaxConnectionsError) for result in results)
    finally:
        await client.aclose()


async def _until_waiting(pool: GatedConnectionPool, callers: int) -> None:
    """Until `callers` wait at the pool's gate (5 s at most)."""
    async with asyncio.timeout(5):
        while len(pool._gate._waiters or ()) < callers:
            await asyncio.sleep(0.005)


async def test_a_caller_waits_for_a_connection_given_back(gated: Redis) -> None:
    pool = _pool(gated)
    held = [await pool.get_connection() for _ in range(CONNECTIONS)]
    waiting = asyncio.create_task(gated.ping())
    await _until_waiting(pool, 1)
    assert not waiting.done()  # no error: it waits
    await pool.release(held.pop())
    assert await asyncio.wait_for(waiting, 5) is True
    for connection in held:
        await pool.release(connection)
    # Every turn came back: as many callers as connections get one at once.
    assert await asyncio.gather(*(gated.ping() for _ in range(CONNECTIONS))) == [True] * 4


async def test_the_wait_is_bounded_and_counts_as_an_outage(
    single_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_client, "POOL_TIMEOUT", 0.3)
    client = connect_redis(single_url, max_connections=2)
    pool = _pool(client)
    held = [await pool.get_connection() for _ in range(2)]
    try:
        began = time.monotonic()
        with pytest.raises(exceptions.ConnectionError) as raised:
            await client.ping()
        waited = time.monotonic() - began
        assert 0.25 <= waited < 3
        assert not isinstance(raised.value, exceptions.MaxConnectionsError)
        assert isinstance(raised.value, REDIS_OUTAGES)
        # The caller that gave up took no turn with it.
        await pool.release(held.pop())
        assert await client.ping() is True
    finally:
        for connection in held:
            await pool.release(connection)
        await client.aclose()


async def test_a_cancelled_waiter_takes_no_turn(gated: Redis) -> None:
    pool = _pool(gated)
    held = [await pool.get_connection() for _ in range(CONNECTIONS)]
    waiters = [asyncio.create_task(gated.ping()) for _ in range(3)]
    await _until_waiting(pool, 3)  # cancelled while waiting, not before they got there
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    for connection in held:
        await pool.release(connection)
    results = await asyncio.gather(*(gated.ping() for _ in range(CALLERS)))
    assert results == [True] * CALLERS
    assert not pool._in_use_connections  # every connection came back


async def test_every_connection_keeps_its_socket_timeout(gated: Redis) -> None:
    pool = _pool(gated)
    assert pool.connection_kwargs["socket_timeout"] == SOCKET_TIMEOUT
    connection = await pool.get_connection()
    try:
        assert connection.socket_timeout == SOCKET_TIMEOUT
    finally:
        await pool.release(connection)
