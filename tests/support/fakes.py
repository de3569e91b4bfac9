"""In-memory fakes of the ports (shared.ports), for unit tests of the rules in milliseconds.

Each fake with state passes the same contract suite as its adapter (tests/contract), so it
cannot drift from the real thing; time is the injected clock's (a `ManualClock` in tests).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from shared.domain.orders import (
    CorruptRecordError,
    OrderConflictError,
    OrderEntry,
    OrderRecord,
    OrderState,
)
from shared.ports import Busy, Decided, Locked, PublishedNotes, RecordedOutcome
from shared.protocol.errors import OrderNotFound
from shared.protocol.models import OrderQueryAnswer
from shared.protocol.payment import order_key, report_fields

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from shared.clock import Clock
    from shared.domain.sweep import SweepMark, SweepSchedule
    from shared.protocol.payment import PaymentReport


@dataclass
class _Outcome:
    outcome: RecordedOutcome
    expires_at: float  # clock.time()


class MemoryOrderBook:
    """shared.ports.Orders in memory: records (with their book-keeping), the pending index,
    the expiry markers and the sweep mark. Record TTLs are not modelled."""

    def __init__(self, clock: Clock, *, schedule: SweepSchedule | None = None) -> None:
        self._clock = clock
        self._schedule = schedule
        self.entries_by_key: dict[str, OrderEntry] = {}
        self.pending: dict[str, float] = {}  # member -> due
        self._markers: dict[str, str] = {}  # order key -> 'emitting' | 'emitted'
        self._mark: SweepMark | None = None

    def put(self, record: OrderRecord) -> None:
        """A record as it stands (any state), outside the index: for tests' set-ups."""
        self.entries_by_key[record.order_key] = OrderEntry(record)

    def settle(self, order_key: str, outcome: str, at: float) -> bool:
        """The outcome ledger's settling of a pending record (Redis: the same script)."""
        entry = self.entries_by_key.get(order_key)
        if entry is None:
            return False
        settled = replace(entry.record, state=OrderState.SETTLED)
        self.entries_by_key[order_key] = replace(
            entry, record=settled, outcome=outcome, settled_at=at
        )
        self.pending.pop(order_key, None)
        return True

    async def record(self, order: OrderRecord) -> bool:
        key = order_key(order.mch_id, order.mch_order)
        entry = self.entries_by_key.get(key)
        new = entry is None
        if entry is None:
            entry = OrderEntry(replace(order, state=OrderState.PENDING, transfer_amt=None))
            self.entries_by_key[key] = entry
        if entry.record.state is OrderState.PENDING and entry.sweep_stopped is None:
            first = (
                float(order.created_at)
                if self._schedule is None
                else self._schedule.first_due(order.created_at)
            )
            self.pending.setdefault(key, first)
        stored = entry.record
        differing = [
            name
            for name in ("amt", "pay_type", "created_at")
            if getattr(stored, name) != getattr(order, name)
        ]
        if differing:
            raise OrderConflictError(order.mch_id, order.mch_order, differing)
        if order.transfer_amt is not None:
            await self.record_transfer_amount(order.mch_id, order.mch_order, order.transfer_amt)
        return new

    async def record_transfer_amount(self, mch_id: str, mch_order: str, amt: int) -> None:
        key = order_key(mch_id, mch_order)
        entry = self.entries_by_key.get(key)
        if entry is None:
            return
        if entry.record.transfer_amt is None:
            record = replace(entry.record, transfer_amt=amt)
            self.entries_by_key[key] = replace(entry, record=record)
        elif entry.record.transfer_amt != amt:
            raise OrderConflictError(mch_id, mch_order, ["transfer_amt"])

    async def mark_failed(self, mch_id: str, mch_order: str, reason: str) -> None:
        key = order_key(mch_id, mch_order)
        entry = self.entries_by_key.get(key)
        if entry is None or entry.record.state is not OrderState.PENDING:
            return
        failed = replace(entry.record, state=OrderState.FAILED)
        self.entries_by_key[key] = replace(entry, record=failed, reason=reason)
        self.pending.pop(key, None)

    async def get(self, mch_id: str, mch_order: str) -> OrderRecord | None:
        entry = self.entries_by_key.get(order_key(mch_id, mch_order))
        return None if entry is None else entry.record

    async def entry(self, mch_id: str, mch_order: str) -> OrderEntry | None:
        return self.entries_by_key.get(order_key(mch_id, mch_order))

    async def claim_due(self, *, hold: float, limit: int) -> list[str]:
        now = self._clock.time()
        due = sorted((when, member) for member, when in self.pending.items() if when <= now)
        claimed = [member for _, member in due[:limit]]
        for member in claimed:
            self.pending[member] = now + hold
        return claimed

    async def entries(
        self, members: Sequence[str]
    ) -> list[tuple[str, OrderEntry | CorruptRecordError | None]]:
        return [(member, self.entries_by_key.get(member)) for member in members]

    def _pending_entry(self, member: str) -> OrderEntry | None:
        entry = self.entries_by_key.get(member)
        return entry if entry is not None and entry.record.state is OrderState.PENDING else None

    async def reschedule(
        self, member: str, due: float, *, queried: bool, failed: bool | None, hopeless: bool = False
    ) -> bool:
        entry = self._pending_entry(member)
        if entry is None:
            self.pending.pop(member, None)
            return False
        if queried:
            entry = replace(entry, sweep_attempts=entry.sweep_attempts + 1)
        if failed is True:
            entry = replace(entry, sweep_failures=entry.sweep_failures + 1)
        elif failed is False:
            entry = replace(entry, sweep_failures=0, sweep_hopeless=0)
        if hopeless:
            entry = replace(entry, sweep_hopeless=entry.sweep_hopeless + 1)
        self.entries_by_key[member] = entry
        if member in self.pending:
            self.pending[member] = due
        return True

    async def stop_sweeping(self, member: str, reason: str) -> bool:
        entry = self._pending_entry(member)
        self.pending.pop(member, None)
        if entry is None:
            return False
        self.entries_by_key[member] = replace(entry, sweep_stopped=reason)
        return True

    async def drop(self, member: str) -> None:
        self.pending.pop(member, None)

    async def begin_expire(self, record: OrderRecord) -> str:
        key = record.order_key
        if self._pending_entry(key) is None:
            self.pending.pop(key, None)
            return "gone"
        marker = self._markers.setdefault(key, "emitting")
        return "done" if marker == "emitted" else "emit"

    async def finish_expire(self, record: OrderRecord) -> None:
        key = record.order_key
        self._markers[key] = "emitted"
        entry = self._pending_entry(key)
        if entry is not None:
            expired = replace(entry.record, state=OrderState.EXPIRED)
            self.entries_by_key[key] = replace(entry, record=expired)
        self.pending.pop(key, None)

    async def mark_sweep(self, mark: SweepMark) -> None:
        self._mark = mark

    async def last_sweep(self) -> SweepMark | None:
        return self._mark


