"""A Redis Cluster primary killed under load, with and without `PAYNOTIFY_REDIS_WAIT_REPLICAS`
(issue 13; docs/scaling.md, Failover semantics). `python -m tests.chaos.failover` prints the
figures of both; tests/chaos/test_failover.py asserts the promise of the waiting one.

The cluster is `LocalRedisCluster` with 3 primaries and a replica each. Payments go through the
workers' reconciler (`Reconciler.settle`: the real outcome store, the real Kafka producer on an
events topic of the run's own; the platform's order query is scripted), in four steps:

1. a third of the payments, with every node up;
2. the replica of primary 1 is paused (SIGSTOP) and its replication link dropped (`CLIENT KILL
   TYPE replica` on the primary), and a second third is dispatched: primary 1 takes the writes
   of its slots and cannot replicate them. Once it holds every one of them,
   it is killed (`kill -9`). This makes the window of an asynchronous failover (writes a primary
   acknowledged and its replica never got) wide enough to see every time;
3. the last third is dispatched while the replica is resumed, promoted by the cluster, and the
   killed node restarts and rejoins as its replica; every payment then settles;
4. the platform's answer changes (the merchant's sum is now 1.10 yuan, so a payment decided now
   is `amount_mismatched`) and every notification is delivered again, as the platform does for
   a notification whose answer it did not get: a payment whose outcome was lost is decided a
   second time, on different facts, and its second outcome contradicts the first.

The events topic is then judged by the chaos run's checker (tests.chaos.verdict.judge).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devtools.demo.plan import PlannedOrder
from devtools.stack.local import LocalStack, free_port
from devtools.stack.redis_cluster import LocalRedisCluster, slot_ranges
from shared.adapters.kafka import CallbackEnvelope, TopicSink, start_producer
from shared.adapters.outcomes import OutcomeStore, outcome_key
from shared.adapters.redis_client import connect_redis
from shared.adapters.redis_keys import slot
from shared.clock import SystemClock
from shared.domain.decision import requery_schedule
from shared.logs import configure_logging
from shared.merchants import parse_merchants
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.models import OrderQueryAnswer
from shared.protocol.payment import PaymentReport, PaymentStatus, report_fields
from shared.protocol.signing import signed
from shared.service.settle import Reconciler, Settlement, Work
from shared.settings import Settings
from tests.chaos.verdict import Event, Figures, Payment, judge

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redis.asyncio import Redis

    from shared.adapters.renewing_producer import RenewingProducer

MCH = "f4ilover01"
KEY = "0f5e4d3c2b1a09f8e7d6c5b4a3928170"  # a test merchant's key, never a real one
VICTIM = 1  # the primary killed: node 1 (its replica is node 4)
PAID = 1000  # li
ASKED_LATER = 1100  # the merchant's sum in step 4's answers
DEADLINE = 240.0  # seconds for one run, everything included


@dataclass(frozen=True)
class FailoverConfig:
    payments: int = 150  # at 300 the run timed out waiting for primary 1 (not investigated)
    concurrency: int = 16
    wait_replicas: int = 0
    wait_timeout_ms: int = 100
    seed: int = 1  # names the orders, so which of them fall in primary 1's slots


@dataclass
class FailoverResult:
    wait_replicas: int
    figures: Figures
    unreplicated: int  # outcomes primary 1 held, unreplicated, when it was killed
    redecided: int  # payments decided again by step 4's deliveries
    not_replicated: int  # outcome writes and confirmations WAIT found short (retried)
    seconds: float
    dead_lettered: int  # messages the reconciler dead-lettered (none expected)

    def line(self) -> str:
        return (
            f"wait_replicas={self.wait_replicas} unreplicated_at_kill={self.unreplicated} "
            f"redecided={self.redecided} not_replicated_retries={self.not_replicated} "
            f"dead_lettered={self.dead_lettered} "
            f"seconds={self.seconds:.1f} | {self.figures.line()} "
            f"unexpected={self.figures.unexpected}"
        )


@dataclass
class _Answers:
    """The platform's order query: every order paid PAID li of `asked`."""

    asked: int = PAID
    calls: Counter[str] = field(default_factory=Counter)

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
        self.calls[mch_order] += 1
        return OrderQueryAnswer(report=_report(mch_order, self.asked), key_id="k", raw={})


class _CountingSink(TopicSink):
    def __init__(self, producer: RenewingProducer, topic: str) -> None:
        super().__init__(producer, topic)  # type: ignore[arg-type]
        self.sent = 0

    async def publish(self, key: str, value: bytes) -> None:
        await super().publish(key, value)
        self.sent += 1


def _report(order: str, asked: int) -> PaymentReport:
    now = int(time.time())
    return PaymentReport(
        mch_id=MCH, pay_type=10, mch_order=order, amt=PAID, mch_amt=asked, amt_type="cny",
        status=PaymentStatus(2), created_at=now - 120, success_at=now - 60, origin_order=None,
        call=None, sign_type="md5",
    )  # fmt: skip


