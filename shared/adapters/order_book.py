"""The merchant's order book in Redis: every order it created, and an index of the pending ones.

Keys (docs/order-book.md; one Redis, not Redis Cluster, since scripts touch several keys):
- `pn:order:{mch_id}:{mch_order}` HASH mch_id, mch_order, amt (li), pay_type, created_at (Unix
  seconds), state (pending|settled|expired|failed); optional outcome (event type), settled_at,
  reason, sweep_attempts, sweep_failures, transfer_amt (li a bank transfer was asked to pay),
  sweep_hopeless, sweep_stopped (why the sweeper stopped polling it), sweep_stopped_at.
- `pn:orders:pending` ZSET member `mch_id:mch_order`, score = when the sweeper next looks at it.
- `pn:expired:{mch_id}:{mch_order}` the marker that makes `order.expired` go out once.
- `pn:sweeper:lease` the lease of the one active sweeper.

The workers settle records in their own script (shared/adapters/outcomes.py): state=settled,
outcome, settled_at, and the member leaves the pending index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from shared.adapters.outages import REDIS_OUTAGES
from shared.domain.orders import OrderRecord, OrderState
from shared.protocol.fields import FieldError, check_text, parse_int
from shared.protocol.payment import MAX_AMOUNT_LI, order_key

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from redis.asyncio import Redis

    from shared.clock import Clock
    from shared.domain.sweep import SweepSchedule
    from shared.settings import Settings

ORDER_PREFIX: Final = "pn:order:"
PENDING_KEY: Final = "pn:orders:pending"
EXPIRED_PREFIX: Final = "pn:expired:"
SWEEPER_LEASE_KEY: Final = "pn:sweeper:lease"
ORDER_FIELDS: Final = ("mch_id", "mch_order", "amt", "pay_type", "created_at")
_COMPARED: Final = ("amt", "pay_type", "created_at")  # what a second recording must agree on


def order_record_key(mch_id: str, mch_order: str) -> str:
    return ORDER_PREFIX + order_key(mch_id, mch_order)


def record_key_of(member: bytes | str) -> str:
    """The record's key for a member of the pending index (members are `mch_id:mch_order`)."""
    return ORDER_PREFIX + (member.decode() if isinstance(member, bytes) else member)


def expired_marker_key(mch_id: str, mch_order: str) -> str:
    return EXPIRED_PREFIX + order_key(mch_id, mch_order)


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


class OrderConflictError(ValueError):
    """An order number already recorded with another amount, pay type or creation time."""

    def __init__(self, mch_id: str, mch_order: str, fields: Sequence[str]) -> None:
        super().__init__(f"order already recorded with a different {', '.join(fields)}")
        self.mch_id = mch_id
        self.mch_order = mch_order
        self.fields = tuple(fields)


class CorruptRecordError(ValueError):
    """A record hash that breaks the layout (a field missing or malformed); names the field."""


@dataclass(frozen=True, slots=True)
class OrderEntry:
    """A record with the book-keeping beside it."""

    record: OrderRecord
    outcome: str | None = None  # the event type the workers settled it with
    settled_at: float | None = None
    reason: str | None = None  # why it failed
    sweep_attempts: int = 0  # order queries the sweeper made
    sweep_failures: int = 0  # of those, failed in a row since the last answer
    # Failures in a row that retrying cannot fix (shared.domain.sweep.hopeless_reason), and why
    # the sweeper stopped polling the order once they reached their bound.
    sweep_hopeless: int = 0
    sweep_stopped: str | None = None


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


# Fills in missing order fields one by one (HSETNX), so a second recording never overwrites
# anything, least of all a settled state; only a newly set state enters the pending index.
# Returns {state_was_new, stored amt, stored pay_type, stored created_at}.
_RECORD = """
local fields = {'mch_id', 'mch_order', 'amt', 'pay_type', 'created_at'}
for i, name in ipairs(fields) do redis.call('HSETNX', KEYS[1], name, ARGV[i]) end
local new = redis.call('HSETNX', KEYS[1], 'state', 'pending')
if new == 1 then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[7])
  if tonumber(ARGV[8]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[8]) end
end
return {new, redis.call('HGET', KEYS[1], 'amt'), redis.call('HGET', KEYS[1], 'pay_type'),
        redis.call('HGET', KEYS[1], 'created_at')}
"""

# The sum a bank transfer was asked to pay, kept once: a later, different one is refused.
_TRANSFER_AMT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], 'transfer_amt', ARGV[1])
return redis.call('HGET', KEYS[1], 'transfer_amt')
"""

_MARK_FAILED = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'reason', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


# Claims due orders by pushing their score to the end of a hold: a sweeper that dies holding
# them lets them come due again, and a second sweeper never picks an order that one is querying.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return due
"""

# Schedules the next look at a still pending order (XX: an order the workers settled meanwhile
# has left the index and stays out). ARGV[3]: count a query; ARGV[4]: failures 'inc' or 'reset'
# (an answer: both counts of failures in a row start again); ARGV[5]: 'inc' a hopeless failure.
_RESCHEDULE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'sweep_attempts', 1) end
if ARGV[4] == 'inc' then redis.call('HINCRBY', KEYS[1], 'sweep_failures', 1)
elseif ARGV[4] == 'reset' then
  redis.call('HSET', KEYS[1], 'sweep_failures', 0, 'sweep_hopeless', 0)