class MemoryLedger(PublishedNotes):
    """shared.ports.OutcomeLedger in memory, with the merchant's order book beside it (as
    Redis holds both: settling an outcome settles the record in the same step). Outcomes
    expire on the clock's `time`, locks on its `monotonic`."""

    def __init__(
        self,
        clock: Clock,
        *,
        outcome_ttl_seconds: int,
        lock_ttl_ms: int,
        book: MemoryOrderBook | None = None,
    ) -> None:
        super().__init__()
        self.book = book if book is not None else MemoryOrderBook(clock)
        self._clock = clock
        self._ttl = outcome_ttl_seconds
        self._lock_ttl = lock_ttl_ms / 1000
        self._outcomes: dict[str, _Outcome] = {}
        self._locks: dict[str, tuple[str, float]] = {}  # order key -> (token, expires_at)
        self.retries: dict[bytes, float] = {}  # member -> due
        self._tokens = (f"t{n}" for n in itertools.count())

    def put_record(self, record: OrderRecord) -> None:
        self.book.put(record)

    @property
    def records(self) -> dict[str, OrderRecord]:
        """The order book's records, by order key."""
        return {key: entry.record for key, entry in self.book.entries_by_key.items()}

    def _live(self, key: str) -> RecordedOutcome | None:
        found = self._outcomes.get(key)
        if found is None or found.expires_at <= self._clock.time():
            self._outcomes.pop(key, None)
            return None
        return found.outcome

    def _holder(self, key: str) -> str | None:
        lock = self._locks.get(key)
        if lock is None or lock[1] <= self._clock.monotonic():
            self._locks.pop(key, None)
            return None
        return lock[0]

    async def begin(
        self, order_key: str, mch_id: str, record_order: str
    ) -> Decided | Locked | Busy:
        outcome = self._live(order_key)
        if outcome is not None:
            return Decided(outcome)
        if self._holder(order_key) is not None:
            return Busy()
        token = next(self._tokens)
        self._locks[order_key] = (token, self._clock.monotonic() + self._lock_ttl)
        entry = self.book.entries_by_key.get(f"{mch_id}:{record_order}")
        return Locked(token, None if entry is None else entry.record)

    async def renew(self, order_key: str, token: str) -> bool:
        if self._holder(order_key) != token:
            return False
        self._locks[order_key] = (token, self._clock.monotonic() + self._lock_ttl)
        return True

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
        existing = self._live(order_key)
        if existing is None:
            written = RecordedOutcome(event_type, event_id, event, published=False)
            self._outcomes[order_key] = _Outcome(written, self._clock.time() + self._ttl)
            if settle_record is not None:
                self.book.settle(f"{settle_record[0]}:{settle_record[1]}", event_type, decided_at)
        await self.release(order_key, token)
        return existing if existing is not None else written

    async def defer(self, order_key: str, token: str | None, due: float, member: bytes) -> None:
        self.retries[member] = due
        if token:
            await self.release(order_key, token)

    async def release(self, order_key: str, token: str) -> None:
        if self._holder(order_key) == token:
            del self._locks[order_key]

    async def mark_published(self, order_keys: Iterable[str]) -> None:
        for key in order_keys:
            outcome = self._live(key)
            if outcome is not None:
                self._outcomes[key].outcome = replace(outcome, published=True)

    async def confirm(self, order_key: str) -> None:
        """One copy in memory: nothing to wait for (replication: tests/integration)."""

    async def claim_retries(self, now: float, lease: float, limit: int) -> list[bytes]:
        due = sorted((when, member) for member, when in self.retries.items() if when <= now)
        claimed = [member for _, member in due[:limit]]
        for member in claimed:
            self.retries[member] = now + lease
        return claimed

    async def finish_retry(self, member: bytes) -> None:
        self.retries.pop(member, None)


