"""Readiness against Kafka: can this process use its topics right now, as configured?

Ready means a metadata request to the brokers answered within a bound and showed each of the
process's topics with at least the configured partitions and replicas and a leader for every
partition. The request asks for all topics: naming one would let a broker with
`auto.create.topics.enable` create it with its own defaults (one partition), which is how an
ingress started before `topics ensure` once left a deployment with one callbacks partition. No
process touches its topics (subscribes, produces) before they are ready (`wait_for_topics`).
The answer is cached briefly, so probes from several load balancers cost one request; a
producer's own cached metadata cannot tell this, as it keeps the last partitions it saw.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from shared.adapters.kafka import start_admin
from shared.clock import sleep_unless
from shared.probes import Cached

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from aiokafka.admin import AIOKafkaAdminClient

    from shared.clock import Clock
    from shared.logs import BoundLogger
    from shared.settings import Settings

_WAIT_CAP = 5.0  # seconds between looks at topics that are not ready yet


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """The topics a process uses, and what it needs of each (at least)."""

    names: tuple[str, ...]
    partitions: int = 1
    replication: int = 1

    @classmethod
    def of(cls, settings: Settings, names: Iterable[str]) -> TopicSpec:
        """As `paynotify topics ensure` creates them (PAYNOTIFY_TOPIC_PARTITIONS/_REPLICATION)."""
        return cls(tuple(names), settings.topic_partitions, settings.topic_replication)


class KafkaReadiness:
    __slots__ = ("_admin", "_spec", "_timeout", "check")

    def __init__(
        self,
        admin: Any,  # AIOKafkaAdminClient from shared.adapters.kafka.start_admin
        spec: TopicSpec,
        clock: Clock,
        *,
        timeout: float,
        ttl: float = 1.0,
    ) -> None:
        self._admin = admin
        self._spec = spec
        self._timeout = timeout
        # (ready, why) - `why` is a short text for operators; concurrent probes share one request.
        self.check = Cached(self._probe, clock, ttl=ttl)

    async def _probe(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self._timeout):
                described = await self._admin.describe_topics()  # all: see the module's doc
        except TimeoutError:
            return False, "kafka metadata timed out"
        except (KafkaError, OSError) as exc:
            return False, f"kafka unreachable ({type(exc).__name__})"
        spec = self._spec
        for topic in spec.names:
            state = topic_state(
                described, topic, partitions=spec.partitions, replication=spec.replication
            )
            if not state[0]:
                return state
        return True, "ok"


def topic_state(
    described: list[dict[str, Any]], topic: str, *, partitions: int = 1, replication: int = 1
) -> tuple[bool, str]:
    """Judge one topic in a metadata answer (`AIOKafkaAdminClient.describe_topics`)."""
    for entry in described:
        if entry.get("topic") != topic:
            continue
        found = entry.get("partitions") or []
        if entry.get("error_code", 0) != 0 or not found:
            return False, f"topic {topic} is not available"
        if len(found) < partitions:
            return False, (
                f"topic {topic} has {len(found)} partitions, fewer than the {partitions} "
                "configured (`paynotify topics ensure --fix` adds them)"
            )
        replicas = min((len(p["replicas"]) for p in found if "replicas" in p), default=None)
        if replicas is not None and replicas < replication:
            return False, (
                f"topic {topic} has {replicas} replicas, fewer than the {replication} configured"
            )
        if any(p.get("leader", -1) < 0 for p in found):
            return False, f"topic {topic} has partitions without a leader"
        return True, "ok"
    return False, f"topic {topic} does not exist (run `paynotify topics ensure`)"


class KafkaCheck:
    """`KafkaReadiness` for a process that has no admin client of its own (the worker, the
    sweeper): the client is started on the first check, and again after a failed start, each
    try bounded, so a broker that is away makes the check fail instead of the process."""

    def __init__(
        self, settings: Settings, spec: TopicSpec, clock: Clock, *, bound: float = 2.0
    ) -> None:
        self._settings = settings
        self._spec = spec
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
                self._admin, self._spec, self._clock, timeout=self._bound
            )
        return await self._readiness.check()

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()


async def wait_for_topics(
    check: Callable[[], Awaitable[tuple[bool, str]]],
    *,
    stop: asyncio.Event,
    clock: Clock,
    log: BoundLogger,
) -> bool:
    """Until `check` (a `KafkaCheck`, or a `KafkaReadiness.check`) says the process's topics are
    ready (True), saying why not at growing intervals; False when `stop` is set first. Nothing
    may touch a topic before: that could auto-create it."""
    pause = 0.5
    while not stop.is_set():
        ready, why = await check()
        if ready:
            return True
        log.warning("topics_not_ready", why=why, retry_in=pause)
        await sleep_unless(clock, pause, stop)
        pause = min(pause * 2, _WAIT_CAP)
    return False
