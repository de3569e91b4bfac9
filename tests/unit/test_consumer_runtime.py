"""The consumer runtime (workers.runtime) on a scripted Kafka consumer: which offsets it
commits, what a strategy's `before_commit` holds back, ordering per key, the hand-over of
revoked partitions, and a job that fails. The callbacks and orders topics run on it; their
strategies are proved on real Kafka in the integration tier."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from shared.clock import SystemClock
from workers.keyed import KeyedRunner
from workers.runtime import ConsumerRuntime

pytestmark = pytest.mark.unit

TOPIC = "t"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class ScriptedConsumer:
    """Hands out the batches it is given, once each; records commits."""

    def __init__(self) -> None:
        self.batches: list[dict[TopicPartition, list[Any]]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        assert topics == [TOPIC]
        self.listener = listener

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0.001)
        return self.batches.pop(0) if self.batches else {}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


def record(tp: TopicPartition, offset: int, key: str) -> SimpleNamespace:
    return SimpleNamespace(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        key=key.encode(),
        value=b"",
        headers=(),
    )


class Strategy:
    """Settles every message unless told to hold one (until released) or to give way."""

    def __init__(self) -> None:
        self.held: dict[str, asyncio.Event] = {}
        self.order: list[str] = []
        self.commit_allowed = True
        self.gave_way: list[str] = []
        self.fail: set[str] = set()

    def key(self, rec: Any, origin: str) -> str:
        return rec.key.decode()

    async def process(self, rec: Any, origin: str, give_way: asyncio.Event) -> bool:
        if origin in self.fail:
            raise ValueError("boom")
        gate = self.held.get(origin)
        if gate is not None:
            waiting = asyncio.ensure_future(gate.wait())
            revoked = asyncio.ensure_future(give_way.wait())
            await asyncio.wait({waiting, revoked}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            revoked.cancel()
            if give_way.is_set() and not gate.is_set():
                self.gave_way.append(origin)
                return False
        self.order.append(origin)
        return True

    async def before_commit(self) -> bool:
        return self.commit_allowed


def runtime(consumer: ScriptedConsumer, strategy: Strategy, stats: Counter[str]) -> ConsumerRuntime:
    made = ConsumerRuntime(
        consumer,  # type: ignore[arg-type]
        [TOPIC],
        KeyedRunner(8),
        strategy,
        clock=SystemClock(),
        stats=stats,
        log_name="test.runtime",
        commit_interval=0.0,
        revoke_deadline=0.5,
    )
    made.subscribe()
    made.assign([P0, P1])
    return made


async def until(condition: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


async def test_only_the_settled_prefix_of_a_partition_is_committed() -> None:
    consumer, strategy, stats = ScriptedConsumer(), Strategy(), Counter[str]()
    strategy.held["t/0@1"] = asyncio.Event()
    consumer.batches = [{P0: [record(P0, 0, "a"), record(P0, 1, "b"), record(P0, 2, "c")]}]
    stop = asyncio.Event()
    running = asyncio.create_task(runtime(consumer, strategy, stats).run(stop))
    await until(
        lambda: {0: 1} in [{tp.partition: o for tp, o in c.items()} for c in consumer.commits]
    )
    assert "t/0@2" in strategy.order  # settled, but after the held message: not committed yet
    assert all(c[P0] <= 1 for c in consumer.commits)
    strategy.held["t/0@1"].set()
    await until(lambda: any(c.get(P0) == 3 for c in consumer.commits))
    stop.set()
    await running


async def test_a_strategy_that_says_no_holds_every_commit_back() -> None:
    consumer, strategy, stats = ScriptedConsumer(), Strategy(), Counter[str]()
    strategy.commit_allowed = False
    consumer.batches = [{P0: [record(P0, 0, "a")]}]
    stop = asyncio.Event()
    running = asyncio.create_task(runtime(consumer, strategy, stats).run(stop))
    await until(lambda: strategy.order and stats["commit_skipped"] >= 3)
    assert consumer.commits == []
    strategy.commit_allowed = True
    await until(lambda: consumer.commits)
    assert consumer.commits[-1] == {P0: 1}
    stop.set()
    await running


async def test_one_keys_messages_run_in_order_and_other_keys_do_not_wait() -> None:
    consumer, strategy, stats = ScriptedConsumer(), Strategy(), Counter[str]()
    strategy.held["t/0@0"] = asyncio.Event()  # the first of key "a" is slow
    consumer.batches = [
        {P0: [record(P0, 0, "a"), record(P0, 1, "a"), record(P0, 2, "b")]},
    ]
    stop = asyncio.Event()
    running = asyncio.create_task(runtime(consumer, strategy, stats).run(stop))
    await until(lambda: "t/0@2" in strategy.order)  # "b" did not wait for "a"
    assert "t/0@1" not in strategy.order  # the second "a" waits for the first
    strategy.held["t/0@0"].set()
    await until(lambda: "t/0@1" in strategy.order)
    assert strategy.order.index("t/0@0") < strategy.order.index("t/0@1")
    stop.set()
    await running


async def test_a_revoked_partition_gives_way_commits_what_settled_and_is_dropped() -> None:
    consumer, strategy, stats = ScriptedConsumer(), Strategy(), Counter[str]()
    strategy.held["t/1@1"] = asyncio.Event()  # never released: it must give way
    consumer.batches = [{P1: [record(P1, 0, "x"), record(P1, 1, "y")], P0: [record(P0, 0, "z")]}]
    stop = asyncio.Event()
    made = runtime(consumer, strategy, stats)
    running = asyncio.create_task(made.run(stop))
    await until(lambda: {"t/1@0", "t/0@0"} <= set(strategy.order))
    async with asyncio.timeout(5):
        await consumer.listener.on_partitions_revoked([P1])
    assert strategy.gave_way == ["t/1@1"]
    assert any(c.get(P1) == 1 for c in consumer.commits)  # 0 settled; 1 gave way: not past it
    assert all(c.get(P1, 0) <= 1 for c in consumer.commits)
    consumer.batches = [{P1: [record(P1, 2, "w")]}]  # no longer ours: not dispatched
    await asyncio.sleep(0.05)
    assert "t/1@2" not in strategy.order
    stop.set()
    await running


async def test_a_job_that_raises_stops_the_runtime_with_its_error() -> None:
    consumer, strategy, stats = ScriptedConsumer(), Strategy(), Counter[str]()
    strategy.fail.add("t/0@1")
    consumer.batches = [{P0: [record(P0, 0, "a"), record(P0, 1, "b")]}]
    with pytest.raises(RuntimeError, match="failed unexpectedly") as raised:
        async with asyncio.timeout(5):
            await runtime(consumer, strategy, stats).run(asyncio.Event())
    assert isinstance(raised.value.__cause__, ValueError)
    assert all(c.get(P0, 0) <= 1 for c in consumer.commits)  # never past the failed message


def test_a_runtime_s_events_carry_its_prefix(caplog: pytest.LogCaptureFixture) -> None:
    """A worker's `partitions_assigned` is its callbacks': the orders topic's runtime logs
    `orders_partitions_assigned` (reading both as one mixed the orders topic's partitions into
    the callbacks' hand-over, seen in tests/e2e/test_worker_group.py)."""
    made = ConsumerRuntime(
        ScriptedConsumer(),  # type: ignore[arg-type]
        [TOPIC],
        KeyedRunner(1),
        Strategy(),
        clock=SystemClock(),
        stats=Counter(),
        log_name="test.orders",
        event_prefix="orders_",
    )
    with caplog.at_level("INFO", logger="paynotify"):
        made.assign([P0])
    assert [r.getMessage() for r in caplog.records] == ["orders_partitions_assigned"]
