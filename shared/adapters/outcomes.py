"""The workers' Redis state: per-payment locks, write-once outcomes, and the durable retry set.

Each step of a settled notification is one Lua script on the payment's own keys (one hash slot,
shared.adapters.redis_keys), so the common path costs two round trips: `begin` (is there an
outcome? else take the lock and read the merchant's record) and `decide` (write the outcome
once, settle the order record, release the lock), plus a `ZREM` from the pending index when a
record was settled. Marking outcomes published is batched per commit cycle.

Keys (one Redis, a Sentinel pair, or a Redis Cluster):
- `pn:outcome:{mch_id:mch_order}` HASH type, id, event (the CloudEvent JSON), published 0|1,
  decided_at; expires after `PAYNOTIFY_OUTCOME_TTL_DAYS`.
- `pn:lock:{mch_id:mch_order}` the reconciliation lock (`SET NX PX`, token).
- `pn:retry:{retry:N}`, N = 0..15: the retry set's shards, ZSETs of deferred work, score = when
  it is due (Unix seconds).
- the order book's `pn:order:{...}` and `pn:orders:pending:{pending:N}` (docs/order-book.md):
  read and settled only through shared.adapters.order_book (its decoder, its `SETTLE_RECORD`
  fragment, `leave_pending`), which owns what they hold.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from typing import TYPE_CHECKING

from shared.adapters import redis_keys
from shared.adapters.order_book import (
    SETTLE_RECORD,
    decode_record,
    leave_pending,
    order_record_key,
    pending_index,
    record_key_of,
)
from shared.adapters.redis_client import Script, is_cluster
from shared.adapters.replication import ReplicatedWrites
from shared.adapters.schedules import ShardedSchedule
from shared.domain.orders import CorruptRecordError
from shared.ports import Busy, Decided, Locked, PublishedNotes, RecordedOutcome

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from redis.asyncio import Redis


outcome_key = redis_keys.outcome_key
lock_key = redis_keys.lock_key
# Outcome keys of different slots marked at once on a cluster (one script call per slot).
_MARK_CONCURRENCY = 8

# KEYS[3], the merchant's record, only when it is this payment's own order (same slot): a repeat
# payment's record is its origin order's, read by the caller once it holds the lock.
_BEGIN = """
local outcome = redis.call('HGETALL', KEYS[1])
if #outcome > 0 then return {1, outcome} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if #KEYS > 2 then return {2, redis.call('HGETALL', KEYS[3])} end
  return {2, {}}
end
return {3, {}}
"""

# Writes the outcome only if none exists; either way releases the caller's lock, and returns the
# outcome that stands (the existing one wins: two outcomes for one payment cannot both be kept).
# KEYS[3] is the payment's own order record (settled by the order book's fragment when ARGV[7]
# is '1'); the third value says whether it was, and the caller then has the order book take the
# order out of the pending index.
_DECIDE = (
    SETTLE_RECORD
    + """
