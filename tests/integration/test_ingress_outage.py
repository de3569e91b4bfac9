"""The ingress through a broker outage: 503 `fail` within the deadline, then recovery by itself.

Runs on a broker of this module's own (`kafka_stack`), which the test stops and starts again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from ingress.app import INGRESS, build_app
from shared import topics
from shared.adapters.topics import ensure_topics
from shared.merchants import parse_merchants
from shared.protocol.signing import signed
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.stack.local import LocalStack

pytestmark = pytest.mark.integration

MCH, KEY = "t9awtvk6dn", "25e72d96d0ffe0bb74373344d986df3c"
MERCHANTS = parse_merchants({"merchants": {MCH: {"keys": [KEY]}}})
ACK_TIMEOUT = 2.0
RECOVERY = 90.0  # seconds the broker and the producer get to come back


def notification() -> str:
    fields = {
        "mch_id": MCH,
        "service": "10",
        "mch_order": f"outage-{uuid.uuid4().hex[:12]}",
        "amt": "1000",
        "mch_amt": "1000",
        "sign_type": "md5",
        "amt_type": "cny",
        "status": "2",
        "created_at": "1700000000",
        "success_at": "1700000100",
    }
    return urlencode(signed(fields, KEY))


async def post(http: aiohttp.ClientSession, url: str, body: str) -> tuple[int, str, float]:
    started = time.monotonic()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with http.post(f"{url}/notify", data=body, headers=headers) as response:
        return response.status, await response.text(), time.monotonic() - started


async def ready(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/readyz") as response:
        return response.status == 200


async def test_broker_outage_gives_503_within_the_deadline_then_recovers(
    kafka_stack: LocalStack,
) -> None:
    """Broker up: `success`. Broker stopped: 503 `fail` no later than the ack deadline (plus
    scheduling slack), and /readyz says not ready. Broker back: the same ingress, untouched,
    answers `success` again and is ready."""
    settings = Settings(
        kafka_bootstrap_servers=kafka_stack.bootstrap_servers, kafka_ack_timeout=ACK_TIMEOUT
    )
    await ensure_topics(settings, [topics.CALLBACKS, topics.REJECTED])
    app = build_app(settings, MERCHANTS)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            assert (await post(http, url, notification()))[:2] == (200, "success")
            assert await ready(http, url)

            await asyncio.to_thread(kafka_stack.stop_kafka)
            for _ in range(3):  # the first try, and retries while the producer reconnects
                status, body, took = await post(http, url, notification())
                assert (status, body) == (503, "fail")
                assert took < ACK_TIMEOUT + 1.0
            assert not await ready(http, url)
            counters = app[INGRESS].counters
            assert counters.refusals["kafka_timeout"] + counters.refusals["kafka_error"] == 3

            await asyncio.to_thread(kafka_stack.start_kafka)
            async with asyncio.timeout(RECOVERY):
                while (await post(http, url, notification()))[:2] != (200, "success"):
                    await asyncio.sleep(0.5)  # the platform's retry, compressed
                while not await ready(http, url):
                    await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()
