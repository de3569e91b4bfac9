"""shared.adapters.redis_client.TimedWriteConnection keeps redis-py's promises on a command's
write: a peer that stops reading makes the write fail after `socket_timeout` (a
redis.exceptions.TimeoutError, which callers take for an outage) and closes the connection; a
peer that answers gets the command as redis-py would send it. Loopback sockets, no Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis import exceptions
from redis.asyncio import Redis

from shared.adapters.outages import REDIS_OUTAGES
from shared.adapters.redis_client import GatedConnectionPool, TimedWriteConnection


def _client(port: int, socket_timeout: float) -> Redis:
    pool = GatedConnectionPool(
        host="127.0.0.1",
        port=port,
        max_connections=2,
        socket_timeout=socket_timeout,
        # No handshake (HELLO, CLIENT SETINFO) on connect: these peers are not Redis.
        protocol=2,
        driver_info=None,
    )
    assert pool.connection_class is TimedWriteConnection
    return Redis.from_pool(pool)


async def test_a_write_the_peer_never_reads_times_out_and_disconnects() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_read(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = _client(port, socket_timeout=0.3)
    try:
        began = time.monotonic()
        with pytest.raises(exceptions.TimeoutError, match="writing") as raised:
            # Far more than the socket buffers hold: the write itself has to wait.
            await client.set("k", b"x" * (64 << 20))
        assert isinstance(raised.value, REDIS_OUTAGES)
        assert 0.25 <= time.monotonic() - began < 5
        pool = client.connection_pool
        assert all(not connection.is_connected for connection in pool._available_connections)
    finally:
        await client.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_command_is_sent_as_redis_py_packs_it() -> None:
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readuntil(b"\r\nv\r\n")
        received.append(data)
        writer.write(b"+OK\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = _client(port, socket_timeout=2.0)
    try:
        assert await client.set("k", "v") is True
        assert received == [b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"]
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_a_write_the_socket_takes_whole_arms_no_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The write deadline costs a timer only when the write could wait: a small command the
    socket takes at once drains with nothing buffered (the worker sends thousands a second)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while command := await reader.read(4096):  # one small command per read here
            writer.write(b"+PONG\r\n" if b"PING" in command else b"+OK\r\n")
            await writer.drain()
        writer.close()

    armed: list[float | None] = []
    real_timeout = asyncio.timeout

    def counting_timeout(delay: float | None) -> asyncio.Timeout:
        armed.append(delay)
        return real_timeout(delay)

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = _client(port, socket_timeout=2.0)
    try:
        await client.ping()  # connected before counting (the handshake is not the write)
        monkeypatch.setattr(asyncio, "timeout", counting_timeout)
        assert await client.set("k", "v") is True
        monkeypatch.undo()
        assert armed == []
    finally:
        monkeypatch.undo()
        await client.aclose()
        server.close()
        await server.wait_closed()
