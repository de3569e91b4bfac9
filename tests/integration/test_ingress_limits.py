"""The ingress's bounds, served as `paynotify ingress` serves it (`ingress.__main__.serve`).

Issue 10: a body trickled in is cut off at its deadline (hole 5), connections beyond the bound are
answered 503 at once (hole 5), the `Server` header names no versions and one sender cannot flood
the audit topic (hole 12), and a broker that is away at start-up is waited out, not a reason to
exit (the ingress exited with KafkaConnectionError before).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from devtools.stack.local import LocalStack, free_port
from ingress.__main__ import serve
from ingress.app import INGRESS, SERVER_HEADER, build_app
from shared.adapters.topic_admin import ensure_topics
from shared.clock import ManualClock
from shared.logs import get_logger
from shared.merchants import parse_merchants
from shared.protocol.signing import signed
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiohttp import web

pytestmark = pytest.mark.integration

MCH, KEY = "t9awtvk6dn", "25e72d96d0ffe0bb74373344d986df3c"
MERCHANTS = parse_merchants({"merchants": {MCH: {"keys": [KEY]}}})
FORM = "application/x-www-form-urlencoded"
WAIT = 30.0


def notification(**overrides: str) -> dict[str, str]:
    fields = {
        "mch_id": MCH, "service": "10", "mch_order": f"lim-{uuid.uuid4().hex[:12]}",
        "amt": "1000", "mch_amt": "1000", "sign_type": "md5", "amt_type": "cny", "status": "2",
        "created_at": "1700000000", "success_at": "1700000100", **overrides,
    }  # fmt: skip
    return signed(fields, KEY)


@dataclasses.dataclass
class Served:
    url: str
    host: str
    port: int
    app: web.Application


@contextlib.asynccontextmanager
async def served(
    settings: Settings, admin_port: int | None = None, **build: object
) -> AsyncIterator[Served]:
    operations = admin_port is None
    app = build_app(settings, MERCHANTS, operations=operations, **build)  # type: ignore[arg-type]
    stop, port = asyncio.Event(), free_port()
    log = get_logger("test")
    task = asyncio.create_task(
        serve(app, "127.0.0.1", port, settings, log, stop=stop, admin_port=admin_port)
    )
    try:
        async with asyncio.timeout(WAIT):
            while True:
                if task.done():
                    task.result()  # raises what ended it
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                await asyncio.sleep(0.05)
        yield Served(f"http://127.0.0.1:{port}", "127.0.0.1", port, app)
    finally:
        stop.set()
        async with asyncio.timeout(WAIT):
            await task


@pytest.fixture(scope="module")
async def settings(kafka_bootstrap: str) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"limits-{uuid.uuid4().hex[:8]}.",
        ingress_body_timeout=1.0,
    )
    names = settings.topics
    await ensure_topics(settings, [names.callbacks, names.rejected])
    return settings


async def test_a_trickled_body_is_answered_408_fail_and_the_connection_closed(
    settings: Settings,
) -> None:
    """Hole 5: `Content-Length: 8000`, then a byte every 0.3 s. Past the body deadline the
    answer is 408 `fail` and the connection is closed; before, the request was held for as
    long as the client kept trickling."""
    async with served(settings) as ingress:
        reader, writer = await asyncio.open_connection(ingress.host, ingress.port)
        writer.write(
            f"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\n"
            "Content-Length: 8000\r\n\r\nm".encode()
        )

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):  # 30 s at most
                    await asyncio.sleep(0.3)
                    writer.write(b"c")
                    await writer.drain()

        trickling = asyncio.create_task(trickle())
        try:
            async with asyncio.timeout(10):  # deadline 1 s; generous for a loaded machine
                answer = await reader.read()  # to EOF: the server closes
        finally:
            trickling.cancel()
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert body == b"fail"
        assert ingress.app[INGRESS].counters.refusals["body_timeout"] == 1


async def test_connections_beyond_the_bound_are_answered_503_at_once(settings: Settings) -> None:
    """Hole 5: with the bound at 3, three idle connections are held and the fourth gets
    `503 fail` and is closed; once one of the three goes, a request is served again."""
    bounded = dataclasses.replace(settings, ingress_max_connections=3)
    async with served(bounded) as ingress:
        held = [await asyncio.open_connection(ingress.host, ingress.port) for _ in range(3)]
        await asyncio.sleep(0.2)  # the server has taken all three
        reader, writer = await asyncio.open_connection(ingress.host, ingress.port)
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert answer.endswith(b"\r\n\r\nfail")
        assert f"Server: {SERVER_HEADER}\r\n".encode() in answer
        assert ingress.app[INGRESS].counters.connections_refused == 1
        _, first = held.pop()
        first.close()
        async with asyncio.timeout(WAIT), aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{ingress.url}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
        for _, other in held:
            other.close()


async def test_the_server_header_names_no_versions(settings: Settings) -> None:
    """Hole 12: `Server` is the product's name only, on successes and refusals alike."""
    async with served(settings) as ingress, aiohttp.ClientSession() as http:
        async with http.post(
            f"{ingress.url}/notify", data=urlencode(notification()), headers={"Content-Type": FORM}
        ) as response:
            assert (response.status, await response.text()) == (200, "success")
            assert response.headers["Server"] == SERVER_HEADER
        async with http.get(f"{ingress.url}/nowhere") as response:
            assert response.status == 404
            assert response.headers["Server"] == SERVER_HEADER


