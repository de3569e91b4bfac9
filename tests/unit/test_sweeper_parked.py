"""The sweeper's release of parked notifications, on fakes: an entry that cannot be published
for a reason waiting does not fix is dead-lettered after a few tries, never retried for ever,
and it never holds up the others."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError

from shared.adapters.kafka import CallbackEnvelope
from shared.adapters.parked import encode_parked, fingerprint
from shared.clock import ManualClock
from shared.domain.sweep import SweepSchedule
from shared.service.sweep import SweepOrder
from workers.sweeper import Sweeper, SweeperLimits

pytestmark = pytest.mark.unit


def parked_entry(order: str) -> tuple[bytes, bytes]:
    fields = {"mch_id": "m1", "mch_order": order, "sign": "ab" * 16}
    envelope = CallbackEnvelope(
        fields=fields, key_id="sha256:k", received_at=1.0, peer=None,
        delivery_id="0" * 32, source="notification",
    )  # fmt: skip
    return fingerprint(fields).encode(), encode_parked(f"m1:{order}", envelope, 1.0)


class Producer:
    """Refuses, for good, anything keyed `m1:huge`; takes the rest."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: str, **_: Any) -> None:
        if key == "m1:huge":
            raise MessageSizeTooLargeError
        self.sent.append((topic, value))


class Parked:
    def __init__(self, *entries: tuple[bytes, bytes]) -> None:
        self.entries = dict(entries)

    async def remove(self, field: bytes) -> None:
        self.entries.pop(field, None)


def sweeper(producer: Producer) -> Sweeper:
    limits = SweeperLimits(concurrency=1)
    schedule = SweepSchedule.scaled(time_scale=1.0, order_expiry=60.0)
    orders = SweepOrder(
        None, None, producer,  # type: ignore[arg-type]  # not used to release
        clock=ManualClock(), schedule=schedule, rate=10.0,
        callbacks_topic="callbacks", dlq_topic="dlq",
    )  # fmt: skip
    return Sweeper(orders, None, limits=limits)  # type: ignore[arg-type]  # no lease here


async def test_an_unpublishable_entry_is_dead_lettered_after_three_tries() -> None:
    producer = Producer()
    huge, fine = parked_entry("huge"), parked_entry("fine")
    parked = Parked(huge, fine)
    released = sweeper(producer)
    for _ in range(3):  # three scans: each fails the huge one, the fine one goes at the first
        for field, raw in list(parked.entries.items()):
            await released._release_one(parked, field, raw)  # type: ignore[arg-type]
    assert list(parked.entries) == [huge[0]]
    assert released.stats["parked_error"] == 3
    await released._release_one(parked, *huge)  # type: ignore[arg-type]  # the fourth scan
    assert parked.entries == {}
    topics = [topic for topic, _ in producer.sent]
    assert topics == ["callbacks", "dlq"]
    letter = orjson.loads(producer.sent[1][1])
    assert letter["reason"] == "parked_unpublishable"
    assert "MessageSizeTooLargeError" in letter["detail"]
    assert released.stats["dead_letter:parked_unpublishable"] == 1
