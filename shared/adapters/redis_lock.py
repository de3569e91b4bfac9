"""Per-key locks on Redis: `SET NX PX` with a random token, compare-and-delete to release,
compare-and-extend to renew. A lock only keeps honest workers apart; correctness never depends on
it alone (outcomes are written once, see the workers)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Both scripts act only when the caller still owns the lock, so a worker whose lock expired during
# a pause can neither free nor extend another worker's lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Locks:
    """Lock operations on one Redis client; build once per process."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    async def acquire(self, key: str, ttl_ms: int, *, holder: str = "") -> str | None:
        """The lock's token when taken, None when somebody else holds it. `holder` (text
        without `/`) names who holds it for people reading the key: `holder/random`."""
        if "/" in holder:
            raise ValueError("a lock holder's name must not contain '/'")
        token = f"{holder}/{secrets.token_hex(16)}" if holder else secrets.token_hex(16)
        taken = await self._redis.set(key, token, nx=True, px=ttl_ms)
        return token if taken else None

    async def renew(self, key: str, token: str, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[key], args=[token, ttl_ms]))

    async def release(self, key: str, token: str) -> bool:
        return bool(await self._release(keys=[key], args=[token]))
