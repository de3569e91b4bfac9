"""A downstream billing consumer of `paynotify.events`: the starting point for billing teams.

What it shows:
- read with `isolation_level="read_committed"`;
- drop the rare duplicate event by its `id` (paynotify's ids are deterministic per payment and
  outcome, so a redelivered outcome carries the id it had the first time);
- keep its own offsets *with* its state, written atomically together, so a crash can never
  apply an event twice or skip one (no consumer-group commits are involved).

Run: `python examples/billing_consumer.py --state billing-state.json` (Ctrl-C to stop). It prints
the outcome counts; a real billing system replaces `apply` with its ledger update. `make run`'s
demo (`devtools/demo`) runs `consume` for its outcome counts, and passes `on_event` to see each new
event with its Kafka timestamp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

if TYPE_CHECKING:
    from collections.abc import Callable

EVENTS_TOPIC = "paynotify.events"


@dataclass
class BillingState:
    """Everything the consumer knows, saved as one file: offsets and effects never disagree."""

    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read
    seen_ids: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0

    @classmethod
    def load(cls, path: Path) -> BillingState:
        if not path.exists():
            return cls()
        raw = orjson.loads(path.read_bytes())
        return cls(
            offsets={int(p): int(o) for p, o in raw["offsets"].items()},
            seen_ids=set(raw["seen_ids"]),
            counts=Counter(raw["counts"]),
            duplicates=int(raw["duplicates"]),
        )

    def save(self, path: Path) -> None:
        document = {
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "seen_ids": sorted(self.seen_ids),
            "counts": dict(self.counts),
            "duplicates": self.duplicates,
        }
        # Write-then-rename: the file is either the old state or the new one, never half.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(document))
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)

    def apply(self, event: dict[str, Any], partition: int, offset: int) -> bool:
        """Apply one event; False when it was a duplicate (already applied under this id)."""
        self.offsets[partition] = offset + 1
        if event["id"] in self.seen_ids:
            self.duplicates += 1
            return False
        self.seen_ids.add(event["id"])
        self.counts[event["type"]] += 1
        return True


async def consume(
    bootstrap: str,
    state_path: Path,
    stop: asyncio.Event,
    *,
    idle_exit: float | None = None,
    on_event: Callable[[dict[str, Any], int], None] | None = None,
    topic: str = EVENTS_TOPIC,
) -> BillingState:
    """Consume until `stop` is set (or, with `idle_exit`, until no event came for that long).

    `on_event(event, timestamp_ms)` is called once per newly applied event (never for a dropped
    duplicate), with the Kafka record's timestamp."""
    state = BillingState.load(state_path)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,  # offsets live in the state file, not in Kafka
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        for tp in tps:
            if tp.partition in state.offsets:
                consumer.seek(tp, state.offsets[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        loop = asyncio.get_running_loop()
        last_event = loop.time()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            for tp, records in batch.items():
                for record in records:
                    event = orjson.loads(record.value)
                    if state.apply(event, tp.partition, record.offset) and on_event is not None:
                        on_event(event, record.timestamp)
            if batch:
                state.save(state_path)
                last_event = loop.time()
            elif idle_exit is not None and loop.time() - last_event > idle_exit:
                break
    finally:
        await consumer.stop()
    return state


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    # From the broker's metadata: a consumer's own metadata holds only topics it subscribed to,
    # and this one assigns partitions itself.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(30):
            while True:
                (described,) = await admin.describe_topics([topic])
                found = [p["partition"] for p in described.get("partitions") or ()]
                if described.get("error_code") == 0 and found:
                    return sorted(found)
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", default="billing-state.json", type=Path)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--topic",
        default=os.environ.get("PAYNOTIFY_TOPIC_PREFIX", "") + EVENTS_TOPIC,
        help="the events topic (default: PAYNOTIFY_TOPIC_PREFIX + paynotify.events)",
    )
    args = parser.parse_args()

    async def run() -> BillingState:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await consume(args.bootstrap, args.state, stop, topic=args.topic)

    state = asyncio.run(run())
    for event_type, count in sorted(state.counts.items()):
        print(f"{event_type:40} {count}")
    print(f"{'duplicates dropped':40} {state.duplicates}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
