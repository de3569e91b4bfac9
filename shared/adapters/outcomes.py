"""The workers' Redis state: per-payment locks, write-once outcomes, and the durable retry set.

Each step of a settled notification is one Lua script, so the common path costs two round trips:
`begin` (is there an outcome? else take the lock and read the merchant's record) and `decide`
(write the outcome once, settle the order record, release the lock). Marking outcomes published
is batched per commit cycle.

Keys (one Redis, or a Sentinel pair; not Redis Cluster, since scripts touch several keys):
- `pn:outcome:{mch_id}:{mch_order}` HASH type, id, event (the CloudEvent JSON), published 0|1,
  decided_at; expires after `PAYNOTIFY_OUTCOME_TTL_DAYS`.
- `pn:lock:{mch_id}:{mch_order}` the reconciliation lock (`SET NX PX`, token).
- `pn:retry` ZSET of deferred work, score = when it is due (Unix seconds).
- the order book's `pn:order:...` and `pn:orders:pending` (docs/order-book.md).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.adapters.order_book import (
    PENDING_KEY,
    CorruptRecordError,
    decode_record,
    order_record_key,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from redis.asyncio import Redis

    from shared.domain.orders import OrderRecord

RETRY_KEY = "pn:retry"


def outcome_key(order_key: str) -> str:
    return f"pn:outcome:{order_key}"


def lock_key(order_key: str) -> str:
    return f"pn:lock:{order_key}"


_BEGIN = """
local outcome = redis.call('HGETALL', KEYS[1])
if #outcome > 0 then return {1, outcome} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, redis.call('HGETALL', KEYS[3])}
end
return {3, {}}
"""

# Writes the outcome only if none exists; either way releases the caller's lock, and returns the
# outcome that stands (the existing one wins: two outcomes for one payment cannot both be kept).
_DECIDE = """
local existing = redis.call('HGETALL', KEYS[1])
local written = 0
if #existing == 0 then
  redis.call('HSET', KEYS[1], 'type', ARGV[2], 'id', ARGV[3], 'event', ARGV[4],
             'published', '0', 'decided_at', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  if ARGV[8] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('HSET', KEYS[3], 'state', 'settled', 'outcome', ARGV[2], 'settled_at', ARGV[5])
    redis.call('ZREM', KEYS[4], ARGV[7])
  end
  written = 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return {written, existing}
"""

# Releases the caller's lock and schedules the work again (or only releases, with no member).
_DEFER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3]) end
return 1
"""

# Claims due retries by pushing their score to the end of a lease: a worker that dies while
# holding them lets them come due again, so no deferred work is lost.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return due
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


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    type: str
    event_id: str
    event: bytes  # the CloudEvent exactly as first decided: re-published as is, never recomputed
    published: bool


@dataclass(frozen=True, slots=True)
class Decided:
    """The outcome already decided for this payment."""

    outcome: RecordedOutcome


@dataclass(frozen=True, slots=True)
class Locked:
    """The caller holds the lock; `record` is the merchant's record of the order (or None)."""

    token: str
    record: OrderRecord | None


@dataclass(frozen=True, slots=True)
class Busy:
    """Another worker holds the lock."""


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


class OutcomeStore:
    """The scripts above, registered once on one client."""

    def __init__(self, redis: Redis, *, outcome_ttl_seconds: int, lock_ttl_ms: int) -> None:
        self._redis = redis
        self._ttl = outcome_ttl_seconds
        self._lock_ttl_ms = lock_ttl_ms
        self._begin = redis.register_script(_BEGIN)
        self._decide = redis.register_script(_DECIDE)
        self._defer = redis.register_script(_DEFER)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._mark = redis.register_script(_MARK_PUBLISHED)

    async def begin(
        self, order_key: str, mch_id: str, record_order: str
    ) -> Decided | Locked | Busy:
        token = secrets.token_hex(16)
        kind, payload = await self._begin(
            keys=[
                outcome_key(order_key),
                lock_key(order_key),
                order_record_key(mch_id, record_order),
            ],
            args=[token, self._lock_ttl_ms],
        )
        if kind == 1:
            return Decided(_outcome(payload))
        if kind == 2:
            try:
                record = decode_record(_hash(payload))
            except CorruptRecordError:
                # Not this process's to repair: free the order for the dead letter that follows.
                await self.release(order_key, token)
                raise
            return Locked(token, record)
        return Busy()

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
        written, existing = await self._decide(
            keys=[
                outcome_key(order_key),
                lock_key(order_key),
                order_record_key(mch_id, mch_order) if settle_record else "pn:none",
                PENDING_KEY,
            ],
            args=[
                token, event_type, event_id, event, f"{decided_at:.3f}", self._ttl,
                f"{mch_id}:{mch_order}", "1" if settle_record else "0",
            ],
        )  # fmt: skip
        if written:
            return RecordedOutcome(event_type, event_id, event, published=False)
        return _outcome(existing)

    async def defer(self, order_key: str, token: str | None, due: float, member: bytes) -> None:
        """Release the lock (if held) and put `member` in the retry set, due at `due`."""
        await self._defer(
            keys=[lock_key(order_key), RETRY_KEY], args=[token or "", f"{due:.3f}", member]
        )

    async def release(self, order_key: str, token: str) -> None:
        await self._defer(keys=[lock_key(order_key), RETRY_KEY], args=[token, "0", ""])

    async def mark_published(self, order_keys: Iterable[str]) -> None:
        """One round trip for a batch; an outcome that expired meanwhile is not re-created."""
        keys = [outcome_key(key) for key in order_keys]
        if keys:
            await self._mark(keys=keys, args=[])

    async def claim_retries(self, now: float, lease: float, limit: int) -> list[bytes]:
        members: list[bytes] = await self._claim(
            keys=[RETRY_KEY], args=[f"{now:.3f}", f"{now + lease:.3f}", limit]
        )
        return members

    async def finish_retry(self, member: bytes) -> None:
        await self._redis.zrem(RETRY_KEY, member)
