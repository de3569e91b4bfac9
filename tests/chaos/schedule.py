"""Which faults a chaos run injects, and when. Pure: one seed gives one schedule.

Faults run in three lanes, one fault at a time per lane, so that each fault's recovery can be
seen: the services (Kafka, Redis), paynotify's processes, and the platform (slow, busy and hostile
answers, forgeries). Lanes run side by side, as the world's faults do. A fault starts no earlier
than its planned time and no earlier than the previous fault of its lane ended (a broker that
takes long to restart pushes the lane's next faults back, never onto it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping, Sequence

# The platform's nine tries are 2940 s apart from first to last (0/5/10/15/30/180/300/600/1800).
PLATFORM_SCHEDULE_S = 2940.0
STOP_SECONDS = (5.0, 10.0, 15.0, 20.0, 40.0)  # SIGSTOP: around the 10 s renewal, the 30 s lease
WARMUP = 5.0  # seconds of plain load before the first fault
MIN_GAP = 4.0  # seconds between two faults of one lane, at least


class Kind(StrEnum):
    WORKER_KILL = "worker_kill"  # kill -9 a worker; the harness starts it again
    SWEEPER_KILL = "sweeper_kill"  # kill -9 the sweeper; started again
    INGRESS_KILL = "ingress_kill"  # kill -9 the ingress under load; started again
    WORKER_STOP = "worker_stop"  # SIGSTOP a worker for `seconds`, then SIGCONT
    KAFKA_KILL = "kafka_kill"  # kill -9 a broker; started again at once
    LEADER_KILL = "leader_kill"  # three brokers: kill -9 a callbacks partition's leader
    KAFKA_OUTAGE = "kafka_outage"  # every broker down longer than the platform's retries
    REDIS_KILL = "redis_kill"  # kill -9 redis-server; started again at once
    REDIS_OUTAGE = "redis_outage"  # redis-server down for `seconds` while orders are created
    QUERY_TIMEOUTS = "query_timeouts"  # order queries answer after the client gave up
    QUERY_BUSY = "query_busy"  # order queries answered 113 (system busy)
    HOSTILE_ANSWERS = "hostile_answers"  # malformed, unsigned and wrongly signed answers
    FORGERIES = "forgeries"  # forged notifications and forged callbacks envelopes


LANES: Mapping[Kind, str] = {
    Kind.KAFKA_KILL: "services", Kind.LEADER_KILL: "services", Kind.KAFKA_OUTAGE: "services",
    Kind.REDIS_KILL: "services", Kind.REDIS_OUTAGE: "services",
    Kind.WORKER_KILL: "processes", Kind.SWEEPER_KILL: "processes",
    Kind.INGRESS_KILL: "processes", Kind.WORKER_STOP: "processes",
    Kind.QUERY_TIMEOUTS: "platform", Kind.QUERY_BUSY: "platform",
    Kind.HOSTILE_ANSWERS: "platform", Kind.FORGERIES: "platform",
}  # fmt: skip

# How often each kind comes in a full run ("several times each") and in the short one (once).
FULL_COUNTS: Mapping[Kind, int] = {
    Kind.WORKER_KILL: 4, Kind.SWEEPER_KILL: 3, Kind.INGRESS_KILL: 3,
    Kind.WORKER_STOP: len(STOP_SECONDS), Kind.KAFKA_KILL: 3, Kind.LEADER_KILL: 3,
    Kind.KAFKA_OUTAGE: 2, Kind.REDIS_KILL: 3, Kind.REDIS_OUTAGE: 2, Kind.QUERY_TIMEOUTS: 3,
    Kind.QUERY_BUSY: 3, Kind.HOSTILE_ANSWERS: 3, Kind.FORGERIES: 2,
}  # fmt: skip
SHORT_COUNTS: Mapping[Kind, int] = dict.fromkeys(Kind, 1)


@dataclass(frozen=True, slots=True)
class Timing:
    """The durations a schedule is planned with (real seconds)."""

    time_scale: float = 0.01
    redis_outage: float = 8.0
    burst: float = 8.0  # 113 and timeout bursts
    leader_down: float = 8.0  # a killed leader stays down this long
    restart: float = 20.0  # what a broker's restart is planned to take (it varies)

    @property
    def kafka_outage(self) -> float:
        """Longer than the platform's whole scaled retry schedule, so that every notification
        of a payment made meanwhile is exhausted and only the sweeper can settle it."""
        return math.ceil(PLATFORM_SCHEDULE_S * self.time_scale + 5.0)


@dataclass(frozen=True, slots=True)
class Fault:
    at: float  # planned start, real seconds after the first order
    kind: Kind
    seconds: float = 0.0  # how long the fault lasts, for those that last
    target: int = 0  # a worker's index, a broker's node id (0: the harness picks), a partition

    @property
    def lane(self) -> str:
        return LANES[self.kind]

    def describe(self) -> str:
        return self.kind.value + (f" {self.seconds:g}s" if self.seconds else "")


@dataclass(frozen=True, slots=True)
class Schedule:
    faults: tuple[Fault, ...]
    window: float  # real seconds over which orders are created and faults begin
    details: Mapping[str, Any] = field(default_factory=dict)

    def lanes(self) -> dict[str, list[Fault]]:
        found: dict[str, list[Fault]] = {}
        for fault in self.faults:
            found.setdefault(fault.lane, []).append(fault)
        return found


def planned_seconds(fault: Fault, timing: Timing) -> float:
    """What a fault is planned to take, restarts included."""
    restarts = {
        Kind.KAFKA_KILL: timing.restart, Kind.LEADER_KILL: timing.restart,
        Kind.KAFKA_OUTAGE: timing.restart, Kind.WORKER_KILL: 3.0, Kind.SWEEPER_KILL: 2.0,
        Kind.INGRESS_KILL: 3.0, Kind.REDIS_KILL: 2.0, Kind.REDIS_OUTAGE: 2.0,
    }  # fmt: skip
    return fault.seconds + restarts.get(fault.kind, 1.0)


def build_schedule(
    rng: random.Random,
    *,
    short: bool,
    brokers: int,
    workers: int,
    timing: Timing,
    window: float | None = None,
    only: frozenset[Kind] | None = None,
) -> Schedule:
    """The faults of a run and the window they are spread over: at least what the busiest lane
    needs (its faults' planned durations and gaps), or `window` when that is longer. `only`:
    these kinds alone (a clean measurement of one kind, say)."""
    counts = SHORT_COUNTS if short else FULL_COUNTS
    kinds = [
        k
        for k in Kind
        if (brokers > 1 or k is not Kind.LEADER_KILL) and (only is None or k in only)
    ]
    stops = list(STOP_SECONDS)
    rng.shuffle(stops)
    if short:
        stops = stops[:1]
    unplaced = [
        _fault(kind, number, rng, timing, stops, brokers, workers)
        for kind in kinds
        for number in range(counts[kind])
    ]
    by_lane: dict[str, list[Fault]] = {}
    for fault in unplaced:
        by_lane.setdefault(fault.lane, []).append(fault)
    for lane in by_lane.values():
        rng.shuffle(lane)
    needed = max(
        (
            WARMUP + sum(planned_seconds(f, timing) + MIN_GAP for f in lane)
            for lane in by_lane.values()
        ),
        default=WARMUP,
    )
    span = max(needed, window or 0.0)
    placed: list[Fault] = []
    for lane in by_lane.values():
        busy = sum(planned_seconds(f, timing) for f in lane)
        gap = (span - WARMUP - busy) / len(lane)  # >= MIN_GAP, since span >= needed
        at = WARMUP
        for fault in lane:
            placed.append(_at(fault, round(at, 1)))
            at += planned_seconds(fault, timing) + gap
    placed.sort(key=lambda f: (f.at, f.kind.value))
    return Schedule(tuple(placed), span, {"kafka_outage_s": timing.kafka_outage})


def _fault(  # noqa: PLR0917 - the choices one fault needs
    kind: Kind,
    number: int,
    rng: random.Random,
    timing: Timing,
    stops: Sequence[float],
    brokers: int,
    workers: int,
) -> Fault:
    if kind is Kind.WORKER_STOP:
        return Fault(0.0, kind, stops[number], rng.randrange(workers))
    if kind is Kind.WORKER_KILL:
        return Fault(0.0, kind, 0.0, rng.randrange(workers))
    if kind is Kind.KAFKA_KILL:
        return Fault(0.0, kind, 0.0, rng.randrange(brokers) + 1)
    if kind is Kind.LEADER_KILL:
        return Fault(0.0, kind, timing.leader_down, rng.randrange(6))  # the partition
    durations = {
        Kind.KAFKA_OUTAGE: timing.kafka_outage,
        Kind.REDIS_OUTAGE: timing.redis_outage,
        Kind.QUERY_TIMEOUTS: timing.burst,
        Kind.QUERY_BUSY: timing.burst,
    }
    return Fault(0.0, kind, durations.get(kind, 0.0))


def _at(fault: Fault, at: float) -> Fault:
    return Fault(at, fault.kind, fault.seconds, fault.target)
