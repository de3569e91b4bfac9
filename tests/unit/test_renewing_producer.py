"""RenewingProducer without a broker: many sends refused at once renew the producer once."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber, ProducerClosed

from shared.adapters.renewing_producer import RENEWALS, RenewingProducer

pytestmark = pytest.mark.unit


class Fake:
    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.sent: list[bytes] = []
        self.stopped = False

    async def send_and_wait(self, topic: str, value: bytes, **options: object) -> str:
        await asyncio.sleep(0)
        if self.refuse:
            raise OutOfOrderSequenceNumber
        self.sent.append(value)
        return "ack"

    async def stop(self) -> None:
        self.stopped = True


async def test_concurrent_refusals_start_one_new_producer() -> None:
    broken, started = Fake(refuse=True), []

    async def start() -> Fake:
        started.append(Fake(refuse=False))
        return started[-1]

    producer = RenewingProducer(broken, start)
    answers = await asyncio.gather(*(producer.send_and_wait("t", b"%d" % i) for i in range(20)))
    assert answers == ["ack"] * 20
    assert len(started) == 1
    assert sorted(started[0].sent) == sorted(b"%d" % i for i in range(20))
    await producer.stop()
    assert broken.stopped
    assert started[0].stopped


async def test_a_broker_away_while_renewing_is_the_callers_outage() -> None:
    """The new producer cannot start: the send raises the outage (callers wait those out);
    the next send tries the renewal again."""
    calls = 0

    async def start() -> Fake:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KafkaConnectionError
        return Fake(refuse=False)

    producer = RenewingProducer(Fake(refuse=True), start)
    with pytest.raises(KafkaConnectionError):
        await producer.send_and_wait("t", b"a")
    assert await producer.send_and_wait("t", b"a") == "ack"


async def test_a_producer_refused_again_and_again_gives_up_after_the_bound() -> None:
    async def start() -> Fake:
        return Fake(refuse=True)

    producer = RenewingProducer(Fake(refuse=True), start)
    with pytest.raises(OutOfOrderSequenceNumber):
        await producer.send_and_wait("t", b"a")
    assert producer.renewals == RENEWALS


class Pending(Fake):
    """A producer whose sends wait (a broker away) until it is stopped, which fails them with
    ProducerClosed, as aiokafka fails what a stopped producer still held."""

    def __init__(self) -> None:
        super().__init__(refuse=False)
        self.closed = asyncio.Event()
        self.waiting = 0

    async def send_and_wait(self, topic: str, value: bytes, **options: object) -> str:
        self.waiting += 1
        await self.closed.wait()
        raise ProducerClosed

    async def stop(self) -> None:
        self.stopped = True
        self.closed.set()


async def test_sends_pending_on_a_replaced_producer_are_made_again_on_the_new_one() -> None:
    """The three-broker chaos run lost 30 payments so: a refused sequence renewed the producer,
    stopping the old one failed the events still pending on it with ProducerClosed, and the
    workers dead-lettered them (`internal_error`) with their outcomes recorded but never
    published. The old producer never sent them: they go through the new one."""
    old, new = Pending(), Fake(refuse=False)

    async def start() -> Fake:
        return new

    producer = RenewingProducer(old, start)
    pending = [asyncio.create_task(producer.send_and_wait("t", b"%d" % i)) for i in range(5)]
    while old.waiting < 5:
        await asyncio.sleep(0)
    await producer.renew(old, OutOfOrderSequenceNumber())
    assert await asyncio.gather(*pending) == ["ack"] * 5
    assert sorted(new.sent) == [b"%d" % i for i in range(5)]
    assert old.stopped


async def test_a_producer_stopped_by_its_owner_is_the_callers_error() -> None:
    """Not replaced, stopped (shutdown): nothing to send again on."""
    old = Pending()
    producer = RenewingProducer(old, lambda: asyncio.sleep(0))  # type: ignore[arg-type, return-value]
    sending = asyncio.create_task(producer.send_and_wait("t", b"a"))
    while not old.waiting:
        await asyncio.sleep(0)
    await producer.stop()
    with pytest.raises(ProducerClosed):
        await sending
