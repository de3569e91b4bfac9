"""Readiness against Kafka: can this process use its topic right now?

Ready means a metadata request to the brokers answered within a bound and showed the topic (the
callbacks topic for the ingress, the worker and the sweeper) with a leader for every partition.
The answer is cached briefly, so probes from several load balancers cost one request. A
producer's own cached metadata cannot tell this: it keeps the last partitions it saw while the
broker is down.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from shared.adapters.kafka import start_admin

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

    from shared.clock import Clock
    from shared.settings import Settings


class KafkaReadiness:
    __slots__ = (
        "_admin",
        "_answer",
        "_checked_at",
        "_clock",
        "_lock",
        "_timeout",
        "_topic",
        "_ttl",
    )

    def __init__(
        self,
        admin: Any,  # AIOKafkaAdminClient from shared.adapters.kafka.start_admin
        topic: str,
        clock: Clock,
        *,
        timeout: float,
        ttl: float = 1.0,
    ) -> None:
        self._admin = admin
        self._topic = topic
        self._clock = clock
        self._timeout = timeout
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._answer: tuple[bool, str] = (False, "not checked yet")

    async def check(self) -> tuple[bool, str]:
        """(ready, why) - `why` is a short text for operators."""
        async with self._lock:  # concurrent probes share one metadata request
            now = self._clock.monotonic()
            if self._checked_at is None or now - self._checked_at >= self._ttl:
                self._answer = await self._probe()
                self._checked_at = self._clock.monotonic()
            return self._answer

    async def _probe(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self._timeout):
                # All topics: naming ours would let the broker auto-create it with defaults.
                described = await self._admin.describe_topics()
        except TimeoutError:
            return False, "kafka metadata timed out"
        except (KafkaError, OSError) as exc:
            return False, f"kafka unreachable ({type(exc).__name__})"
        return topic_state(described, self._topic)


def topic_state(described: list[dict[str, Any]], topic: str) -> tuple[bool, str]:
    """Judge one topic in a metadata answer (`AIOKafkaAdminClient.describe_topics`)."""
    for entry in described:
        if entry.get("topic") != topic:
            continue
        partitions = entry.get("partitions") or []
        if entry.get("error_code", 0) != 0 or not partitions:
            return False, f"topic {topic} is not available"
        if any(p.get("leader", -1) < 0 for p in partitions):
            return False, f"topic {topic} has partitions without a leader"
        return True, "ok"
    return False, f"topic {topic} does not exist (run `paynotify topics ensure`)"


class KafkaCheck:
    """`KafkaReadiness` for a process that has no admin client of its own (the worker, the
    sweeper): the client is started on the first check, and again after a failed start, each
    try bounded, so a broker that is away makes the check fail instead of the process."""

    def __init__(self, settings: Settings, topic: str, clock: Clock, *, bound: float = 2.0) -> None:
        self._settings = settings
        self._topic = topic
        self._clock = clock
        self._bound = bound
        self._admin: AIOKafkaAdminClient | None = None
        self._readiness: KafkaReadiness | None = None

    async def __call__(self) -> tuple[bool, str]:
        if self._readiness is None:
            try:
                async with asyncio.timeout(self._bound):
                    self._admin = await start_admin(self._settings, client_id="paynotify-readiness")
            except (TimeoutError, OSError, KafkaError) as exc:
                return False, f"kafka unreachable ({type(exc).__name__})"
            self._readiness = KafkaReadiness(
                self._admin, self._topic, self._clock, timeout=self._bound
            )
        return await self._readiness.check()

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
