"""`paynotify stack up --brokers 3`: a real three-node KRaft cluster on loopback, topics made with
the replication the settings ask for, and acks=all writes that survive `kill -9` of a leader.
Also: `topics ensure` says so when the brokers refuse a replication factor (it printed
"created" and exited 0 before, with no topic made)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devtools.stack.local import LocalStack, free_port
from shared.adapters.topic_admin import TopicsError, ensure_topics
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    if shutil.which("java") is None:
        pytest.fail("the three-broker stack needs Java (the local stack's Kafka)")
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("cluster"), kafka_port=free_port(), redis_port=0,
        brokers=3, kafka_heap="512m",
    )  # fmt: skip
    stack.start_kafka()
    try:
        yield stack
    finally:
        stack.stop_kafka()


async def describe(bootstrap: str, topic: str) -> tuple[list[dict], str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        (answer,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {entry[0]: entry[1] for entry in answer.resources[0][4]}
        return described["partitions"], entries["min.insync.replicas"]
    finally:
        await admin.close()


async def test_topics_get_three_replicas_and_writes_survive_a_killed_leader(
    cluster: LocalStack,
) -> None:
    """RF 3 and min.insync.replicas 2 on every topic; with the leader of partition 0 killed, an
    acks=all write still succeeds, and every acknowledged record is read back after the node
    returns."""
    settings = Settings(
        kafka_bootstrap_servers=cluster.bootstrap_servers,
        topic_prefix=f"c{uuid.uuid4().hex[:6]}.",
        topic_replication=cluster.replication,
    )
    assert sorted(await ensure_topics(settings)) == sorted(settings.topics.all)
    topic = settings.topics.callbacks
    partitions, min_isr = await describe(cluster.bootstrap_servers, topic)
    assert min_isr == "2"
    assert {len(p["replicas"]) for p in partitions} == {3}
    leader = next(p["leader"] for p in partitions if p["partition"] == 0)

    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before", partition=0)
        await asyncio.to_thread(cluster.kill_kafka_node, leader)
        async with asyncio.timeout(60):
            await producer.send_and_wait(topic, b"while-down", partition=0)
        partitions, _ = await describe(cluster.bootstrap_servers, topic)
        assert next(p["leader"] for p in partitions if p["partition"] == 0) != leader
        await asyncio.to_thread(cluster.start_kafka_node, leader)
        await producer.send_and_wait(topic, b"after", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=cluster.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < 3:
                batch = await consumer.getmany(timeout_ms=500)
                values += [r.value for records in batch.values() for r in records]
        assert values == [b"before", b"while-down", b"after"]
    finally:
        await consumer.stop()


async def test_a_replication_the_brokers_cannot_give_is_an_error(cluster: LocalStack) -> None:
    """Four replicas on three brokers: refused, and ensure_topics says which topics and why."""
    settings = Settings(
        kafka_bootstrap_servers=cluster.bootstrap_servers,
        topic_prefix=f"r{uuid.uuid4().hex[:6]}.",
        topic_replication=4,
    )
    with pytest.raises(TopicsError, match="InvalidReplicationFactorError"):
        await ensure_topics(settings)