local existing = redis.call('HGETALL', KEYS[1])
local written = 0
local settled = 0
if #existing == 0 then
  redis.call('HSET', KEYS[1], 'type', ARGV[2], 'id', ARGV[3], 'event', ARGV[4],
             'published', '0', 'decided_at', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  if ARGV[7] == '1' then settled = settle_record(KEYS[3], ARGV[2], ARGV[5]) end
  written = 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return {written, existing, settled}
"""
)

# Releases the caller's lock (compare and delete).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

_MARK_PUBLISHED = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'published', '1') end
end
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def _hash(flat: Sequence[bytes]) -> dict[bytes | str, bytes | str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _outcome(flat: Sequence[bytes]) -> RecordedOutcome:
    h = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
    return RecordedOutcome(
        type=h[b"type"].decode(),
        event_id=h[b"id"].decode(),
        event=h[b"event"],
        published=h.get(b"published") == b"1",
    )


class OutcomeStore(PublishedNotes):
    """The outcome ledger (shared.ports.OutcomeLedger) on Redis: the scripts above, registered
    once on one client."""

    def __init__(
        self,
        redis: Redis,
        *,
        outcome_ttl_seconds: int,
        lock_ttl_ms: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        """`wait_replicas` > 0: an outcome write returns only once that many replicas hold it
        (else `NotReplicatedError`), see shared.adapters.replication."""
        super().__init__()
        self._redis = redis
        self.writes = ReplicatedWrites(redis, replicas=wait_replicas, timeout_ms=wait_timeout_ms)
        self._ttl = outcome_ttl_seconds
        self._lock_ttl_ms = lock_ttl_ms
        self._begin = Script(redis, _BEGIN)
        self._decide = Script(redis, _DECIDE)
        self._release = Script(redis, _RELEASE)
        self._pending = pending_index(redis)
        self.retries = ShardedSchedule(redis, redis_keys.retry_keys())
        self._renew = Script(redis, _RENEW)
        self._mark = Script(redis, _MARK_PUBLISHED)

    async def begin(
        self, order_key: str, mch_id: str, record_order: str
    ) -> Decided | Locked | Busy:
        token = secrets.token_hex(16)
        record_key = order_record_key(mch_id, record_order)
        own = record_key == record_key_of(order_key)
        kind, payload = await self._begin(
            keys=[outcome_key(order_key), lock_key(order_key), *([record_key] if own else [])],
            args=[token, self._lock_ttl_ms],
        )
        if kind == 1:
            return Decided(_outcome(payload))
        if kind == 2:
            try:
                if not own:
                    payload = await self._origin_record(order_key, token, record_key)
                record = decode_record(_hash(payload))
            except CorruptRecordError:
                # Not this process's to repair: free the order for the dead letter that follows.
                await self.release(order_key, token)
                raise
            return Locked(token, record)
        return Busy()

    async def _origin_record(
        self, order_key: str, token: str, record_key: str
    ) -> list[bytes | str]:
        try:
            found = await self._redis.hgetall(record_key)
        except BaseException:
            await self.release(order_key, token)
            raise
        return [item for pair in found.items() for item in pair]

    async def renew(self, order_key: str, token: str) -> bool:
        return bool(await self._renew(keys=[lock_key(order_key)], args=[token, self._lock_ttl_ms]))

    async def decide(
        self,
        order_key: str,
        token: str,
        *,
        event_type: str,
        event_id: str,
        event: bytes,
        decided_at: float,
        settle_record: tuple[str, str] | None,
    ) -> RecordedOutcome:
        """Write the outcome unless one exists; return the one that stands. `settle_record`
        (mch_id, mch_order) marks that order-book record settled in the same step."""
        mch_id, mch_order = settle_record if settle_record is not None else ("", "")
        # Without a record to settle, KEYS[3] is still this order's (one slot), and left alone.
        record_key = (
            order_record_key(mch_id, mch_order) if settle_record else record_key_of(order_key)
        )
        written, existing, settled = await self.writes.run(
            self._decide,
            keys=[outcome_key(order_key), lock_key(order_key), record_key],
            args=[
                token, event_type, event_id, event, f"{decided_at:.3f}", self._ttl,
                "1" if settle_record else "0",
            ],
        )  # fmt: skip
        if settled:
            await leave_pending(self._pending, mch_id, mch_order)
        if written:
            return RecordedOutcome(event_type, event_id, event, published=False)
        # Another worker's outcome stands; its own WAIT may have fallen short: wait for it here.
        await self.confirm(order_key)
        return _outcome(existing)

    async def confirm(self, order_key: str) -> None:
        """Before an outcome found recorded but not published is published: with
        `wait_replicas`, return once that many replicas hold it (else `NotReplicatedError`)."""
        await self.writes.confirm(outcome_key(order_key))

    async def aclose(self) -> None:
        """Close what the store opened itself (a cluster's node clients for waited writes)."""
        await self.writes.aclose()

    async def defer(self, order_key: str, token: str | None, due: float, member: bytes) -> None:
        """Put `member` in the retry set, due at `due`, then release the lock (if held). In that
        order: a lock left behind expires by itself, and a failure before the member is stored
        raises, so the caller keeps the work (the message is not committed)."""
        await self.retries.add(member, due)
        if token:
            await self.release(order_key, token)

    async def release(self, order_key: str, token: str) -> None:
        await self._release(keys=[lock_key(order_key)], args=[token])

    async def mark_published(self, order_keys: Iterable[str]) -> None:
        """One round trip for a batch on one Redis (one per slot, a few at a time, on a
        cluster); an outcome that expired meanwhile is not re-created."""
        keys = [outcome_key(key) for key in order_keys]
        if not keys:
            return
        if not is_cluster(self._redis):
            await self._mark(keys=keys, args=[])
            return
        by_slot: defaultdict[int, list[str]] = defaultdict(list)
        for key in keys:
            by_slot[redis_keys.slot(key)].append(key)
        gate = asyncio.Semaphore(_MARK_CONCURRENCY)

        async def mark(group: list[str]) -> None:
            async with gate:
                await self._mark(keys=group, args=[])

        await asyncio.gather(*(mark(group) for group in by_slot.values()))

    async def claim_retries(self, now: float, lease: float, limit: int) -> list[bytes]:
        return await self.retries.claim(now, now + lease, limit)

    async def finish_retry(self, member: bytes) -> None:
        await self.retries.remove(member)


async def retry_figures(store: OutcomeStore, now: float) -> tuple[int, int]:
    """(work in the retry set, of which due by `now`): for metrics."""
    return await store.retries.count(), sum(await store.retries.due_counts(now))
