"""A durable schedule (members scored by when they are due) split over shard keys.

The sweeper's pending index and the workers' retry set are each `SHARDS` sorted sets with hash
tags of their own (shared.adapters.redis_keys), so on Redis Cluster their writes spread over
several slots and nodes. A member's shard follows from its bytes (members are bytes here: an
index member that is not UTF-8 must still be found), so adding, moving and removing
it is one command on one key. A claim reads how many members are due in each shard (one
pipeline), shares its limit fairly among the shards that have some (`fair_quotas`), and claims
from each shard with its one-key script.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal, cast

from shared.adapters.redis_keys import shard_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis

# Claims due members by pushing their score to the end of a hold: a process that dies while
# holding them lets them come due again, and no other claim takes them meanwhile.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return due
"""


def fair_quotas(due: Sequence[int], limit: int, first: int) -> list[int]:
    """How many to claim from each shard: `limit` shared as evenly as the due counts allow, one
    at a time round the shards from `first` (so with a limit smaller than the shards that have
    due members, successive claims, each starting one shard later, reach them all in turn)."""
    quotas = [0] * len(due)
    left = limit
    while left > 0:
        given = 0
        for step in range(len(due)):
            i = (first + step) % len(due)
            if left > 0 and quotas[i] < due[i]:
                quotas[i] += 1
                left -= 1
                given += 1
        if given == 0:
            break
    return quotas


class ShardedSchedule:
    """One schedule on one client; build once per process (claims rotate their first shard)."""

    def __init__(self, redis: Redis, keys: Sequence[str]) -> None:
        self._redis = redis
        self.keys = tuple(keys)
        self._claim = redis.register_script(_CLAIM)
        self._first = 0

    def key_of(self, member: bytes) -> str:
        return self.keys[shard_of(member, len(self.keys))]

    async def add(
        self, member: bytes, due: float, *, only: Literal["nx", "xx"] | None = None
    ) -> None:
        await self._redis.zadd(self.key_of(member), {member: due}, nx=only == "nx", xx=only == "xx")

    async def remove(self, member: bytes) -> None:
        await self._redis.zrem(self.key_of(member), member)

    async def score(self, member: bytes) -> float | None:
        found = await self._redis.zscore(self.key_of(member), member)
        return None if found is None else float(found)

    async def count(self) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.zcard(key)
            return sum(int(n) for n in await pipe.execute())

    async def due_counts(self, now: float) -> list[int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.zcount(key, "-inf", repr(now))
            return [int(n) for n in await pipe.execute()]

    async def claim(self, now: float, until: float, limit: int) -> list[bytes]:
        """Up to `limit` members due at `now`, each hidden from other claims until `until`."""
        quotas = fair_quotas(await self.due_counts(now), limit, self._first)
        self._first = (self._first + 1) % len(self.keys)
        # Each shard's claim on its own: one that fails (Redis going away midway) must not
        # hide the members the others claimed, which nobody would then look at until `until`.
        batches = await asyncio.gather(
            *(
                self._claim(keys=[key], args=[repr(now), repr(until), quota])
                for key, quota in zip(self.keys, quotas, strict=True)
                if quota > 0
            ),
            return_exceptions=True,
        )
        claimed = [m for batch in batches if not isinstance(batch, BaseException) for m in batch]
        failed = [batch for batch in batches if isinstance(batch, BaseException)]
        if failed and not claimed:
            raise failed[0]
        return claimed

    async def members(self) -> list[bytes]:
        """Every member, shard by shard (tests and migrations; a schedule may be large)."""
        found: list[bytes] = []
        for key in self.keys:
            found.extend(cast("list[bytes]", await self._redis.zrange(key, 0, -1)))
        return found