class MemoryLocks:
    """shared.ports.Locks in memory; a lock lives `ttl_ms` on the clock's `monotonic`."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._held: dict[str, tuple[str, float]] = {}  # key -> (token, expires_at)
        self._tokens = itertools.count()

    def _holder(self, key: str) -> str | None:
        held = self._held.get(key)
        if held is None or held[1] <= self._clock.monotonic():
            self._held.pop(key, None)
            return None
        return held[0]

    async def acquire(self, key: str, ttl_ms: int, *, holder: str = "") -> str | None:
        if "/" in holder:
            raise ValueError("a lock holder's name must not contain '/'")
        if self._holder(key) is not None:
            return None
        token = f"{holder}/{next(self._tokens)}" if holder else str(next(self._tokens))
        self._held[key] = (token, self._clock.monotonic() + ttl_ms / 1000)
        return token

    async def renew(self, key: str, token: str, ttl_ms: int) -> bool:
        if self._holder(key) != token:
            return False
        self._held[key] = (token, self._clock.monotonic() + ttl_ms / 1000)
        return True

    async def release(self, key: str, token: str) -> bool:
        if self._holder(key) != token:
            return False
        del self._held[key]
        return True


@dataclass
class CapturingProducer:
    """shared.ports.Producer: what was sent, in order, as (topic, key, value)."""

    sent: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def send_and_wait(
        self, topic: str, value: bytes, key: str, headers: list[tuple[str, bytes]] | None = None
    ) -> object:
        self.sent.append((topic, key, value))
        return None

    def on(self, topic: str) -> list[tuple[str, bytes]]:
        return [(key, value) for sent_topic, key, value in self.sent if sent_topic == topic]


@dataclass
class ScriptedPlatform:
    """The order query (shared.ports.OrderQuery), answering from a dict: a report, an
    exception to raise, or 103 (order not found) for an order it was not told about."""

    answers: dict[str, PaymentReport | Exception] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
        self.calls.append(mch_order)
        answer = self.answers.get(mch_order, OrderNotFound(103, "order not found"))
        if isinstance(answer, Exception):
            raise answer
        # The answer's signed fields as a verified answer carries them (what the sweeper
        # forwards); the signature itself is not checked past the client.
        raw = {"code": "1", "msg": "ok", **report_fields(answer), "sign": "0" * 32}
        return OrderQueryAnswer(report=answer, key_id="sha256:test", raw=raw)


@dataclass
class CapturingSink:
    """A topic (shared.ports.Sink): what was published, in order, as (key, value)."""

    published: list[tuple[str, bytes]] = field(default_factory=list)

    async def publish(self, key: str, value: bytes) -> None:
        self.published.append((key, value))

    def keys(self) -> list[str]:
        return [key for key, _ in self.published]


def pending_record(mch_id: str, mch_order: str, amt: int = 1000, pay_type: int = 10) -> OrderRecord:
    """A merchant's pending record of an order, created at a fixed time."""
    return OrderRecord(mch_id, mch_order, amt, pay_type, 1_700_000_000)
