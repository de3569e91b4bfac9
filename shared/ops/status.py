"""`paynotify status`: the pipeline at a glance for the person on call.

Topics with their partitions and messages kept; each consumer group's lag on them; the DLQ by
reason (a scan of the DLQ as it stands); pending and overdue orders; retries waiting and due;
notifications parked by the ingress; the sweeper's lease. A table for people, `--json` for
scripts. Read only: `--dry-run` is accepted, and changes nothing either way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import TopicPartition

from shared.ops.kafka_io import Kafka
from shared.ops.records import RecordError, parse_dead_letter
from shared.ops.redis_state import RedisFigures, open_redis, read_figures
from shared.ops.render import safe, summary, table, when
from shared.ops.tool import EXIT_OK, Console, run_tool

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

    from shared.settings import Settings

LAST_RUN_MISSING = "not recorded: no sweeper has led this week"


@dataclass(frozen=True, slots=True)
class TopicRow:
    topic: str
    partitions: int  # 0: the topic does not exist
    messages: int  # kept now: the sum over partitions of end - first kept offset


@dataclass(frozen=True, slots=True)
class LagRow:
    group: str
    topic: str
    lag: int  # messages kept after the group's committed offsets
    partitions: int  # partitions of the topic the group has committed on


@dataclass(frozen=True, slots=True)
class Status:
    checked_at: float
    topics: tuple[TopicRow, ...]
    lags: tuple[LagRow, ...]
    dlq_reasons: tuple[tuple[str, int], ...]  # most frequent first
    dlq_unreadable: int  # DLQ records that are not dead letters of ours
    redis: RedisFigures


def lag_rows(
    offsets: Mapping[str, Mapping[TopicPartition, int]],
    bounds: Mapping[TopicPartition, tuple[int, int]],
) -> tuple[LagRow, ...]:
    """Each group's lag per topic: what is kept after its commit on each partition; a partition
    it never committed on counts whole (a new member starts from the earliest offset)."""
    rows = []
    for group, committed in sorted(offsets.items()):
        for topic in sorted({tp.topic for tp in committed}):
            lag = 0
            for tp, (begin, end) in bounds.items():
                if tp.topic == topic:
                    lag += max(0, end - max(committed.get(tp, begin), begin))
            rows.append(LagRow(group, topic, lag, sum(tp.topic == topic for tp in committed)))
    return tuple(rows)


def render(status: Status) -> str:
    """The tables an operator reads."""
    figures, lease = status.redis, status.redis.lease
    by = f"by {lease.holder} " if lease.holder else ""
    holder = (
        f"held {by}(token {lease.token_prefix}…, renews within {lease.expires_in:.1f} s)"
        if lease.held and lease.expires_in is not None
        else (f"held {by}(no expiry!)" if lease.held else "free: no sweeper is leading")
    )
    mark = figures.last_run
    last_run = (
        f"{when(mark.at)} by {mark.instance} ({mark.claimed} orders claimed)"
        if mark is not None
        else (
            f"unreadable: {figures.last_run_error}" if figures.last_run_error else LAST_RUN_MISSING
        )
    )
    dlq_rows: list[list[object]] = [[reason, n] for reason, n in status.dlq_reasons]
    if status.dlq_unreadable:
        dlq_rows.append(["(unreadable records)", status.dlq_unreadable])
    parts = [
        f"paynotify status at {when(status.checked_at)}",
        "",
        table(
            ["topic", "partitions", "messages"],
            [[t.topic, t.partitions or "missing", t.messages] for t in status.topics],
        ),
        "",
        table(
            ["consumer group", "topic", "partitions", "lag"],
            [[r.group, r.topic, r.partitions, r.lag] for r in status.lags],
        )
        if status.lags
        else "consumer groups: none has committed on these topics",
        "",
        table(["dead-letter reason", "count"], dlq_rows) if dlq_rows else "DLQ: empty",
        "",
        table(
            ["orders and work", "count"],
            [
                ["pending orders", figures.pending],
                ["overdue orders (due before now)", figures.overdue],
                ["retries waiting", figures.retries],
                ["retries due", figures.retries_due],
                ["parked notifications", figures.parked],
            ],
        ),
        "",
        f"sweeper lease: {holder}",
        f"sweeper last run: {last_run}",
    ]
    return "\n".join(parts)


def as_json(status: Status) -> bytes:
    document: dict[str, Any] = asdict(status)
    document["dlq_reasons"] = dict(status.dlq_reasons)
    document["redis"]["last_run_note"] = (
        None if status.redis.last_run or status.redis.last_run_error else LAST_RUN_MISSING
    )
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


async def gather(settings: Settings, console: Console, *, bound: float) -> Status:
    names = settings.topics
    checked_at = console.clock.time()
    redis = open_redis(settings)
    try:
        figures = await read_figures(redis, console.clock, bound=bound)
    finally:
        await redis.aclose()
    kafka = await Kafka.open(settings, bound=bound, clock=console.clock.monotonic)
    async with kafka:
        known = await kafka.partitions()
        tps = [TopicPartition(t, p) for t in names.all for p in range(known.get(t, 0))]
        bounds = await kafka.bounds(tps)
        topics = tuple(
            TopicRow(
                t,
                known.get(t, 0),
                sum(end - begin for tp, (begin, end) in bounds.items() if tp.topic == t),
            )
            for t in names.all
        )
        lags = lag_rows(await kafka.group_offsets(names.all), bounds)
        reasons: Counter[str] = Counter()
        unreadable = 0
        bar = console.progress("reading the DLQ")
        async for record in kafka.scan(names.dlq, known.get(names.dlq, 0), progress=bar):
            try:
                reasons[parse_dead_letter(record.at, record.key, record.value).reason] += 1
            except RecordError as exc:
                unreadable += 1
                console.note(f"skipped {record.at}: {safe(exc)}")
        bar.close()
    return Status(checked_at, topics, lags, tuple(reasons.most_common()), unreadable, figures)


async def run_status(settings: Settings, console: Console, args: argparse.Namespace) -> int:
    status = await gather(settings, console, bound=args.timeout)
    if args.json:
        console.say(as_json(status).decode())
    else:
        console.say(render(status))
    dead = sum(n for _, n in status.dlq_reasons)
    worst = max((r.lag for r in status.lags), default=0)
    (console.note if args.json else console.say)(
        summary(
            "status",
            [
                ("topics", len(status.topics)),
                ("dead letters", dead),
                ("largest lag", worst),
                ("overdue orders", status.redis.overdue),
                ("unreadable DLQ records skipped", status.dlq_unreadable),
            ],
            dry_run=args.dry_run,
            always=4,
        )
    )
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    return run_tool("status", lambda settings, console: run_status(settings, console, args))