end
if ARGV[5] == 'inc' then redis.call('HINCRBY', KEYS[1], 'sweep_hopeless', 1) end
return 1
"""

# The sweeper gives up on an order: out of the index, and a record that is still pending (or is
# broken) says why. Settled, expired and failed records are left as they are.
_STOP_SWEEPING = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'settled' or state == 'expired' or state == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'sweep_stopped', ARGV[2], 'sweep_stopped_at', ARGV[3])
return 1
"""

# Before publishing order.expired: 'emit' the first time (SET NX on the marker), 'done' once a
# publish was confirmed, 'gone' when the order is no longer pending. A marker still 'emitting'
# means an earlier attempt died between publish and confirm: emit again, with the same event id.
_BEGIN_EXPIRE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'gone'
end
local taken
if tonumber(ARGV[2]) > 0 then
  taken = redis.call('SET', KEYS[3], 'emitting', 'NX', 'EX', ARGV[2])
else
  taken = redis.call('SET', KEYS[3], 'emitting', 'NX')
end
if taken then return 'emit' end
if redis.call('GET', KEYS[3]) == 'emitted' then return 'done' end
return 'emit'
"""

_FINISH_EXPIRE = """
redis.call('SET', KEYS[3], 'emitted', 'KEEPTTL')
if redis.call('HGET', KEYS[1], 'state') == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'expired', 'expired_at', ARGV[2])
end
redis.call('ZREM', KEYS[2], ARGV[1])
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
        self._claim = redis.register_script(_CLAIM)
        self._reschedule = redis.register_script(_RESCHEDULE)
        self._stop_sweeping = redis.register_script(_STOP_SWEEPING)
        self._begin_expire = redis.register_script(_BEGIN_EXPIRE)
        self._finish_expire = redis.register_script(_FINISH_EXPIRE)

    @classmethod
    def from_settings(cls, redis: Redis, clock: Clock, settings: Settings) -> OrderBook:
        """Records live until their expiry plus the outcome retention (`OUTCOME_TTL_DAYS`)."""
        from shared.domain.sweep import SweepSchedule  # noqa: PLC0415 - runtime use only here

        schedule = SweepSchedule.scaled(
            time_scale=settings.time_scale, order_expiry=settings.order_expiry
        )
        ttl = int(schedule.expiry) + 1 + settings.outcome_ttl_days * 86_400
        return cls(redis, clock, schedule=schedule, record_ttl=ttl)

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
        new, *stored = await self._record(
            keys=[order_record_key(order.mch_id, order.mch_order), PENDING_KEY],
            args=[
                *values, created_at, repr(first_due), order_key(order.mch_id, order.mch_order),
                self._record_ttl,
            ],
        )  # fmt: skip
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
        await self._mark_failed(
            keys=[order_record_key(mch_id, mch_order), PENDING_KEY],
            args=[order_key(mch_id, mch_order), reason],
        )

    async def get(self, mch_id: str, mch_order: str) -> OrderRecord | None:
        return decode_record(await self._redis.hgetall(order_record_key(mch_id, mch_order)))

    async def entry(self, mch_id: str, mch_order: str) -> OrderEntry | None:
        return decode_entry(await self._redis.hgetall(order_record_key(mch_id, mch_order)))

    async def pending_count(self) -> int:
        return int(await self._redis.zcard(PENDING_KEY))

    # --- the sweeper's side -----------------------------------------------------------------

    async def claim_due(self, *, hold: float, limit: int) -> list[str]:
        """Members of the pending index due now, each hidden from other claims for `hold` s.

        A member that is not UTF-8 (written by something else) keeps its bytes as surrogate
        escapes, so the book's methods still find it, and `entries` reports it as corrupt."""
        now = self._clock.time()
        members: list[bytes] = await self._claim(
            keys=[PENDING_KEY], args=[repr(now), repr(now + hold), limit]
        )
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
        done = await self._reschedule(
            keys=[_record_key_raw(member), PENDING_KEY],
            args=[
                _raw(member), repr(due), "1" if queried else "0", failures,
                "inc" if hopeless else "keep",
            ],
        )  # fmt: skip
        return bool(done)

    async def stop_sweeping(self, member: str, reason: str) -> bool:
        """The sweeper gives up on an order: it leaves the index for good and its record (if
        still pending) gets `sweep_stopped` = `reason`. True when a record was marked."""
        done = await self._stop_sweeping(
            keys=[_record_key_raw(member), PENDING_KEY],
            args=[_raw(member), reason, repr(self._clock.time())],
        )
        return bool(done)

    async def drop(self, member: str) -> None:
        """Take a member out of the pending index (its record is gone or no longer pending)."""
        await self._redis.zrem(PENDING_KEY, _raw(member))

    async def begin_expire(self, record: OrderRecord) -> str:
        """'emit', 'done' or 'gone'; see the script's comment."""
        result = await self._begin_expire(
            keys=self._expire_keys(record), args=[record.order_key, self._record_ttl]
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    async def finish_expire(self, record: OrderRecord) -> None:
        """The order.expired event is published: mark it so, and the order expired."""
        await self._finish_expire(
            keys=self._expire_keys(record), args=[record.order_key, repr(self._clock.time())]
        )

    def _expire_keys(self, record: OrderRecord) -> list[str]:
        return [
            order_record_key(record.mch_id, record.mch_order),
            PENDING_KEY,
            expired_marker_key(record.mch_id, record.mch_order),
        ]


def _raw(member: str) -> bytes:
    """A member as Redis holds it (claim_due keeps undecodable bytes as surrogate escapes)."""
    return member.encode("utf-8", "surrogateescape")


def _record_key_raw(member: str) -> bytes:
    return ORDER_PREFIX.encode() + _raw(member)


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
