"""The ports: what the workers' and the sweeper's rules need from the world, each defined once.

Adapters implement them (the platform's client `shared.platform.client.PlatformClient`, Kafka
`workers.consumer.TopicSink` and the acks=all producer of `shared.adapters.kafka`); tests give
doubles. The clock is `shared.clock.Clock`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from shared.protocol.models import OrderQueryAnswer


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
