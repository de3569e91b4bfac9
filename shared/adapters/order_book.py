"""The merchant's order book in Redis: every order it created, and an index of the pending ones.

Keys (docs/order-book.md; shared.adapters.redis_keys: one Redis or a Redis Cluster):
- `pn:order:{mch_id:mch_order}` HASH mch_id, mch_order, amt (li), pay_type, created_at (Unix
  seconds), state (pending|settled|expired|failed); optional outcome (event type), settled_at,
  reason, sweep_attempts, sweep_failures, transfer_amt (li a bank transfer was asked to pay),
  sweep_hopeless, sweep_stopped (why the sweeper stopped polling it), sweep_stopped_at.
- `pn:orders:pending:{pending:N}`, N = 0..15: the pending index, ZSETs of members
  `mch_id:mch_order` (each in the shard `shared.adapters.redis_keys.shard_of` names), score =
  when the sweeper next looks at it.
- `pn:expired:{mch_id:mch_order}` the marker that makes `order.expired` go out once.
- `pn:sweeper:lease` the lease of the one active sweeper.

A record's keys share a slot; the index's shards are elsewhere, so a script changes the record
and the index is changed by a command after it, in an order whose loss is harmless: a member whose
record is no longer pending is dropped when the sweeper next claims it, and recording an order
again puts a pending one back in the index.

The workers settle a record in the same step as they write the payment's outcome: the outcome
store's script (shared/adapters/outcomes.py) runs this module's `SETTLE_RECORD` fragment, and the
store then calls `leave_pending`. What a settled record holds is written here only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from shared.adapters import redis_keys
from shared.adapters.outages import REDIS_OUTAGES
from shared.adapters.redis_keys import (
    EXPIRED_PREFIX,
    ORDER_PREFIX,
    SWEEPER_LAST_RUN_KEY,
    SWEEPER_LEASE_KEY,
    pending_keys,
)
from shared.adapters.schedules import ShardedSchedule
from shared.domain.orders import (
    CorruptRecordError,
    OrderConflictError,
    OrderEntry,
    OrderRecord,
    OrderState,
)
from shared.domain.sweep import SweepMark
from shared.protocol.fields import FieldError, check_text, parse_int
from shared.protocol.payment import MAX_AMOUNT_LI, order_key

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from redis.asyncio import Redis

    from shared.clock import Clock
    from shared.domain.sweep import SweepSchedule

__all__ = ["EXPIRED_PREFIX", "ORDER_PREFIX", "SWEEPER_LEASE_KEY"]  # re-exported for callers

ORDER_FIELDS: Final = ("mch_id", "mch_order", "amt", "pay_type", "created_at")
_COMPARED: Final = ("amt", "pay_type", "created_at")  # what a second recording must agree on


def order_record_key(mch_id: str, mch_order: str) -> str:
    return redis_keys.order_record_key(order_key(mch_id, mch_order))


def record_key_of(member: bytes | str) -> str:
    """The record's key for a member of the pending index (members are `mch_id:mch_order`)."""
    return redis_keys.order_record_key(member.decode() if isinstance(member, bytes) else member)


def pending_index(redis: Redis) -> ShardedSchedule:
    """The pending index on `redis` (its shards: `shared.adapters.redis_keys.pending_keys`)."""
    return ShardedSchedule(redis, pending_keys())


async def leave_pending(index: ShardedSchedule, mch_id: str, mch_order: str) -> None:
    """Take a settled order out of the pending index (after `SETTLE_RECORD` said it settled it;
    a member left behind is dropped at the sweeper's next claim: its record is settled)."""
    await index.remove(_raw(order_key(mch_id, mch_order)))


def expired_marker_key(mch_id: str, mch_order: str) -> str:
    return redis_keys.expired_marker_key(order_key(mch_id, mch_order))


async def pending_figures(book: OrderBook, now: float) -> tuple[int, int]:
    """(orders in the pending index, of which due by `now`): for metrics."""
    return await book.pending.count(), sum(await book.pending.due_counts(now))


