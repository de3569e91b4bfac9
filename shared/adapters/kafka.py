"""Kafka producers for the whole project, and the callbacks message's wire form.

Every process that writes to Kafka starts its producer here, so the durability settings
(`acks=all`, idempotence) are decided once. Values are orjson-encoded (dataclasses included),
keys are UTF-8 text.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from shared.adapters.outages import KAFKA_OUTAGES
from shared.adapters.partitioner import key_partition
from shared.adapters.renewing_producer import RenewingProducer
from shared.platform.retry import wait_out

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    from shared.clock import Clock
    from shared.logs import BoundLogger
    from shared.ports import Producer
    from shared.settings import Settings

_T = TypeVar("_T")

# A few milliseconds of linger lets concurrent requests share one produce request without
# adding noticeable latency to any of them.
PRODUCER_DEFAULTS: Final[dict[str, Any]] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 2,
}


def encode_key(key: str | bytes | None) -> bytes | None:
    return key.encode("utf-8") if isinstance(key, str) else key


def encode_value(value: Any) -> bytes:
    # Bytes pass through untouched so a caller may encode once and send to several topics.
    return value if isinstance(value, bytes) else orjson.dumps(value)


async def start_producer(settings: Settings, **overrides: Any) -> RenewingProducer:
    """A started producer for `settings.kafka_bootstrap_servers`; stop it with `await .stop()`.

    `overrides` are AIOKafkaProducer options (e.g. `client_id`, `linger_ms`); durability options
    may be overridden only by a caller with a reason to, and none has one today. It renews
    itself when the brokers refuse its sequence numbers (shared.adapters.renewing_producer).
    """
    start = functools.partial(_start_producer, settings, overrides)
    return RenewingProducer(await start(), start)


async def _start_producer(settings: Settings, overrides: dict[str, Any]) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "key_serializer": encode_key,
        "value_serializer": encode_value,
        # aiokafka's default placement (the Java client's), at half its CPU per message.
        "partitioner": key_partition,
        **PRODUCER_DEFAULTS,
        **overrides,
    }
    producer = AIOKafkaProducer(**options)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # releases what `start` opened before it failed
        raise
    return producer


async def start_admin(settings: Settings, **overrides: Any) -> AIOKafkaAdminClient:
    """A started admin client (metadata and topic management); close it with `await .close()`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **overrides)
    try:
        await admin.start()
    except BaseException:
        await admin.close()
        raise
    return admin


class _Stopped(Exception):  # noqa: N818 - a signal, not an error
    """Raised out of a wait for the broker when the process is asked to stop."""


async def start_when_available(
    start: Callable[[], Awaitable[_T]],
    *,
    stop: asyncio.Event,
    clock: Clock,
    log: BoundLogger,
    random: Callable[[], float] = random.random,
) -> _T | None:
    """`start()` once the broker answers. A process started while Kafka is away waits for it
    (`kafka_unavailable` logged per try, capped jittered backoff) instead of exiting; None when
    `stop` is set meanwhile (seen at the next try, within the backoff's cap)."""

    def waiting(exc: BaseException, pause: float) -> None:
        log.warning("kafka_unavailable", error=type(exc).__name__, pause=round(pause, 3))
        if stop.is_set():
            raise _Stopped from exc

    try:
        return await wait_out(
            start, errors=KAFKA_OUTAGES, clock=clock, random=random, on_retry=waiting
        )
    except _Stopped:
        return None


class EnvelopeError(ValueError):
    """A callbacks message that does not have the envelope's shape."""


@dataclass(frozen=True, slots=True)
class CallbackEnvelope:
    """One message on `paynotify.callbacks`: a verified report and how it arrived.

    Wire form (orjson): {"fields": {name: value, ...} exactly as received (`sign` included),
    "key_id": "sha256:...", "received_at": Unix seconds (float), "peer": "203.0.113.7" or null,
    "delivery_id": 32 hex digits (uuid4), "source": "notification" (the ingress) or the
    name of another producer of verified reports, such as the sweeper}.
    The Kafka key is `mch_id:mch_order` (`shared.protocol.payment.order_key`).
    """

    fields: dict[str, str]
    key_id: str  # which merchant key verified the report
    received_at: float
    peer: str | None
    delivery_id: str  # unique per delivery: the same notification delivered twice has two
    source: str

    def encode(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def decode(cls, raw: bytes) -> CallbackEnvelope:
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise EnvelopeError("callbacks message is not JSON") from None
        if not isinstance(document, dict):
            raise EnvelopeError("callbacks message is not a JSON object")
        fields = document.get("fields")
        if not isinstance(fields, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
        ):
            raise EnvelopeError("envelope fields must be an object of strings")
        key_id, received_at = document.get("key_id"), document.get("received_at")
        peer, delivery_id = document.get("peer"), document.get("delivery_id")
        source = document.get("source")
        if not isinstance(key_id, str) or not isinstance(delivery_id, str):
            raise EnvelopeError("envelope key_id and delivery_id must be strings")
        if isinstance(received_at, bool) or not isinstance(received_at, int | float):
            raise EnvelopeError("envelope received_at must be a number")
        if peer is not None and not isinstance(peer, str):
            raise EnvelopeError("envelope peer must be a string or null")
        if not isinstance(source, str) or not source:
            raise EnvelopeError("envelope source must be a non-empty string")
        return cls(
            fields=fields,
            key_id=key_id,
            received_at=float(received_at),
            peer=peer,
            delivery_id=delivery_id,
            source=source,
        )


# CloudEvents' Kafka binding, structured mode: the whole event is the value, announced here.
CLOUDEVENTS_HEADERS = (("content-type", b"application/cloudevents+json; charset=UTF-8"),)


class TopicSink:
    """Publish to one topic and return after the broker's ack (the producer is acks=all)."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._headers = list(headers) or None

    async def publish(self, key: str, value: bytes) -> None:
        await self._producer.send_and_wait(self._topic, value, key=key, headers=self._headers)
