"""`paynotify ingress --processes N` on the real broker: the children share the port, each takes
requests and has its own /metrics on the admin port + its index, and SIGTERM stops them all.

The ingress runs here as the command an operator runs (a process tree), not in the test's loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import aiohttp
import psutil
import pytest
from aiokafka import AIOKafkaConsumer

from devtools.stack.local import free_port
from shared.adapters.topic_admin import ensure_topics
from shared.protocol.signing import signed
from shared.settings import Settings
from tests.conftest import TEST_KEY, TEST_MCH_ID

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

FORM = "application/x-www-form-urlencoded"
START = 30.0  # seconds for the processes to start and see their topics
STOP = 20.0  # seconds SIGTERM may take with nothing in flight (the bound allows 45)


def notification(mch_order: str) -> dict[str, str]:
    fields = {
        "mch_id": TEST_MCH_ID, "service": "10", "mch_order": mch_order, "amt": "1000",
        "mch_amt": "1000", "sign_type": "md5", "amt_type": "cny", "status": "2",
        "created_at": "1700000000", "success_at": "1700000100",
    }  # fmt: skip
    return signed(fields, TEST_KEY)


class Ingress:
    """`python -m ingress --processes N` with an admin port, as a process tree."""

    def __init__(self, popen: subprocess.Popen[bytes], port: int, admin_port: int, n: int) -> None:
        self.popen, self.port, self.admin_port, self.n = popen, port, admin_port, n

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, index: int) -> str:
        return f"http://127.0.0.1:{self.admin_port + index}"

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.popen.pid).children()

    async def ready(self, http: aiohttp.ClientSession) -> None:
        async with asyncio.timeout(START):
            for index in range(self.n):
                while True:
                    assert self.popen.poll() is None, "the ingress exited while starting"
                    try:
                        async with http.get(f"{self.admin(index)}/readyz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)

    async def published(self, http: aiohttp.ClientSession, index: int) -> float:
        async with http.get(f"{self.admin(index)}/metrics") as response:
            text = await response.text()
        found = re.search(r"^paynotify_ingress_published_total (\S+)$", text, re.MULTILINE)
        assert found is not None
        return float(found[1])


async def keys_on(settings: Settings, topic: str, count: int) -> set[bytes]:
    """The keys of the first `count` records of `topic` (the notifications' order keys)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        keys: set[bytes] = set()
        async with asyncio.timeout(20):
            while len(keys) < count:
                batch = await consumer.getmany(timeout_ms=500)
                keys.update(r.key for rs in batch.values() for r in rs if r.key is not None)
        return keys
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
async def settings(kafka_bootstrap: str) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"processes-{uuid.uuid4().hex[:8]}.",
    )
    await ensure_topics(settings, [settings.topics.callbacks, settings.topics.rejected])
    return settings


def _start(settings: Settings, merchants_file: Path, n: int, **env: str) -> Ingress:
    port, admin_port = free_port(), free_port()
    while not all(_bindable(admin_port + i) for i in range(1, n)):  # admin + i must be free too
        admin_port = free_port()
    popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "ingress", "--port", str(port), "--admin-port", str(admin_port),
         "--processes", str(n)],
        env={
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "PAYNOTIFY_TOPIC_PREFIX": settings.topic_prefix,
            "PAYNOTIFY_MERCHANTS_FILE": str(merchants_file),
            "PAYNOTIFY_INGRESS_PARK_MAX": "0",  # Kafka is up: nothing to park, no Redis needed
            **env,
        },
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return Ingress(popen, port, admin_port, n)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def two(settings: Settings, merchants_file: Path) -> Iterator[Ingress]:
    ingress = _start(settings, merchants_file, 2)
    try:
        yield ingress
    finally:
        _kill_tree(ingress)


def _kill_tree(ingress: Ingress) -> None:
    if ingress.popen.poll() is None:
        for child in ingress.children():
            child.kill()
        ingress.popen.kill()
        ingress.popen.wait()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A connection per request: the kernel picks a child for each new connection.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def test_two_processes_serve_one_port_and_sigterm_stops_them_all(
    two: Ingress, http: aiohttp.ClientSession, settings: Settings
) -> None:
    """Both children answer `success` on the one port (each one's own /metrics counts what it
    took), every notification is on the callbacks topic; SIGTERM to the parent stops every
    child gracefully and the parent exits 0."""
    await two.ready(http)
    children = two.children()
    assert len(children) == 2
    run = uuid.uuid4().hex[:8]
    for i in range(40):  # 40 connections: each child gets some unless the hash is 2**-39 unlucky
        async with http.post(
            f"{two.url}/notify",
            data=urlencode(notification(f"P{run}{i:03d}")),
            headers={"Content-Type": FORM},
        ) as response:
            assert (response.status, await response.text()) == (200, "success")
    counts = [await two.published(http, index) for index in range(2)]
    assert sum(counts) == 40
    assert all(count > 0 for count in counts), counts
    keys = await keys_on(settings, settings.topics.callbacks, 40)
    assert all(any(f"P{run}{i:03d}".encode() in key for key in keys) for i in range(40))
    began = time.monotonic()
    two.popen.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(two.popen.wait, STOP)
    assert code == 0
    assert time.monotonic() - began < STOP
    assert not any(child.is_running() and child.status() != "zombie" for child in children)


async def test_a_child_that_dies_stops_the_others_and_the_parent_exits_non_zero(
    two: Ingress, http: aiohttp.ClientSession
) -> None:
    """kill -9 of one child: the parent stops its sibling (gracefully) and exits 1, so the
    orchestrator restarts the whole ingress rather than run on with one process fewer."""
    await two.ready(http)
    first, second = two.children()
    first.kill()
    code = await asyncio.to_thread(two.popen.wait, STOP)
    assert code == 1
    assert not second.is_running() or second.status() == "zombie"


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_the_ingress_runs_on_either_event_loop(
    event_loop: str, settings: Settings, merchants_file: Path, http: aiohttp.ClientSession
) -> None:
    """PAYNOTIFY_EVENT_LOOP=asyncio|uvloop: the one-process ingress answers `success` on both,
    and SIGTERM stops it with exit 0."""
    one = _start(settings, merchants_file, 1, PAYNOTIFY_EVENT_LOOP=event_loop)
    try:
        await one.ready(http)
        async with http.post(
            f"{one.url}/notify",
            data=urlencode(notification(f"L{uuid.uuid4().hex[:12]}")),
            headers={"Content-Type": FORM},
        ) as response:
            assert (response.status, await response.text()) == (200, "success")
        one.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(one.popen.wait, STOP) == 0
    finally:
        _kill_tree(one)
