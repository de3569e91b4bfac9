"""`paynotify replay`: publish recorded outcome events again, for a downstream system that lost
some, selected by order, merchant, type or time.

The events are read from the events topic as it stands and republished byte for byte: the same
key, value (so the same CloudEvent `id`, `time` and data) and headers; each id once (a redelivery
may have put an event on the topic twice). An order named with `--order` whose event the topic
no longer keeps (retention) is taken from the outcome the workers recorded in Redis, which holds
the event's bytes as first published (until `PAYNOTIFY_OUTCOME_TTL_DAYS`). Consumers drop ids
they have seen (docs/events.md), so a replay of events a consumer already has is harmless.
`--to TOPIC` publishes to another existing topic instead (a consumer's own repair topic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.adapters.kafka import CLOUDEVENTS_HEADERS
from shared.ops.kafka_io import Kafka
from shared.ops.records import (
    EventFilter,
    FirstOfEach,
    RecordedEvent,
    RecordError,
    parse_event,
)
from shared.ops.redis_state import open_redis, recorded_event
from shared.ops.render import safe, summary, when
from shared.ops.tool import EXIT_FAILED, EXIT_OK, Console, UsageError, event_filter, run_tool

if TYPE_CHECKING:
    import argparse

    from shared.settings import Settings


async def read_events(
    kafka: Kafka, topic: str, selected: EventFilter, console: Console
) -> tuple[list[RecordedEvent], int, int, int]:
    """(the events selected, first of each id; records read; repeats dropped; unreadable)."""
    partitions = (await kafka.partitions()).get(topic, 0)
    if not partitions:
        raise UsageError(f"the events topic {topic} does not exist")
    firsts = FirstOfEach()
    chosen: list[RecordedEvent] = []
    read = unreadable = 0
    bar = console.progress("reading events")
    async for record in kafka.scan(topic, partitions, progress=bar):
        read += 1
        try:
            event = parse_event(record.at, record.key, record.value, record.headers)
        except RecordError as exc:
            unreadable += 1
            console.note(f"skipped {record.at}: {safe(exc)}")
            continue
        if selected.matches(event) and firsts.first(event):
            chosen.append(event)
    bar.close()
    return chosen, read, firsts.repeats, unreadable


async def from_redis(
    settings: Settings, orders: set[str], console: Console, *, bound: float
) -> tuple[list[RecordedEvent], list[str]]:
    """The recorded events of `orders` (order keys) that Redis still has; (found, missing)."""
    found: list[RecordedEvent] = []
    missing: list[str] = []
    redis = open_redis(settings)
    try:
        for order in sorted(orders):
            raw = await recorded_event(redis, order, bound=bound)
            if raw is None:
                missing.append(order)
                continue
            try:
                event = parse_event(None, order.encode(), raw, CLOUDEVENTS_HEADERS)
            except RecordError as exc:
                console.note(f"skipped the outcome recorded for {safe(order)}: {safe(exc)}")
                missing.append(order)
                continue
            found.append(event)
    finally:
        await redis.aclose()
    return found, missing


async def run_replay(settings: Settings, console: Console, args: argparse.Namespace) -> int:
    selected = event_filter(args, console.clock.time())
    if selected.selects_all and not args.all:
        raise UsageError("replay selects by --order, --merchant, --type, --since or --until; "
                         "give --all to replay every event")  # fmt: skip
    source = settings.topics.events
    target = args.to or source
    async with await Kafka.open(settings, bound=args.timeout, clock=console.clock.monotonic) as k:
        if target not in await k.partitions():
            raise UsageError(f"the topic {target} does not exist (it is never created here)")
        events, read, repeats, unreadable = await read_events(k, source, selected, console)
        unseen = set(selected.orders) - {e.subject for e in events}
        recorded, missing = await from_redis(settings, unseen, console, bound=args.timeout)
        events += [e for e in recorded if selected.matches(e)]
        for order in missing:
            console.say(f"no event for {safe(order)}: not on {source}, no outcome in Redis")
        done, failed = await _send(k, events, target, console, dry_run=args.dry_run)
    line = summary(
        "replay",
        [("matched", len(events)), ("would replay" if args.dry_run else "replayed", done),
         ("taken from Redis", len(recorded)), ("repeats of one id dropped", repeats),
         ("orders without an event", len(missing)), ("unreadable skipped", unreadable),
         ("read", read), ("left undone after a failure", failed)],
        dry_run=args.dry_run,
    )  # fmt: skip
    console.say(line)
    return EXIT_FAILED if failed else EXIT_OK


async def _send(
    kafka: Kafka, events: list[RecordedEvent], target: str, console: Console, *, dry_run: bool
) -> tuple[int, int]:
    """Publish each event as it was (or say what would be); (done, left undone)."""
    bar = console.progress("replaying", len(events))
    for index, event in enumerate(events):
        where = "Redis outcome" if event.at is None else str(event.at)
        what = (
            f"{event.id} {event.type} {safe(event.subject)} ({when(event.time)}) "
            f"from {where} -> {target}"
        )
        if dry_run:
            console.say(f"would replay {what}")
        else:
            try:
                await kafka.publish(target, event.value, event.key, event.headers)
            except Exception as exc:  # said, and the run stops: the summary counts what is left
                console.note(f"replay of {event.id} failed: {type(exc).__name__}")
                return index, len(events) - index
            console.say(f"replayed {what}")
        bar.advance()
    bar.close()
    return len(events), 0


def main(args: argparse.Namespace) -> int:
    return run_tool("replay", lambda settings, console: run_replay(settings, console, args))