class OrderLike(Protocol):
    """What recording needs of an order: `OrderRecord` and `CreateOrderRequest` both fit."""

    @property
    def mch_id(self) -> str: ...
    @property
    def mch_order(self) -> str: ...
    @property
    def amt(self) -> int: ...
    @property
    def pay_type(self) -> int: ...
    @property
    def created_at(self) -> int: ...


def _text(mapping: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in mapping.items()
    }


def decode_entry(mapping: Mapping[bytes | str, bytes | str]) -> OrderEntry | None:
    """An entry from an HGETALL result. None when the hash is empty, or holds only what an
    outcome write left (no order fields): the merchant never recorded that order."""
    try:
        raw = _text(mapping)
    except UnicodeDecodeError:
        raise CorruptRecordError("order record has a field that is not UTF-8 text") from None
    if not any(name in raw for name in ORDER_FIELDS):
        return None
    try:
        return _entry(raw)
    except FieldError as exc:
        raise CorruptRecordError(f"order record field {exc.field!r} {exc.rule}") from None


def _required(raw: Mapping[str, str], name: str) -> str:
    if name not in raw:
        raise FieldError(name, "is missing")
    return raw[name]


def _entry(raw: Mapping[str, str]) -> OrderEntry:
    state = _required(raw, "state")
    if state not in set(OrderState):
        raise FieldError("state", "is not a known state")
    record = OrderRecord(
        mch_id=check_text("mch_id", _required(raw, "mch_id"), max_length=32),
        mch_order=check_text("mch_order", _required(raw, "mch_order"), max_length=50),
        amt=parse_int("amt", _required(raw, "amt"), maximum=MAX_AMOUNT_LI),
        pay_type=parse_int("pay_type", _required(raw, "pay_type"), minimum=1),
        created_at=parse_int("created_at", _required(raw, "created_at")),
        state=OrderState(state),
        transfer_amt=(
            parse_int("transfer_amt", raw["transfer_amt"], minimum=1, maximum=MAX_AMOUNT_LI)
            if raw.get("transfer_amt")
            else None
        ),
    )
    settled_at = raw.get("settled_at") or None
    try:
        settled = None if settled_at is None else float(settled_at)
    except ValueError:
        raise FieldError("settled_at", "is not a number") from None
    return OrderEntry(
        record=record,
        outcome=raw.get("outcome") or None,
        settled_at=settled,
        reason=raw.get("reason") or None,
        sweep_attempts=parse_int("sweep_attempts", raw.get("sweep_attempts") or "0"),
        sweep_failures=parse_int("sweep_failures", raw.get("sweep_failures") or "0"),
        sweep_hopeless=parse_int("sweep_hopeless", raw.get("sweep_hopeless") or "0"),
        sweep_stopped=raw.get("sweep_stopped") or None,
    )


def decode_record(mapping: Mapping[bytes | str, bytes | str]) -> OrderRecord | None:
    """The record from an HGETALL result; None when there is none (see `decode_entry`)."""
    entry = decode_entry(mapping)
    return None if entry is None else entry.record


# The order book's part of a worker's decision, for a script of the outcome store to run in the
# same step as it writes the outcome (one slot: the record's key shares the payment's braces).
# `settle_record(key, outcome, settled_at)` marks an existing record settled by that outcome and
# returns 1, else 0 (no record: an order the merchant never recorded, or one that expired).
SETTLE_RECORD: Final = """
local function settle_record(key, outcome, settled_at)
  if redis.call('EXISTS', key) == 0 then return 0 end
  redis.call('HSET', key, 'state', 'settled', 'outcome', outcome, 'settled_at', settled_at)
  return 1
end
"""

