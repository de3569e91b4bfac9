"""The ports: what the workers' and the sweeper's rules need from the world, each defined once.

Adapters implement them: the outcome ledger on Redis (`shared.adapters.outcomes.OutcomeStore`),
the platform's client (`shared.platform.client.PlatformClient`), Kafka
(`shared.adapters.kafka.TopicSink`, and the acks=all producer of `start_producer`). Each port
with state has an in-memory fake in `tests/support/fakes.py`, and one contract suite runs on
both (`tests/contract/`), so the fake cannot drift from the adapter. The clock is
`shared.clock.Clock`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from shared.domain.orders import CorruptRecordError, OrderEntry, OrderRecord
    from shared.domain.sweep import SweepMark
    from shared.protocol.models import OrderQueryAnswer


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


class OutcomeLedger(Protocol):
    """Per payment (its order key): a lock, a write-once outcome, the order record it settles;
    and the durable retry set of deferred work."""

    async def begin(
        self, order_key: str, mch_id: str, record_order: str
    ) -> Decided | Locked | Busy:
        """The outcome if one is recorded; else the lock (with the merchant's record of
        `mch_id:record_order`) if free; else Busy."""
        ...

    async def renew(self, order_key: str, token: str) -> bool:
        """Extend the lock if `token` still holds it."""
        ...

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
        """Write the outcome unless one exists (write-once), settle `settle_record` (mch_id,
        mch_order) with it, release the lock; return the outcome that stands."""
        ...

    async def defer(self, order_key: str, token: str | None, due: float, member: bytes) -> None:
        """Put `member` in the retry set, due at `due`, then release the lock (if held)."""
        ...

    async def release(self, order_key: str, token: str) -> None:
        """Free the lock if `token` holds it."""
        ...

    def note_published(self, order_key: str) -> None:
        """This process published the payment's outcome; marked at the next flush."""
        ...

    def is_published(self, order_key: str, outcome: RecordedOutcome) -> bool:
        """Marked published, or noted so by this process since the last flush."""
        ...

    async def flush_published(self) -> None:
        """Mark every outcome noted published; before any commit of their messages."""
        ...

    async def mark_published(self, order_keys: Iterable[str]) -> None:
        """Mark these outcomes published; one that expired meanwhile is not re-created."""
        ...

    async def confirm(self, order_key: str) -> None:
        """Before an outcome found recorded but unpublished is published: return once the
        replicas asked for hold it (`PAYNOTIFY_REDIS_WAIT_REPLICAS`), else raise an outage."""
        ...

    async def claim_retries(self, now: float, lease: float, limit: int) -> list[bytes]:
        """Up to `limit` retry members due at `now`, hidden from other claims for `lease`."""
        ...

    async def finish_retry(self, member: bytes) -> None:
        """Remove a settled member from the retry set."""
        ...


class Orders(Protocol):
    """The merchant's order book: each order's record, and the index of pending orders the
    sweeper looks at when they come due. Members of the index are `mch_id:mch_order`."""

    async def record(self, order: OrderRecord) -> bool:
        """Record an order as pending, once; True when this call created the record. An order
        number already recorded with another amount, pay type or creation time raises
        `OrderConflictError` and changes nothing; a `transfer_amt` is kept once likewise."""
        ...

    async def mark_failed(self, mch_id: str, mch_order: str, reason: str) -> None:
        """The platform refused to create the order: a pending record becomes failed and leaves
        the index; a record in any other state is left as it is."""
        ...

    async def get(self, mch_id: str, mch_order: str) -> OrderRecord | None: ...

    async def entry(self, mch_id: str, mch_order: str) -> OrderEntry | None: ...

    async def claim_due(self, *, hold: float, limit: int) -> list[str]:
        """Up to `limit` members due now, each hidden from other claims for `hold` seconds."""
        ...

    async def entries(
        self, members: Sequence[str]
    ) -> list[tuple[str, OrderEntry | CorruptRecordError | None]]:
        """Each member's entry (None: no record; a broken one as its error)."""
        ...

    async def reschedule(
        self, member: str, due: float, *, queried: bool, failed: bool | None, hopeless: bool = False
    ) -> bool:
        """Look at a pending order again at `due`, counting a query (`queried`), a failed one
        (`failed` True), an answer (False: the counts of failures in a row start again) or
        neither (None), and a failure retrying cannot fix (`hopeless`). False, and the member
        leaves the index, when the order is no longer pending."""
        ...

    async def stop_sweeping(self, member: str, reason: str) -> bool:
        """Give up on an order: it leaves the index for good, its record (if still pending)
        says why. True when a record was marked."""
        ...

    async def drop(self, member: str) -> None:
        """Take a member out of the index (its record is gone or no longer pending)."""
        ...

    async def begin_expire(self, record: OrderRecord) -> str:
        """Before publishing `order.expired`: 'emit' (first time, or an earlier try that was
        not confirmed), 'done' (published and confirmed), 'gone' (no longer pending: the member
        leaves the index)."""
        ...

    async def finish_expire(self, record: OrderRecord) -> None:
        """`order.expired` is published: the order is expired and leaves the index."""
        ...

    async def mark_sweep(self, mark: SweepMark) -> None:
        """The sweeper's last look, for `paynotify status`."""
        ...

    async def last_sweep(self) -> SweepMark | None: ...


class Locks(Protocol):
    """Named locks with a time to live (the sweeper's lease): only the holder of a token may
    renew or release its lock."""

    async def acquire(self, key: str, ttl_ms: int, *, holder: str = "") -> str | None:
        """The lock's token when taken, None when somebody else holds it."""
        ...

    async def renew(self, key: str, token: str, ttl_ms: int) -> bool: ...

    async def release(self, key: str, token: str) -> bool: ...


class PublishedNotes:
    """What this process published and has not yet marked (`OutcomeLedger.note_published`,
    `is_published`, `flush_published`), over the ledger's own `mark_published`: one rule for
    every ledger, its adapter and its fake."""

    def __init__(self) -> None:
        self._unmarked: set[str] = set()

    async def mark_published(self, order_keys: Iterable[str]) -> None:
        raise NotImplementedError

    def note_published(self, order_key: str) -> None:
        """This process published the payment's outcome (the broker acked it). The ledger
        learns it at the next `flush_published`, which every commit of a consumed offset waits
        for."""
        self._unmarked.add(order_key)

    def is_published(self, order_key: str, outcome: RecordedOutcome) -> bool:
        """Whether `outcome` was published: marked in the ledger, or by this process since the
        last flush (a duplicate arriving meanwhile is then not published again)."""
        return outcome.published or order_key in self._unmarked

    async def flush_published(self) -> None:
        """Mark every outcome noted published so far. Call it before committing the offsets
        of the messages that published them: a redelivery after the commit then finds them
        marked. Raises what the ledger raises; the outcomes stay noted until it has them."""
        keys = list(self._unmarked)
        if not keys:
            return
        await self.mark_published(keys)
        self._unmarked.difference_update(keys)


class OrderQuery(Protocol):
    """The platform's order query: a verified answer, or a `PlatformError` saying why not."""

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer: ...


class Sink(Protocol):
    """Publishes to one topic and returns after the broker's ack."""

    async def publish(self, key: str, value: bytes) -> None: ...


class Producer(Protocol):
    """An acks=all producer (shared.adapters.kafka.start_producer), for code that writes to
    several topics: keys as text; returns after the broker's ack."""

    async def send_and_wait(
        self, topic: str, value: bytes, key: str, headers: list[tuple[str, bytes]] | None = None
    ) -> object: ...
