"""`paynotify topics ensure [--fix]`: create the project's topics, idempotently.

Partitions and replication come from settings (`PAYNOTIFY_TOPIC_PARTITIONS`,
`PAYNOTIFY_TOPIC_REPLICATION`). An existing topic with fewer partitions than configured (one a
broker auto-created, say) is reported, and the command exits 1; with `--fix` its partitions are
raised to the configured count - an operator's decision, since it moves keys between
partitions: run it before the workers start, or accept that an order's messages in flight may
be handled out of order once. Partitions are never lowered (Kafka cannot).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from shared.settings import Settings

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable


_VISIBLE_WITHIN = 30.0  # seconds for created topics to show in the brokers' metadata


def topic_configs(settings: Settings) -> dict[str, str]:
    # With three or more replicas, an acks=all write must reach two of them to count.
    min_isr = "2" if settings.topic_replication >= 3 else "1"
    return {"min.insync.replicas": min_isr}


async def ensure_topics(settings: Settings, names: Iterable[str] | None = None) -> list[str]:
    """Create whichever of `names` (default: the deployment's topics) is missing; return the
    ones created."""
    names = settings.topics.all if names is None else names
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            new = [
                NewTopic(
                    name,
                    num_partitions=settings.topic_partitions,
                    replication_factor=settings.topic_replication,
                    topic_configs=topic_configs(settings),
                )
                for name in missing
            ]
            answer = await admin.create_topics(new)
            _check_created(answer.topic_errors)
            # The controller has taken them; the brokers' metadata shows them a moment later
            # (seen in CI: listed as missing right after). Return once they can be used.
            async with asyncio.timeout(_VISIBLE_WITHIN):
                while True:
                    if set(missing) <= set(await admin.list_topics()):
                        break
                    await asyncio.sleep(0.1)
        return missing
    finally:
        await admin.close()


class TopicsError(RuntimeError):
    """The brokers refused to create a topic as configured; the message says which and why."""


def _check_created(topic_errors: Iterable[tuple[Any, ...]]) -> None:
    """The create answer's per-topic errors (the client returns them, it does not raise): a
    replication factor above the brokers' count was refused while `ensure` said "created"."""
    refused = []
    for topic, code, *message in topic_errors:
        # Another process may create a topic first: the goal is met all the same.
        if code in {0, TopicAlreadyExistsError.errno}:
            continue
        why = for_code(code).__name__ + (f" ({message[0]})" if message and message[0] else "")
        refused.append(f"{topic}: {why}")
    if refused:
        raise TopicsError("the brokers refused to create " + "; ".join(refused))


async def short_topics(
    settings: Settings, names: Iterable[str] | None = None, *, fix: bool = False
) -> dict[str, int]:
    """The topics of `names` (default: the deployment's) that have fewer partitions than
    configured, with the count they have; with `fix`, raised to the configured count first (and
    then not returned)."""
    names = settings.topics.all if names is None else tuple(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics()  # all topics: never auto-creates one
        counts = {
            entry["topic"]: len(entry.get("partitions") or [])
            for entry in described
            if entry.get("topic") in names
        }
        short = {name: n for name, n in counts.items() if n < settings.topic_partitions}
        if fix and short:
            wanted = NewPartitions(total_count=settings.topic_partitions)
            await admin.create_partitions(dict.fromkeys(short, wanted))
    finally:
        await admin.close()
    if fix and short:  # the answer may carry per-topic errors: look again, as the brokers see it
        for _ in range(20):
            await asyncio.sleep(0.5)
            short = await short_topics(settings, names)
            if not short:
                break
    return short


def main(args: argparse.Namespace) -> int:
    if args.action != "ensure":  # pragma: no cover - argparse restricts the choices
        return 2
    settings = Settings.from_env()
    fix = bool(getattr(args, "fix", False))
    try:
        created = asyncio.run(ensure_topics(settings))
    except TopicsError as exc:
        print(f"topics: {exc}", file=sys.stderr)  # noqa: T201 - a command's output
        return 1
    before = asyncio.run(short_topics(settings))
    after = asyncio.run(short_topics(settings, before, fix=True)) if fix and before else before
    wanted = settings.topic_partitions
    for name in settings.topics.all:
        if name in created:
            state = "created"
        elif name in after:
            state = f"has {after[name]} partitions, fewer than the {wanted} configured (--fix)"
        elif name in before:
            state = f"partitions raised from {before[name]} to {wanted}"
        else:
            state = "exists"
        print(f"{name}: {state}")  # noqa: T201 - a command's output
    return 1 if after else 0


if __name__ == "__main__":
    sys.exit(main(__import__("argparse").Namespace(action="ensure", fix=False)))