def _work(order: str) -> Work:
    envelope = CallbackEnvelope(
        fields=signed(report_fields(_report(order, PAID)), KEY), key_id="k",
        received_at=time.time(), peer="127.0.0.1", delivery_id=uuid.uuid4().hex,
        source="notification",
    )  # fmt: skip
    return Work(envelope=envelope, origin=f"failover/{order}")


async def _until(check: Callable[[], object], what: str, deadline: float) -> None:
    """Poll `check` (sync or async) until true, or fail naming `what`."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        answer = check()
        if asyncio.iscoroutine(answer):
            answer = await answer
        if answer:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {deadline:.0f}s")


class _Run:
    def __init__(
        self, cluster: LocalRedisCluster, bootstrap: str, config: FailoverConfig, say: Callable
    ) -> None:
        self.cluster, self.bootstrap, self.config, self.say = cluster, bootstrap, config, say
        tag = uuid.uuid4().hex[:8]
        self.orders = [f"F{config.seed}-{i:05d}" for i in range(config.payments)]
        first, last = slot_ranges(cluster.primaries)[VICTIM - 1]
        self.victim_orders = {
            o for o in self.orders if first <= slot(outcome_key(f"{MCH}:{o}")) <= last
        }
        self.events_topic, self.dlq_topic = f"failover.{tag}.events", f"failover.{tag}.dlq"
        self.answers = _Answers()
        self.stats: Counter[str] = Counter()
        self.settled: dict[str, Settlement] = {}

    def reconciler(self, store: OutcomeStore, events: TopicSink, dlq: TopicSink) -> Reconciler:
        return Reconciler(
            store=store, platform=self.answers,
            merchants=parse_merchants({"merchants": {MCH: {"keys": [KEY]}}}),
            events=events, dlq=dlq, pay_types=PayTypeCatalog.documented(), policy="optional",
            schedule=requery_schedule(0.001), clock=SystemClock(), min_retry_delay=0.0,
            stats=self.stats, random=lambda: 0.5,
        )  # fmt: skip

    async def settle_all(self, reconciler: Reconciler, orders: Sequence[str]) -> list[Settlement]:
        gate = asyncio.Semaphore(self.config.concurrency)

        async def one(order: str) -> Settlement:
            async with gate:
                settlement = await reconciler.settle(_work(order))
                self.settled[order] = settlement
                return settlement

        return list(await asyncio.gather(*(one(order) for order in orders)))

    async def run(self) -> FailoverResult:
        started = time.monotonic()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(t, 1, 1) for t in (self.events_topic, self.dlq_topic)])
        producer = await start_producer(Settings(kafka_bootstrap_servers=self.bootstrap))
        redis = connect_redis(self.cluster.url, max_connections=64)
        store = OutcomeStore(
            redis, outcome_ttl_seconds=3600, lock_ttl_ms=2000,
            wait_replicas=self.config.wait_replicas, wait_timeout_ms=self.config.wait_timeout_ms,
        )  # fmt: skip
        events = _CountingSink(producer, self.events_topic)
        try:
            unreplicated, redecided = await self._steps(redis, store, events, producer)
            found = await self._read_events(events.sent)
        finally:
            await store.aclose()
            await redis.aclose()
            await producer.stop()
            await admin.delete_topics([self.events_topic, self.dlq_topic])
            await admin.close()
        verdict = judge(
            [PlannedOrder(o, 10, PAID) for o in self.orders], self.orders,
            [Payment(o, None, PAID) for o in self.orders], found,
            forged_deliveries_accepted=0, lags={},
        )  # fmt: skip
        return FailoverResult(
            self.config.wait_replicas, verdict.figures, unreplicated, redecided,
            self.stats["outcome_not_replicated"], time.monotonic() - started,
            sum(n for k, n in self.stats.items() if k.startswith("dead_letter:")),
        )  # fmt: skip

    async def _steps(
        self, redis: Redis, store: OutcomeStore, events: TopicSink, producer: RenewingProducer
    ) -> tuple[int, int]:
        cluster, say = self.cluster, self.say
        replica = cluster.first_replica(VICTIM)
        await _until(lambda: self._synced(VICTIM), "primary 1's replica in sync", 60)
        dlq = TopicSink(producer, self.dlq_topic)  # type: ignore[arg-type]
        reconciler = self.reconciler(store, events, dlq)
        third = len(self.orders) // 3
        a, b, c = self.orders[:third], self.orders[third : 2 * third], self.orders[2 * third :]
        await self.settle_all(reconciler, a)
        say(f"step 1: {len(a)} payments settled, every node up")

        # SIGSTOP alone is not enough: what primary 1 sends still lands in the paused replica's
        # socket buffer, and is applied when it resumes. Dropping the link as well leaves the
        # writes below on primary 1 alone (a partition, or a replica far behind).
        cluster.pause_node(replica)
        with cluster.client(VICTIM) as link:
            link.execute_command("CLIENT", "KILL", "TYPE", "replica")
        victim_b = [o for o in b if o in self.victim_orders]
        load_b = asyncio.create_task(self.settle_all(reconciler, b))
        primary = cluster.client(VICTIM)
        try:
            await _until(
                lambda: all(primary.exists(outcome_key(f"{MCH}:{o}")) for o in victim_b),
                "primary 1 taking its writes",
                60,
            )
        finally:
            primary.close()
        published_b = sum(1 for o in victim_b if o in self.settled)
        cluster.kill_node(VICTIM)
        say(
            f"step 2: replica paused; primary 1 took {len(victim_b)} outcome writes of its "
            f"slots ({published_b} already published) and was killed"
        )

        load_c = asyncio.create_task(self.settle_all(reconciler, c))
        cluster.resume_node(replica)
        await _until(lambda: cluster.role(replica) == "master", "the replica's promotion", 60)
        cluster.start_node(VICTIM)
        await _until(lambda: cluster.role(VICTIM) == "slave", "node 1 rejoining as replica", 60)
        await _until(lambda: self._synced(replica), "node 1 in sync with the new primary", 60)
        say("step 3: replica promoted; node 1 back as its replica")
        await load_b
        await load_c
        say(f"step 3: all {len(self.orders)} payments settled")
        await store.mark_published(f"{MCH}:{o}" for o in self.orders)  # as a commit would

        self.answers.asked = ASKED_LATER
        again = self.reconciler(store, events, dlq)  # another worker: nothing remembered
        before = Counter(self.answers.calls)
        await self.settle_all(again, self.orders)
        redecided = sum(1 for o in self.orders if self.answers.calls[o] > before[o])
        say(f"step 4: every notification delivered again; {redecided} payments decided again")
        return len(victim_b), redecided

    def _synced(self, primary: int) -> bool:
        """The node is a primary with a replica online, caught up with its offset."""
        try:
            with self.cluster.client(primary) as client:
                info = client.info("replication")
        except Exception:
            return False
        link = info.get("slave0")
        return (
            isinstance(link, dict)
            and link.get("state") == "online"
            and int(link.get("offset", -1)) == int(info.get("master_repl_offset", -2))
        )

    async def _read_events(self, count: int) -> list[Event]:
        consumer = AIOKafkaConsumer(
            self.events_topic, bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest", group_id=None,
        )  # fmt: skip
        await consumer.start()
        try:
            found: list[Event] = []
            async with asyncio.timeout(60):
                while len(found) < count:
                    batch = await consumer.getmany(timeout_ms=500)
                    found += [
                        Event.from_cloudevent(orjson.loads(r.value))
                        for records in batch.values()
                        for r in records
                    ]
            return found
        finally:
            await consumer.stop()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_failover(
    cluster: LocalRedisCluster, bootstrap: str, config: FailoverConfig, say: Callable = _say
) -> FailoverResult:
    """One run on a formed cluster with a replica per primary (its node 1 is killed)."""
    async with asyncio.timeout(DEADLINE):
        return await _Run(cluster, bootstrap, config, say).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.failover", description=__doc__)
    parser.add_argument("--payments", type=int, default=FailoverConfig.payments)
    parser.add_argument(
        "--wait-replicas", type=int, choices=(0, 1), action="append",
        help="PAYNOTIFY_REDIS_WAIT_REPLICAS of a run (repeatable; default: 0, then 1)",
    )  # fmt: skip
    parser.add_argument("--wait-timeout-ms", type=int, default=FailoverConfig.wait_timeout_ms)
    parser.add_argument("--seed", type=int, default=FailoverConfig.seed, help="names the orders")
    parser.add_argument("--state-dir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    configure_logging("ERROR", "console")  # only what goes wrong: retries are expected here
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="paynotify-failover-"))
    stack = LocalStack(state_dir=state / "stack", kafka_port=free_port(), redis_port=0)
    results = []
    stack.start_kafka()
    try:
        for replicas in args.wait_replicas or [0, 1]:
            cluster = LocalRedisCluster(
                LocalStack(state_dir=state / f"wait{replicas}", kafka_port=0, redis_port=0),
                primaries=3,
                replicas=1,
            )
            cluster.up()
            try:
                config = FailoverConfig(
                    payments=args.payments, wait_replicas=replicas,
                    wait_timeout_ms=args.wait_timeout_ms, seed=args.seed,
                )  # fmt: skip
                _say(f"-- PAYNOTIFY_REDIS_WAIT_REPLICAS={replicas}")
                result = asyncio.run(
                    run_failover(cluster, stack.bootstrap_servers, config, say=_say)
                )
                _say(result.line())
                results.append(result)
            finally:
                cluster.down()
    finally:
        stack.stop_kafka()
    waited = [r for r in results if r.wait_replicas]
    return 1 if any(r.figures.conflicting or r.figures.lost for r in waited) else 0


if __name__ == "__main__":
    sys.exit(main())
