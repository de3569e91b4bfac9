"""Handing verified notifications to Kafka under a deadline, and refusals to the audit topic.

`publish` says yes only when the broker acknowledged the message (acks=all) before the
deadline. A send still in flight at the deadline is left to finish on its own: it may still
reach Kafka, where the workers' dedupe absorbs it, but it is never reported as this request's
success; its late outcome is only counted.

`audit` is fire-and-forget: it never delays or fails the reply, and gives up (counted) when
too many records are already waiting.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from ingress.deadline import Deadline
from ingress.refusals import Reason
from shared.protocol.payment import order_fields
from shared.trace import HEADER

if TYPE_CHECKING:
    from ingress.counters import IngressCounters
    from shared.adapters.kafka import CallbackEnvelope
    from shared.logs import BoundLogger
    from shared.topics import Topics
    from shared.trace import TraceParent

MAX_PENDING_AUDITS = 1000


class Publisher:
    __slots__ = (
        "_ack_timeout", "_audit_timeout", "_audits", "_callbacks", "_counters", "_log",
        "_producer", "_rejected",
    )  # fmt: skip

    def __init__(
        self,
        producer: Any,  # AIOKafkaProducer from shared.adapters.kafka.start_producer
        *,
        topics: Topics,
        ack_timeout: float,
        counters: IngressCounters,
        log: BoundLogger,
    ) -> None:
        self._producer = producer
        self._callbacks, self._rejected = topics.callbacks, topics.rejected
        self._ack_timeout = ack_timeout
        self._audit_timeout = max(ack_timeout, 5.0)
        self._counters = counters
        self._log = log
        self._audits: set[asyncio.Task[None]] = set()

    async def publish(
        self, key: str, envelope: CallbackEnvelope, trace: TraceParent
    ) -> Reason | None:
        """None once Kafka acknowledged the envelope (its `traceparent` header: `trace`);
        otherwise why it did not in time."""
        delivery: asyncio.Future[Any] | None = None
        counters = self._counters
        counters.in_flight += 1
        began = time.perf_counter()
        deadline = Deadline(self._ack_timeout)
        try:
            try:
                # Cancelling `send` itself (waiting for metadata or buffer room) drops the
                # message; once it returns, the message is queued and can only be waited for.
                delivery = await self._producer.send(
                    self._callbacks, envelope, key=key, headers=[(HEADER, trace.encode())]
                )
                await deadline.delivered(delivery)
            except asyncio.CancelledError:
                if deadline.expired_send():
                    raise TimeoutError from None
                raise
            finally:
                deadline.close()
        except TimeoutError:
            if delivery is not None:
                delivery.add_done_callback(
                    functools.partial(self._late, key=key, delivery_id=envelope.delivery_id)
                )
            self._log.warning(
                "kafka_ack_timeout", **order_fields(key), delivery_id=envelope.delivery_id
            )
            return Reason.KAFKA_TIMEOUT
        except KafkaError as exc:
            self._log.warning("kafka_publish_failed", **order_fields(key), error=type(exc).__name__)
            return Reason.KAFKA_ERROR
        except Exception:
            # Not durably taken, whatever went wrong: 503 makes the platform retry.
            self._log.exception("kafka_publish_crashed", **order_fields(key))
            return Reason.KAFKA_ERROR
        finally:
            counters.in_flight -= 1
        counters.publish_seconds.observe(time.perf_counter() - began)
        counters.published += 1
        return None

    def _late(self, delivery: asyncio.Future[Any], *, key: str, delivery_id: str) -> None:
        if delivery.cancelled() or delivery.exception() is not None:
            self._counters.late_failures += 1
            self._log.info("kafka_late_failure", **order_fields(key), delivery_id=delivery_id)
        else:
            self._counters.late_acks += 1
            self._log.info("kafka_late_ack", **order_fields(key), delivery_id=delivery_id)

    def audit(self, record: dict[str, Any], key: str | None) -> None:
        """Send a refusal record to the audit topic in the background, if there is room."""
        if len(self._audits) >= MAX_PENDING_AUDITS:
            self._counters.audit_dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._send_audit(record, key))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _send_audit(self, record: dict[str, Any], key: str | None) -> None:
        try:
            async with asyncio.timeout(self._audit_timeout):
                await (await self._producer.send(self._rejected, record, key=key))
        except Exception as exc:
            # Best effort by design: the refusal itself was answered and counted already.
            self._counters.audit_failed += 1
            self._log.debug("audit_not_sent", error=type(exc).__name__)
        else:
            self._counters.audit_sent += 1

    async def drain(self) -> None:
        """Wait for pending audit records (each is bounded by its own timeout)."""
        if self._audits:
            await asyncio.gather(*self._audits, return_exceptions=True)