# Fills in missing order fields one by one (HSETNX), so a second recording never overwrites
# anything, least of all a settled state. Returns {state_was_new, stored amt, stored pay_type,
# stored created_at, 1 when the order should be in the pending index (pending, and the sweeper
# has not given up on it)}: the caller then adds it there (ZADD NX), which also puts back one
# whose first recording died between the two steps.
_RECORD = """
local fields = {'mch_id', 'mch_order', 'amt', 'pay_type', 'created_at'}
for i, name in ipairs(fields) do redis.call('HSETNX', KEYS[1], name, ARGV[i]) end
local new = redis.call('HSETNX', KEYS[1], 'state', 'pending')
if new == 1 and tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
local index = 0
if redis.call('HGET', KEYS[1], 'state') == 'pending'
   and not redis.call('HGET', KEYS[1], 'sweep_stopped') then index = 1 end
return {new, redis.call('HGET', KEYS[1], 'amt'), redis.call('HGET', KEYS[1], 'pay_type'),
        redis.call('HGET', KEYS[1], 'created_at'), index}
"""

# The sum a bank transfer was asked to pay, kept once: a later, different one is refused.
_TRANSFER_AMT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], 'transfer_amt', ARGV[1])
return redis.call('HGET', KEYS[1], 'transfer_amt')
"""

# Then the member leaves the index (the caller's next command; a member left behind is dropped
# when the sweeper next claims it and finds the record failed).
_MARK_FAILED = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'reason', ARGV[1])
return 1
"""

# Counts the sweeper's query of a still pending order; the caller then schedules its next look
# (ZADD XX: an order the workers settled meanwhile has left the index and stays out), or drops
# the member when this returns 0. ARGV[1]: count a query; ARGV[2]: failures 'inc' or 'reset'
# (an answer: both counts of failures in a row start again); ARGV[3]: 'inc' a hopeless failure.
_RESCHEDULE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[1], 'sweep_attempts', 1) end
if ARGV[2] == 'inc' then redis.call('HINCRBY', KEYS[1], 'sweep_failures', 1)
elseif ARGV[2] == 'reset' then
  redis.call('HSET', KEYS[1], 'sweep_failures', 0, 'sweep_hopeless', 0)
end
if ARGV[3] == 'inc' then redis.call('HINCRBY', KEYS[1], 'sweep_hopeless', 1) end
return 1
"""

# The sweeper gives up on an order: a record that is still pending (or is broken) says why, then
# (the caller's next command) the member leaves the index; in that order, so a member is never
# out of the index with its record still unmarked. Settled, expired and failed records are left
# as they are.
_STOP_SWEEPING = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'settled' or state == 'expired' or state == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'sweep_stopped', ARGV[1], 'sweep_stopped_at', ARGV[2])
return 1
"""

# Before publishing order.expired: 'emit' the first time (SET NX on the marker), 'done' once a
# publish was confirmed, 'gone' when the order is no longer pending. A marker still 'emitting'
# means an earlier attempt died between publish and confirm: emit again, with the same event id.
# KEYS: the record and its marker (one slot); the caller drops the member on 'gone'.
_BEGIN_EXPIRE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 'gone' end
local taken
if tonumber(ARGV[1]) > 0 then
  taken = redis.call('SET', KEYS[2], 'emitting', 'NX', 'EX', ARGV[1])
else
  taken = redis.call('SET', KEYS[2], 'emitting', 'NX')
