"""Topics are created by `paynotify topics ensure`, never by accident (issue 11): the ingress
started before its topics is unready and sends nothing that names them, then becomes ready once
they exist; a topic with fewer partitions than configured is reported, and `--fix` raises it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from urllib.parse import urlencode

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devtools.stack.local import free_port
from ingress.__main__ import serve
from ingress.app import build_app
from shared.adapters.topic_admin import ensure_topics, short_topics
from shared.logs import get_logger
from shared.merchants import parse_merchants
from shared.protocol.signing import signed
from shared.settings import Settings

pytestmark = pytest.mark.integration

MCH, KEY = "t9awtvk6dn", "25e72d96d0ffe0bb74373344d986df3c"
MERCHANTS = parse_merchants({"merchants": {MCH: {"keys": [KEY]}}})
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def notification() -> str:
    fields = {
        "mch_id": MCH, "service": "10", "mch_order": f"t-{uuid.uuid4().hex[:12]}", "amt": "1000",
        "mch_amt": "1000", "sign_type": "md5", "amt_type": "cny", "status": "2",
        "created_at": "1700000000", "success_at": "1700000100",
    }  # fmt: skip
    return urlencode(signed(fields, KEY))


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_an_ingress_started_before_its_topics_waits_for_them(kafka_bootstrap: str) -> None:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"intent-{uuid.uuid4().hex[:8]}."
    )
    names = settings.topics
    port = free_port()
    stop = asyncio.Event()
    app = build_app(settings, MERCHANTS)
    task = asyncio.create_task(serve(app, "127.0.0.1", port, settings, get_logger("t"), stop=stop))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{base}/readyz") as response:
                            body = await response.text()
                            if "does not exist" in body:
                                break
                    await asyncio.sleep(0.2)
            assert response.status == 503
            assert f"topic {names.callbacks} does not exist" in body
            async with http.post(f"{base}/notify", data=notification(), headers=FORM) as response:
                assert (response.status, await response.text()) == (503, "fail")
            await asyncio.sleep(2)  # time for any request that names a topic to create it
            assert not {names.callbacks, names.rejected} & await _topics(kafka_bootstrap)

            await ensure_topics(settings, [names.callbacks, names.rejected])
            async with asyncio.timeout(60):
                while True:
                    async with http.post(
                        f"{base}/notify", data=notification(), headers=FORM
                    ) as response:
                        if response.status == 200:
                            break
                    await asyncio.sleep(0.5)
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await task


async def test_a_topic_with_too_few_partitions_is_reported_and_fixed(
    kafka_bootstrap: str,
) -> None:
    """As a broker's auto-creation would leave it: one partition where six are configured."""
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"short-{uuid.uuid4().hex[:8]}.",
        topic_partitions=6,
    )
    callbacks = settings.topics.callbacks
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(callbacks, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    created = await ensure_topics(settings)
    assert callbacks not in created  # it exists: left as it is
    async with asyncio.timeout(30):
        while not (short := await short_topics(settings)):
            await asyncio.sleep(0.2)  # until the brokers' metadata shows it
    assert short == {callbacks: 1}
    assert await short_topics(settings, fix=True) == {}
    assert await short_topics(settings) == {}
