"""RenewingProducer without a broker: many sends refused at once renew the producer once."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

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