end
if taken then return 'emit' end
if redis.call('GET', KEYS[2]) == 'emitted' then return 'done' end
return 'emit'
"""

# Then the caller drops the member (a member left behind is dropped at its next claim: the
# record is no longer pending).
_FINISH_EXPIRE = """
redis.call('SET', KEYS[2], 'emitted', 'KEEPTTL')
if redis.call('HGET', KEYS[1], 'state') == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'expired', 'expired_at', ARGV[1])
end
return 1
"""


class OrderBook:
    """The order book on one Redis client; build once per process."""

    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        *,
        schedule: SweepSchedule | None = None,
        record_ttl: int = 0,
    ) -> None:
        """`schedule` sets a new order's first sweep time (without one: its creation time, and
        the sweeper defers it to its schedule); `record_ttl` > 0 makes records expire that many
        seconds after they were recorded."""
        self._redis = redis
        self._clock = clock
        self._schedule = schedule
        self._record_ttl = record_ttl
        self._record = redis.register_script(_RECORD)
        self._mark_failed = redis.register_script(_MARK_FAILED)
        self._transfer_amt = redis.register_script(_TRANSFER_AMT)
        self.pending = pending_index(redis)
        self._reschedule = redis.register_script(_RESCHEDULE)
        self._stop_sweeping = redis.register_script(_STOP_SWEEPING)
        self._begin_expire = redis.register_script(_BEGIN_EXPIRE)
        self._finish_expire = redis.register_script(_FINISH_EXPIRE)

    async def record_pending(self, order: OrderLike) -> None:
        """Record an order as pending, once. Recording the same order again changes nothing
        (whatever its state); an order number already recorded with another amount, pay type or
        creation time raises `OrderConflictError` and changes nothing either."""
        await self.record(order)

    async def record(self, order: OrderLike) -> bool:
        """`record_pending` that tells whether this call created the record."""
        values = (order.mch_id, order.mch_order, str(order.amt), str(order.pay_type))
        created_at = str(order.created_at)
        first_due = (
            float(order.created_at)
            if self._schedule is None
            else self._schedule.first_due(order.created_at)
        )
        new, *stored, index = await self._record(
            keys=[order_record_key(order.mch_id, order.mch_order)],
            args=[*values, created_at, self._record_ttl],
        )
        if index:
            await self.pending.add(
                _raw(order_key(order.mch_id, order.mch_order)), first_due, only="nx"
            )
        given = (str(order.amt), str(order.pay_type), created_at)
        differing = [
            name
            for name, have, want in zip(_COMPARED, stored, given, strict=True)
            if (have.decode() if isinstance(have, bytes) else have) != want
        ]
        if differing:
            raise OrderConflictError(order.mch_id, order.mch_order, differing)
        transfer_amt = getattr(order, "transfer_amt", None)
        if transfer_amt is not None:
            await self.record_transfer_amount(order.mch_id, order.mch_order, transfer_amt)
        return bool(new)

    async def record_transfer_amount(self, mch_id: str, mch_order: str, amt: int) -> None:
        """Keep the sum the create-order answer asked a bank transfer's payer to pay: the only
        sum at which that transfer succeeds. Kept once; a different sum later raises
        `OrderConflictError` and changes nothing; an order never recorded is left alone."""
        stored = await self._transfer_amt(
            keys=[order_record_key(mch_id, mch_order)], args=[str(amt)]
        )
        if stored is not None and int(stored) != amt:
            raise OrderConflictError(mch_id, mch_order, ["transfer_amt"])

    async def mark_failed(self, mch_id: str, mch_order: str, reason: str) -> None:
        """The platform refused to create the order: a pending record becomes failed and leaves
        the index. A record in any other state is left as it is."""
        if await self._mark_failed(keys=[order_record_key(mch_id, mch_order)], args=[reason]):
            await self.pending.remove(_raw(order_key(mch_id, mch_order)))

    async def get(self, mch_id: str, mch_order: str) -> OrderRecord | None:
        return decode_record(await self._redis.hgetall(order_record_key(mch_id, mch_order)))

    async def entry(self, mch_id: str, mch_order: str) -> OrderEntry | None:
        return decode_entry(await self._redis.hgetall(order_record_key(mch_id, mch_order)))

    async def pending_count(self) -> int:
        return await self.pending.count()

    # --- the sweeper's side -----------------------------------------------------------------

    async def claim_due(self, *, hold: float, limit: int) -> list[str]:
        """Members of the pending index due now, each hidden from other claims for `hold` s.

        A member that is not UTF-8 (written by something else) keeps its bytes as surrogate
        escapes, so the book's methods still find it, and `entries` reports it as corrupt."""
        now = self._clock.time()
        members = await self.pending.claim(now, now + hold, limit)
        return [member.decode("utf-8", "surrogateescape") for member in members]

    async def entries(
        self, members: Sequence[str]
    ) -> list[tuple[str, OrderEntry | CorruptRecordError | None]]:
        """The entries of claimed members in one round trip; a broken record (or a key that
        is not a hash) comes back as its `CorruptRecordError` rather than hiding the others."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hgetall(_record_key_raw(member))
            hashes = await pipe.execute(raise_on_error=False)
        found: list[tuple[str, OrderEntry | CorruptRecordError | None]] = []
        for member, mapping in zip(members, hashes, strict=True):
            try:
                found.append((member, _decode_claimed(member, mapping)))
            except CorruptRecordError as exc:
                found.append((member, exc))
        return found

    async def reschedule(
        self,
        member: str,
        due: float,
        *,
        queried: bool,
        failed: bool | None,
        hopeless: bool = False,
    ) -> bool:
        """Look at a pending order again at `due`; `failed` True counts a failed query, False
        (an answer) resets the counts of failures in a row, None leaves them; `hopeless` counts
        a failure that retrying cannot fix. False when the order is no longer pending."""
        failures = "keep" if failed is None else ("inc" if failed else "reset")
        pending = await self._reschedule(
            keys=[_record_key_raw(member)],
            args=["1" if queried else "0", failures, "inc" if hopeless else "keep"],
        )
        if pending:
            await self.pending.add(_raw(member), due, only="xx")
        else:
            await self.pending.remove(_raw(member))
        return bool(pending)

    async def stop_sweeping(self, member: str, reason: str) -> bool:
        """The sweeper gives up on an order: it leaves the index for good and its record (if
        still pending) gets `sweep_stopped` = `reason`. True when a record was marked."""
        done = await self._stop_sweeping(
            keys=[_record_key_raw(member)], args=[reason, repr(self._clock.time())]
        )
        await self.pending.remove(_raw(member))
        return bool(done)

    async def drop(self, member: str) -> None:
        """Take a member out of the pending index (its record is gone or no longer pending)."""
        await self.pending.remove(_raw(member))

    async def begin_expire(self, record: OrderRecord) -> str:
        """'emit', 'done' or 'gone'; see the script's comment."""
        result = await self._begin_expire(keys=self._expire_keys(record), args=[self._record_ttl])
        found = result.decode() if isinstance(result, bytes) else str(result)
        if found == "gone":
            await self.pending.remove(_raw(record.order_key))
        return found

    async def finish_expire(self, record: OrderRecord) -> None:
        """The order.expired event is published: mark it so, and the order expired."""
        await self._finish_expire(keys=self._expire_keys(record), args=[repr(self._clock.time())])
        await self.pending.remove(_raw(record.order_key))

    async def mark_sweep(self, mark: SweepMark) -> None:
        """The sweeper leader's last look (`pn:sweeper:last_run`), for `paynotify status`."""
        await self._redis.set(SWEEPER_LAST_RUN_KEY, mark.encode(), ex=_MARK_TTL_S)

    async def last_sweep(self) -> SweepMark | None:
        raw = await self._redis.get(SWEEPER_LAST_RUN_KEY)
        if raw is None:
            return None
        return SweepMark.decode(raw if isinstance(raw, bytes) else str(raw).encode())

    def _expire_keys(self, record: OrderRecord) -> list[str]:
        return [
            order_record_key(record.mch_id, record.mch_order),
            expired_marker_key(record.mch_id, record.mch_order),
        ]


_MARK_TTL_S = 7 * 86400  # a mark older than this says nothing a lease would not


def _raw(member: str) -> bytes:
    """A member as Redis holds it (claim_due keeps undecodable bytes as surrogate escapes)."""
    return member.encode("utf-8", "surrogateescape")


def _record_key_raw(member: str) -> bytes:
    return _raw(redis_keys.order_record_key(member))


def _decode_claimed(
    member: str, mapping: Mapping[bytes | str, bytes | str] | Exception
) -> OrderEntry | None:
    if isinstance(mapping, Exception):
        if isinstance(mapping, REDIS_OUTAGES):
            raise mapping
        raise CorruptRecordError(f"order record cannot be read ({type(mapping).__name__})")
    try:
        member.encode()
    except UnicodeEncodeError:
        raise CorruptRecordError("pending index member is not UTF-8 text") from None
    return decode_entry(mapping)
