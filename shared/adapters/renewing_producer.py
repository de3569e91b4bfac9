"""An idempotent producer that starts afresh when the brokers refuse its sequence numbers.

aiokafka (0.14) takes the next sequence number of a partition for a batch it then fails without
sending it: a batch whose partition has no leader past the batch's deadline (every broker of a
cluster restarting, say) fails with `LeaderNotAvailableError`, and the sequence it took is never
seen by a broker. The next batch for that partition is refused with `OutOfOrderSequenceNumber`,
and so is every one after it: the client never recovers from the gap. The chaos run on three
brokers saw it after a whole-cluster restart: from then on every forward of the sweeper and
hundreds of the workers' events failed (dead-lettered as `internal_error`, orders given up),
and more than half the payments of the run got no outcome (docs/reliability.md).

A producer refused so is replaced by a new one (a new producer id, whose sequences start at 0)
and the send is made again: the broker refused the batch, so nothing was written twice. Sends
through `send` (the ingress) report the refusal to their caller as before; the replacement is
made for the next one. Sends still pending on the replaced producer are made again on the new one
(`send_and_wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING, Any, Final

from aiokafka.errors import OutOfOrderSequenceNumber, ProducerClosed, UnknownProducerId

from shared.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

# The broker will never take this producer's next batch for the partition: start a new one.
REFUSED_SEQUENCE: Final[tuple[type[Exception], ...]] = (OutOfOrderSequenceNumber, UnknownProducerId)
RENEWALS = 3  # new producers one send may start before the refusal is its caller's
STOP_BOUND = 30.0  # seconds a replaced producer has to deliver what it still holds


class RenewingProducer:
    """`send`, `send_and_wait` and `stop` as AIOKafkaProducer's; anything else is the current
    producer's (`partitions_for`, ...)."""

    def __init__(self, producer: Any, start: Callable[[], Awaitable[Any]]) -> None:
        self._producer = producer
        self._start = start  # a new, started AIOKafkaProducer with the same options
        self._lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()
        self._log = get_logger("kafka.producer")
        self.renewals = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    async def send_and_wait(
        self, topic: str, value: Any = None, key: Any = None, headers: Any = None, **options: Any
    ) -> Any:
        """Send and wait for the ack; a refused sequence renews the producer and sends again.
        A send that was still pending on a producer another send's renewal replaced fails with
        `ProducerClosed` when that one is stopped: it is made again on the new producer (the
        replaced one may have delivered it after all: a duplicate, which every consumer of
        these topics absorbs, rather than a message never sent)."""
        for renewal in range(RENEWALS + 1):
            producer = self._producer
            try:
                return await producer.send_and_wait(
                    topic, value, key=key, headers=headers, **options
                )
            except REFUSED_SEQUENCE as exc:
                if renewal == RENEWALS:
                    raise
                await self.renew(producer, exc)
            except ProducerClosed:
                if producer is self._producer or renewal == RENEWALS:
                    raise  # stopped by its owner (shutdown), not replaced
                self._log.info("send_again_after_renewal")
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, topic: str, value: Any = None, **options: Any) -> asyncio.Future[Any]:
        """Queue a message; the delivery future is the current producer's. If the broker refuses
        its sequence, the caller sees that refusal, and the producer is renewed meanwhile."""
        producer = self._producer
        delivery: asyncio.Future[Any] = await producer.send(topic, value, **options)
        delivery.add_done_callback(functools.partial(self._delivered, producer))
        return delivery

    def _delivered(self, producer: Any, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            return
        exc = delivery.exception()
        if isinstance(exc, REFUSED_SEQUENCE) and producer is self._producer:
            task = asyncio.get_running_loop().create_task(self._renew_quietly(producer, exc))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def _renew_quietly(self, producer: Any, exc: BaseException) -> None:
        try:
            await self.renew(producer, exc)
        except Exception as error:  # the broker away: the next refused send tries again
            self._log.warning("producer_renew_failed", error=type(error).__name__)

    async def renew(self, failed: Any, exc: BaseException) -> None:
        """Replace `failed` by a new producer, once however many sends saw it fail; the old one
        is stopped in the background (it may still deliver other partitions' batches)."""
        async with self._lock:
            if self._producer is not failed:
                return  # another send renewed it already
            self._producer = await self._start()
            self.renewals += 1
            self._log.warning("producer_renewed", error=type(exc).__name__, renewals=self.renewals)
        task = asyncio.get_running_loop().create_task(_stop(failed))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def stop(self) -> None:
        await self._producer.stop()
        if self._retired:
            await asyncio.wait(set(self._retired), timeout=STOP_BOUND)


async def _stop(producer: Any) -> None:
    with contextlib.suppress(Exception):  # TimeoutError included: it is being dropped anyway
        async with asyncio.timeout(STOP_BOUND):
            await producer.stop()
