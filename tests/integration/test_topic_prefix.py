"""PAYNOTIFY_TOPIC_PREFIX (issue 10, hole 10): deployments sharing a broker keep apart."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared import topics
from shared.adapters.topic_admin import ensure_topics
from shared.settings import Settings

pytestmark = pytest.mark.integration


async def test_topics_ensure_creates_the_prefixed_topics_only(kafka_bootstrap: str) -> None:
    prefix = f"dep-{uuid.uuid4().hex[:8]}."
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(prefix + name for name in topics.ALL)
    assert settings.topics.callbacks == f"{prefix}paynotify.callbacks"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert set(created) <= set(await admin.list_topics())
        await admin.delete_topics(created)
    finally:
        await admin.close()


async def test_the_orders_consumer_takes_its_topic_from_the_settings() -> None:
    from workers.orders_consumer import orders_consumer_factory  # noqa: PLC0415

    settings = Settings(topic_prefix="a.")
    assert settings.topics.all == tuple(f"a.{name}" for name in topics.ALL)
    consumer = orders_consumer_factory(settings)()
    try:
        assert consumer.subscription() == {"a.paynotify.orders"}
    finally:
        await consumer.stop()
