"""In-memory fakes of the ports (shared.ports), for unit tests of the rules in milliseconds.

Each fake with state passes the same contract suite as its adapter (tests/contract), so it
cannot drift from the real thing; time is the injected clock's (a `ManualClock` in tests).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from shared.domain.orders import OrderRecord, OrderState
from shared.ports import Busy, Decided, Locked, PublishedNotes, RecordedOutcome
from shared.protocol.errors import OrderNotFound
from shared.protocol.models import OrderQueryAnswer

if TYPE_CHECKING:
    from collections.abc import Iterable

    from shared.clock import Clock
    from shared.protocol.payment import PaymentReport


@dataclass
class _Outcome:
    outcome: RecordedOutcome
    expires_at: float  # clock.time()


class MemoryLedger(PublishedNotes):
    """shared.ports.OutcomeLedger in memory, with the merchant's order records beside it (as
    Redis holds both). Outcomes expire on the clock's `time`, locks on its `monotonic`."""

    def __init__(self, clock: Clock, *, outcome_ttl_seconds: int, lock_ttl_ms: int) -> None:
        super().__init__()
        self._clock = clock
        self._ttl = outcome_ttl_seconds
        self._lock_ttl = lock_ttl_ms / 1000
        self._outcomes: dict[str, _Outcome] = {}
        self._locks: dict[str, tuple[str, float]] = {}  # order key -> (token, expires_at)
        self.records: dict[str, OrderRecord] = {}  # by order key
        self.retries: dict[bytes, float] = {}  # member -> due
        self._tokens = (f"t{n}" for n in itertools.count())

    def put_record(self, record: OrderRecord) -> None:
        self.records[record.order_key] = record

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
        return Locked(token, self.records.get(f"{mch_id}:{record_order}"))

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
                record = self.records.get(f"{settle_record[0]}:{settle_record[1]}")
                if record is not None:
                    self.records[record.order_key] = replace(record, state=OrderState.SETTLED)
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

    async def claim_retries(self, now: float, lease: float, limit: int) -> list[bytes]:
        due = sorted((when, member) for member, when in self.retries.items() if when <= now)
        claimed = [member for _, member in due[:limit]]
        for member in claimed:
            self.retries[member] = now + lease
        return claimed

    async def finish_retry(self, member: bytes) -> None:
        self.retries.pop(member, None)


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
        return OrderQueryAnswer(report=answer, key_id="sha256:test", raw={})


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
