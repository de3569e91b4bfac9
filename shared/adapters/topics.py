"""`paynotify topics ensure`: create the project's topics, idempotently.

Partitions and replication come from settings (`PAYNOTIFY_TOPIC_PARTITIONS`,
`PAYNOTIFY_TOPIC_REPLICATION`). An existing topic is left as it is: partition counts only ever
grow by an operator's decision, since growing them moves keys between partitions.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from shared.settings import Settings

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable


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


def main(args: argparse.Namespace) -> int:
    if args.action != "ensure":  # pragma: no cover - argparse restricts the choices
        return 2
    settings = Settings.from_env()
    try:
        created = asyncio.run(ensure_topics(settings))
    except TopicsError as exc:
        print(f"topics: {exc}", file=sys.stderr)  # noqa: T201 - a command's output
        return 1
    for name in settings.topics.all:
        state = "created" if name in created else "exists"
        print(f"{name}: {state}")  # noqa: T201 - a command's output
    return 0


if __name__ == "__main__":
    sys.exit(main(__import__("argparse").Namespace(action="ensure")))
