"""The publisher's one deadline per notification (ingress.deadline), without a broker: a send
still waiting is cancelled, a queued delivery never is, and others' cancellations stay theirs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from ingress.counters import IngressCounters
from ingress.deadline import Deadline
from ingress.publisher import Publisher
from ingress.refusals import Reason
from shared.logs import get_logger
from shared.topics import Topics

pytestmark = pytest.mark.unit


class _Trace:
    def encode(self) -> bytes:
        return b"00-trace"


class _Envelope:
    delivery_id = "d" * 32


class _Producer:
    """`send` waits `send_for` seconds, then returns a delivery the test settles."""

    def __init__(self, send_for: float = 0.0) -> None:
        self.send_for = send_for
        self.deliveries: list[asyncio.Future[Any]] = []
        self.sends_cancelled = 0

    async def send(self, topic: str, value: Any, **_: Any) -> asyncio.Future[Any]:
        try:
            await asyncio.sleep(self.send_for)
        except asyncio.CancelledError:
            self.sends_cancelled += 1
            raise
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        return delivery


def _publisher(producer: _Producer, timeout: float) -> tuple[Publisher, IngressCounters]:
    counters = IngressCounters()
    publisher = Publisher(
        producer, topics=Topics(), ack_timeout=timeout, counters=counters, log=get_logger("t")
    )
    return publisher, counters


async def test_acknowledged_delivery_is_success() -> None:
    """The broker's ack before the deadline: None, counted as published."""
    producer = _Producer()
    publisher, counters = _publisher(producer, 1.0)
    publishing = asyncio.create_task(publisher.publish("m:o", _Envelope(), _Trace()))  # type: ignore[arg-type]
    while not producer.deliveries:
        await asyncio.sleep(0)
    producer.deliveries[0].set_result("metadata")
    assert await publishing is None
    assert (counters.published, counters.in_flight) == (1, 0)


async def test_deadline_while_waiting_for_the_ack_leaves_the_delivery_running() -> None:
    """No ack in time: KAFKA_TIMEOUT; the delivery is not cancelled, and its late ack counts."""
    producer = _Producer()
    publisher, counters = _publisher(producer, 0.05)
    assert await publisher.publish("m:o", _Envelope(), _Trace()) is Reason.KAFKA_TIMEOUT  # type: ignore[arg-type]
    delivery = producer.deliveries[0]
    assert not delivery.done()
    delivery.set_result("metadata")
    await asyncio.sleep(0)
    assert (counters.late_acks, counters.late_failures, counters.published) == (1, 0, 0)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_deadline_during_the_send_cancels_the_send() -> None:
    """A send still waiting (metadata, buffer room) at the deadline is cancelled: KAFKA_TIMEOUT,
    and the task is left without a pending cancellation."""
    producer = _Producer(send_for=10.0)
    publisher, counters = _publisher(producer, 0.05)
    assert await publisher.publish("m:o", _Envelope(), _Trace()) is Reason.KAFKA_TIMEOUT  # type: ignore[arg-type]
    assert (producer.sends_cancelled, producer.deliveries, counters.in_flight) == (1, [], 0)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0.01)  # no cancellation left over for the caller's next await


async def test_broker_error_is_kafka_error() -> None:
    """The delivery fails with a Kafka error before the deadline: KAFKA_ERROR."""
    producer = _Producer()
    publisher, _ = _publisher(producer, 1.0)
    publishing = asyncio.create_task(publisher.publish("m:o", _Envelope(), _Trace()))  # type: ignore[arg-type]
    while not producer.deliveries:
        await asyncio.sleep(0)
    producer.deliveries[0].set_exception(KafkaConnectionError())
    assert await publishing is Reason.KAFKA_ERROR


@pytest.mark.parametrize("send_for", [0.0, 10.0])
async def test_cancelling_the_request_is_not_a_timeout(send_for: float) -> None:
    """Somebody else cancelling the request (sending or waiting) gets CancelledError, never
    a timeout answer, and the delivery is not cancelled with it."""
    producer = _Producer(send_for=send_for)
    publisher, counters = _publisher(producer, 5.0)
    publishing = asyncio.create_task(publisher.publish("m:o", _Envelope(), _Trace()))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    publishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publishing
    assert all(not d.done() for d in producer.deliveries)
    assert counters.in_flight == 0


async def test_cancelled_by_others_after_own_expiry_stays_cancelled() -> None:
    """A cancellation from outside arriving with the deadline's own is not swallowed."""
    started = asyncio.Event()

    async def sending() -> None:
        deadline = Deadline(0.0)
        try:
            started.set()
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            assert not deadline.expired_send()
            raise
        finally:
            deadline.close()

    task = asyncio.create_task(sending())
    await started.wait()
    task.cancel()  # before the deadline's own cancel runs: two requests, one ours
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_delivered_returns_the_result_and_closes_cleanly() -> None:
    """`delivered` hands back a finished delivery's result at once, and after waiting."""
    deadline = Deadline(1.0)
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    done.set_result("now")
    assert await deadline.delivered(done) == "now"
    later: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(later.set_result, "later")
    assert await deadline.delivered(later) == "later"
    deadline.close()


def test_outside_a_task_is_refused() -> None:
    """Like asyncio.timeout, it needs a task to cancel."""
    with pytest.raises(RuntimeError):
        Deadline(1.0)
