"""`order.created` messages from merchant systems into the order book: the orders topic on the
consumer runtime (workers.runtime), each message through the use case
`shared.service.record_order` (its format is documented there and in docs/order-book.md).

A message that breaks a rule, names an order already recorded with
other values, or names a merchant without a key in the merchants file (the sweeper could never
query it), goes to `paynotify.dlq` with its reason. An offset is committed only after every
message before it was recorded or dead-lettered.

No single message stops the consumer: an unexpected error while handling one is dead-lettered as
`internal_error`. Redis and Kafka being away is waited out (capped, jittered backoff), never a
reason to exit.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import TYPE_CHECKING, Final, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer

from shared.adapters.outages import KAFKA_OUTAGES, OUTAGES
from shared.domain.orders import OrderConflictError
from shared.logs import get_logger
from shared.merchants import load_merchants
from shared.platform.retry import wait_out
from shared.protocol.errors import clean_msg
from shared.service.dead_letters import dead_letter
from shared.service.record_order import OrderMessageError, record_order
from workers.keyed import KeyedRunner
from workers.runtime import ConsumerRuntime

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Container

    from aiokafka import AIOKafkaProducer
    from aiokafka.structs import ConsumerRecord

    from shared.clock import Clock
    from shared.ports import Orders
    from shared.settings import Settings

ORDERS_CONCURRENCY: Final = 32  # orders recorded at once, at most (one per order at a time)
_T = TypeVar("_T")


class _Stopped(Exception):  # noqa: N818 - a signal, not an error
    """Raised out of a wait for Redis or Kafka once the consumer is asked to stop."""


def orders_consumer_factory(settings: Settings) -> Callable[[], AIOKafkaConsumer]:
    """Consumers of `paynotify.orders` in the group `<PAYNOTIFY_CONSUMER_GROUP>.orders`."""

    def make() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            settings.topics.orders,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=orders_group(settings),
            client_id="paynotify-orders",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    return make


def orders_group(settings: Settings) -> str:
    return f"{settings.consumer_group}.orders"


class OrdersConsumer:
    """Records `order.created` messages in the order book; `run()` until `stop()` or cancelled.

    The orders topic's strategy on the consumer runtime (workers.runtime): one order's messages
    in order (a conflicting second message is judged against the first), different orders
    concurrently, each partition's offsets committed once everything before them was recorded
    or dead-lettered; recording is idempotent, so a crash before a commit only redelivers."""

    def __init__(
        self,
        settings: Settings,
        book: Orders,
        *,
        producer: AIOKafkaProducer,
        clock: Clock,
        consumer_factory: Callable[[], AIOKafkaConsumer] | None = None,
        dlq_topic: str | None = None,  # default: the deployment's DLQ
        max_records: int = 200,
        concurrency: int = ORDERS_CONCURRENCY,
        merchants: Container[str] | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        """`merchants`: the merchant ids with keys (the worker has them loaded already); None
        reads them from `settings`' merchants file. `consumer_factory` makes the Kafka consumer,
        subscribed to the orders topic (default: `orders_consumer_factory(settings)`)."""
        self._merchants = (
            frozenset(load_merchants(settings.require_merchants_file()))
            if merchants is None
            else merchants
        )
        self._random = random
        self._book = book
        self._producer = producer
        self._clock = clock
        self._make_consumer = consumer_factory or orders_consumer_factory(settings)
        self._dlq_topic = settings.topics.dlq if dlq_topic is None else dlq_topic
        self._max_records = max_records
        self._runner = KeyedRunner(concurrency)
        self._stopping = asyncio.Event()
        self._log = get_logger("orders")
        self.stats: Counter[str] = Counter()  # the runtime's (commits skipped)
        self.recorded = 0  # new records made
        self.dead_lettered = 0
        self.internal_errors = 0  # of those, messages whose handling failed unexpectedly
        self.retries = 0  # attempts repeated because Redis or Kafka was away

    async def stop(self) -> None:
        """Finish (or give up) the messages in hand, commit what was handled, and return from
        `run()`."""
        self._stopping.set()

    async def run(self) -> None:
        try:
            runtime, consumer = await self._wait(self._started, errors=KAFKA_OUTAGES)
        except _Stopped:
            return
        self._log.info("orders_consumer_started")
        try:
            await runtime.run(self._stopping)
        finally:
            await self._runner.cancel()
            await consumer.stop()
            self._log.info(
                "orders_consumer_stopped", recorded=self.recorded, dead_lettered=self.dead_lettered
            )

    async def _started(self) -> tuple[ConsumerRuntime, AIOKafkaConsumer]:
        consumer = self._make_consumer()
        runtime = ConsumerRuntime(
            consumer, sorted(consumer.subscription()), self._runner, self,
            clock=self._clock, stats=self.stats, log_name="orders", event_prefix="orders_",
            max_records=self._max_records,
        )  # fmt: skip
        runtime.subscribe()  # the runtime's rebalance hand-over
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()  # releases what `start` opened before it failed
            raise
        return runtime, consumer

    # The strategy (workers.runtime.Strategy).

    def key(self, record: ConsumerRecord, origin: str) -> str:
        return record.key.decode("utf-8", "replace") if record.key else origin

    async def process(self, record: ConsumerRecord, origin: str, give_way: asyncio.Event) -> bool:
        return await self._handle(record, origin, give_way)

    async def before_commit(self) -> bool:
        return True  # recording is idempotent: nothing must reach Redis before a commit

    async def _wait(
        self,
        call: Callable[[], Awaitable[_T]],
        *,
        errors: tuple[type[Exception], ...] = OUTAGES,
        give_way: asyncio.Event | None = None,
    ) -> _T:
        """`call` until it returns, waiting out `errors` (Redis or Kafka away) with capped,
        jittered backoff; `_Stopped` once a stop was asked for meanwhile, or the message's
        partition was revoked (`give_way`: its next owner handles it)."""

        def retrying(exc: BaseException, pause: float) -> None:
            self.retries += 1
            self._log.warning("orders_retry", error=type(exc).__name__, pause=round(pause, 3))
            if self._stopping.is_set() or (give_way is not None and give_way.is_set()):
                raise _Stopped from exc

        return await wait_out(
            call, errors=errors, clock=self._clock, random=self._random, on_retry=retrying
        )

    async def _handle(self, record: ConsumerRecord, origin: str, give_way: asyncio.Event) -> bool:
        """Record or dead-letter one message; True once done, False if stopped or revoked
        before (while Redis or Kafka was away)."""
        try:
            try:
                await self._wait(
                    lambda: self._handle_once(record, origin, give_way), give_way=give_way
                )
            except _Stopped:
                raise
            except Exception as exc:  # one message's surprise ends here, never the consumer
                self.internal_errors += 1
                self._log.exception("order_message_failed", origin=origin, error=type(exc).__name__)
                detail = f"{type(exc).__name__}: {clean_msg(str(exc))}".rstrip(": ")
                await self._dead_letter(
                    "internal_error", detail, origin, record.key, record.value, give_way
                )
        except _Stopped:
            return False
        return True

    async def _handle_once(
        self, record: ConsumerRecord, origin: str, give_way: asyncio.Event
    ) -> None:
        value: bytes | None = record.value
        key: bytes | None = record.key
        try:
            order, created = await record_order(self._book, value, key, merchants=self._merchants)
        except OrderMessageError as exc:
            await self._dead_letter(exc.reason, exc.detail, origin, key, value, give_way)
            return
        except OrderConflictError as exc:
            await self._dead_letter("order_conflict", str(exc), origin, key, value, give_way)
            return
        if created:
            self.recorded += 1
        self._log.debug(
            "order_recorded",
            mch_id=order.mch_id,
            mch_order=order.mch_order,
            new=created,
            origin=origin,
        )

    async def _dead_letter(  # noqa: PLR0917 - one message's facts, and its gate
        self,
        reason: str,
        detail: str,
        origin: str,
        key: bytes | None,
        value: bytes | None,
        give_way: asyncio.Event,
    ) -> None:
        """Put the message on the DLQ with its reason, waiting out Kafka being away. Should the
        DLQ refuse the record (a message near the size limit grows as a dead letter), the
        reason goes without the payload, and that is waited for until the DLQ takes it: a
        message is never committed without its dead letter."""
        now = self._clock.time()
        letter = dead_letter(reason, detail, origin, value or b"", at=now)
        dlq_key = key.decode("utf-8", "replace") if key else origin
        try:
            await self._wait(
                lambda: self._producer.send_and_wait(self._dlq_topic, letter, key=dlq_key),
                give_way=give_way,
            )
        except _Stopped:
            raise
        except Exception as exc:  # refused, not away
            self._log.warning("order_dead_letter_refused", origin=origin, error=type(exc).__name__)
            omitted = f"{len(value or b'')} bytes, refused by the DLQ ({type(exc).__name__})"
            short = orjson.dumps(
                {"reason": reason, "detail": detail, "origin": origin, "failed_at": now,
                 "payload_omitted": omitted}
            )  # fmt: skip
            await self._wait(
                lambda: self._producer.send_and_wait(self._dlq_topic, short, key=dlq_key),
                errors=(Exception,),
                give_way=give_way,
            )
        self.dead_lettered += 1
        self._log.warning("order_dead_lettered", reason=reason, origin=origin)
