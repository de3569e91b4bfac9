"""A Redis database of a test module's own on the session's Redis, emptied before and after."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from redis.asyncio import Redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def in_db(url: str, db: int) -> str:
    """The Redis URL with its database replaced (a `db=` argument would lose to the URL's)."""
    return urlsplit(url)._replace(path=f"/{db}").geturl()


@contextlib.asynccontextmanager
async def clean_db(redis_url: str, db: int) -> AsyncIterator[Redis]:
    client = Redis.from_url(in_db(redis_url, db))
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()
