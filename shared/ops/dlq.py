"""`paynotify dlq list` and `paynotify dlq redrive`: the dead letters, selected by reason,
merchant, order and time, shown or sent back to where they came from.

A redrive republishes the ORIGINAL message to its source topic (the dead letter's `origin`,
`topic/partition@offset`): the record still kept there, byte for byte with its key and headers,
after checking it is the message the DLQ kept; when the topic no longer keeps it (retention), the
bytes the DLQ kept, with the key the ingress gives such a message. The message keeps its ids
(delivery id, order key), so the workers' dedupe holds: a payment already settled is not
settled twice, it only has its recorded event published again. The DLQ is a log, so a redriven
dead letter stays on it; redriving it again is harmless for the same reason. Dead letters that
name no source record (the sweeper's, which describe an order: use `paynotify requery`) or whose
message the DLQ could not keep are reported, never guessed at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from shared.ops.kafka_io import Kafka
from shared.ops.records import (
    DeadLetter,
    LetterFilter,
    Position,
    RecordError,
    Redrive,
    Unredrivable,
    fallback_key,
    parse_dead_letter,
    plan_redrive,
    same_message,
)
from shared.ops.render import safe, summary, table, when
from shared.ops.tool import EXIT_FAILED, EXIT_OK, Console, UsageError, letter_filter, run_tool

if TYPE_CHECKING:
    import argparse

    from shared.settings import Settings


async def read_letters(
    kafka: Kafka, dlq: str, selected: LetterFilter, console: Console
) -> tuple[list[DeadLetter], int, int]:
    """(the dead letters selected, records read, unreadable records skipped)."""
    partitions = (await kafka.partitions()).get(dlq, 0)
    if not partitions:
        raise UsageError(f"the DLQ topic {dlq} does not exist")
    chosen: list[DeadLetter] = []
    read = unreadable = 0
    bar = console.progress("reading the DLQ")
    async for record in kafka.scan(dlq, partitions, progress=bar):
        read += 1
        try:
            letter = parse_dead_letter(record.at, record.key, record.value)
        except RecordError as exc:
            unreadable += 1
            console.note(f"skipped {record.at}: {safe(exc)}")
            continue
        if selected.matches(letter):
            chosen.append(letter)
    bar.close()
    return chosen, read, unreadable


def letter_row(letter: DeadLetter) -> list[object]:
    at = letter.at
    return [
        f"{at.partition}@{at.offset}",
        when(letter.failed_at),
        letter.reason,
        letter.order or letter.key or "-",
        letter.origin,
        safe(letter.detail, 60),
    ]


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "at": str(letter.at),
        "key": letter.key,
        "reason": letter.reason,
        "detail": letter.detail,
        "origin": letter.origin,
        "failed_at": letter.failed_at,
        "mch_id": letter.mch_id,
        "mch_order": letter.mch_order,
        "payload": letter.payload_note,
        "payload_bytes": None if letter.payload is None else len(letter.payload),
    }


async def run_list(settings: Settings, console: Console, args: argparse.Namespace) -> int:
    selected = letter_filter(args, console.clock.time())
    async with await Kafka.open(settings, bound=args.timeout, clock=console.clock.monotonic) as k:
        letters, read, unreadable = await read_letters(k, settings.topics.dlq, selected, console)
    shown = letters if args.limit is None else letters[: args.limit]
    if args.json:
        for letter in shown:
            console.say(orjson.dumps(letter_json(letter)).decode())
    elif shown:
        headers = ["at", "failed at", "reason", "order (or key)", "origin", "detail"]
        console.say(table(headers, [letter_row(letter) for letter in shown]))
    line = summary(
        "dlq list",
        [("read", read), ("matched", len(letters)), ("shown", len(shown)),
         ("unreadable skipped", unreadable)],
        dry_run=args.dry_run,
    )  # fmt: skip
    (console.note if args.json else console.say)(line)
    return EXIT_OK


async def run_redrive(settings: Settings, console: Console, args: argparse.Namespace) -> int:
    selected = letter_filter(args, console.clock.time())
    if selected == LetterFilter() and not args.all:
        raise UsageError("redrive selects by --reason, --merchant, --order, --since or "
                         "--until; give --all to redrive every dead letter")  # fmt: skip
    names = settings.topics
    targets = frozenset({names.callbacks, names.orders})
    async with await Kafka.open(settings, bound=args.timeout, clock=console.clock.monotonic) as k:
        letters, read, unreadable = await read_letters(k, names.dlq, selected, console)
        plans: list[Redrive] = []
        refused: list[Unredrivable] = []
        sources: set[Position] = set()
        repeats = 0
        for letter in letters:
            plan = plan_redrive(letter, targets)
            if isinstance(plan, Unredrivable):
                refused.append(plan)
            elif plan.source in sources:  # dead-lettered more than once: one redrive
                repeats += 1
            else:
                sources.add(plan.source)
                plans.append(plan)
        for plan in refused:
            console.say(f"not redrivable {plan.letter.at}: {safe(plan.why, 200)}")
        done, failed = await _send(k, plans, names.callbacks, console, args.dry_run, refused)
    line = summary(
        "dlq redrive",
        [("matched", len(letters)), ("would redrive" if args.dry_run else "redriven", done),
         ("not redrivable", len(refused)), ("repeats of one message", repeats),
         ("unreadable skipped", unreadable), ("read", read),
         ("left undone after a failure", failed)],
        dry_run=args.dry_run,
    )  # fmt: skip
    console.say(line)
    return EXIT_FAILED if failed else EXIT_OK


async def _send(  # noqa: PLR0917 - the redrive's state, in one place
    kafka: Kafka,
    plans: list[Redrive],
    callbacks: str,
    console: Console,
    dry_run: bool,
    refused: list[Unredrivable],
) -> tuple[int, int]:
    """Redrive each plan (or say what it would do); (done, left undone). The first failure to
    publish stops the run: Kafka refusing one usually refuses the next."""
    done = 0
    bar = console.progress("redriving", len(plans))
    for index, plan in enumerate(plans):
        found = await kafka.fetch(plan.source)
        if found is not None and found.value is not None:
            if not same_message(plan.payload, found.value):
                refused.append(Unredrivable(plan.letter, "the record at its origin is another "
                                            "message"))  # fmt: skip
                console.say(f"not redrivable {plan.letter.at}: the record at {plan.source} "
                            "is another message")  # fmt: skip
                continue
            key, value, headers, how = found.key, found.value, found.headers, "original record"
        else:
            text = fallback_key(plan, callbacks)
            key, value, headers = (None if text is None else text.encode()), plan.payload, ()
            how = "rebuilt from the dead letter (its source no longer keeps it)"
        target = f"{plan.source.topic} key={safe(key.decode('utf-8', 'replace')) if key else '-'}"
        what = f"{plan.letter.at} ({plan.letter.reason}) -> {target}, {len(value)} bytes, {how}"
        if dry_run:
            console.say(f"would redrive {what}")
        else:
            try:
                sent = await kafka.publish(plan.source.topic, value, key, headers)
            except Exception as exc:  # said, and the run stops: the summary counts what is left
                console.note(f"redrive of {plan.letter.at} failed: {type(exc).__name__}")
                return done, len(plans) - index
            console.say(f"redriven {what}, now at {sent}")
        done += 1
        bar.advance()
    bar.close()
    return done, 0


def main(args: argparse.Namespace) -> int:
    body = run_redrive if args.action == "redrive" else run_list
    return run_tool(f"dlq {args.action}", lambda settings, console: body(settings, console, args))