async def test_one_sender_cannot_flood_the_audit_topic(settings: Settings) -> None:
    """Hole 12: past its burst a sender's refusals are answered and counted but not audited;
    the next record written for it says how many were left out."""
    budget = dataclasses.replace(settings, ingress_audit_rate=10.0, ingress_audit_burst=5)
    clock = ManualClock()
    consumer = AIOKafkaConsumer(
        settings.topics.rejected,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        async with served(budget, clock=clock) as ingress, aiohttp.ClientSession() as http:
            forged = {**notification(), "sign": "0" * 32}
            for _ in range(8):
                async with http.post(
                    f"{ingress.url}/notify", data=urlencode(forged), headers={"Content-Type": FORM}
                ) as response:
                    assert (response.status, await response.text()) == (401, "fail")
            counters = ingress.app[INGRESS].counters
            assert counters.audit_suppressed == 3
            clock.advance(1.0)  # ten more records' worth
            async with http.post(
                f"{ingress.url}/notify", data=urlencode(forged), headers={"Content-Type": FORM}
            ) as response:
                assert response.status == 401
        records: list[dict[str, object]] = []  # other tests' refusals share the topic
        async with asyncio.timeout(WAIT):
            while len(records) < 6:
                batches = await consumer.getmany(timeout_ms=500)
                records += [
                    record
                    for rs in batches.values()
                    for r in rs
                    if (record := orjson.loads(r.value))["reason"] == "sign_mismatch"
                ]
        assert [r["suppressed"] for r in records] == [0, 0, 0, 0, 0, 3]
    finally:
        await consumer.stop()


@pytest.mark.own_stack  # starts a broker of its own, late
async def test_a_broker_away_at_start_up_is_waited_out(settings: Settings, tmp_path: Path) -> None:
    """The ingress serves while no broker answers (503 `not_ready`, /readyz false) and takes
    notifications once one comes up; before, it exited with KafkaConnectionError."""
    stack = LocalStack(state_dir=tmp_path / "late", kafka_port=free_port(), redis_port=0)
    late = dataclasses.replace(settings, kafka_bootstrap_servers=stack.bootstrap_servers)
    async with served(late) as ingress, aiohttp.ClientSession() as http:
        async with http.get(f"{ingress.url}/readyz") as response:
            assert response.status == 503
        async with http.post(
            f"{ingress.url}/notify", data=urlencode(notification()), headers={"Content-Type": FORM}
        ) as response:
            assert (response.status, await response.text()) == (503, "fail")
        assert ingress.app[INGRESS].counters.refusals["not_ready"] == 1
        await asyncio.to_thread(stack.start_kafka)
        try:
            names = late.topics
            await ensure_topics(late, [names.callbacks, names.rejected])
            async with asyncio.timeout(90):
                while True:
                    async with http.post(
                        f"{ingress.url}/notify",
                        data=urlencode(notification()),
                        headers={"Content-Type": FORM},
                    ) as response:
                        if response.status == 200:
                            break
                    await asyncio.sleep(0.5)
            async with http.get(f"{ingress.url}/readyz") as response:
                assert response.status == 200
        finally:
            await asyncio.to_thread(stack.stop_kafka)


async def test_the_admin_port_takes_the_operations_paths_off_the_public_port(
    settings: Settings,
) -> None:
    """Issue 11: with --admin-port, /healthz, /readyz and /metrics answer there only; the public
    port serves the notification paths (anything else is 404 `fail`)."""
    admin_port = free_port()
    async with served(settings, admin_port=admin_port) as ingress, aiohttp.ClientSession() as http:
        admin = f"http://127.0.0.1:{admin_port}"
        async with http.post(
            f"{ingress.url}/notify", data=urlencode(notification()), headers={"Content-Type": FORM}
        ) as response:
            assert (response.status, await response.text()) == (200, "success")
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(ingress.url + path) as response:
                assert (response.status, await response.text()) == (404, "fail"), path
        async with http.get(f"{admin}/readyz") as response:
            assert response.status == 200
        async with http.get(f"{admin}/metrics") as response:
            text = await response.text()
        assert "paynotify_ingress_published_total 1.0" in text
        assert "paynotify_ingress_publish_seconds_count 1.0" in text
