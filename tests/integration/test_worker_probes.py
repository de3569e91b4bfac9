"""The worker's /healthz, /readyz and /metrics (PAYNOTIFY_METRICS_PORT) on real Kafka and a
redis-server of this module's own: readiness follows the services (Redis stopped: not ready,
started again: ready) and the metrics show what the worker really did."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING

import aiohttp
import pytest

from devtools.stack.local import LocalStack, free_port
from devtools.stack.pipeline import ServiceProcess
from shared.adapters.kafka import CallbackEnvelope, start_producer
from shared.adapters.topic_admin import ensure_topics
from shared.settings import Settings
from workers.__main__ import run_worker
from workers.sweeper_main import run_sweeper

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("probe-redis"), kafka_port=0, redis_port=free_port()
    )
    stack.start_redis()
    try:
        yield stack
    finally:
        stack.stop_redis()


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def _until(check: Callable[[], Awaitable[bool]], deadline: float = 60.0) -> None:
    async with asyncio.timeout(deadline):
        while not await check():
            await asyncio.sleep(0.2)


async def test_readiness_follows_the_services_and_metrics_show_the_work(
    kafka_bootstrap: str, own_redis: LocalStack, merchants_file: Path
) -> None:
    port = free_port()
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap, redis_url=own_redis.redis_url,
        merchants_file=merchants_file, platform_url="http://127.0.0.1:9/",
        consumer_group=f"probes-{uuid.uuid4().hex[:8]}",
        topic_prefix=f"probes{uuid.uuid4().hex[:6]}.", topic_partitions=2, metrics_port=port,
    )  # fmt: skip
    await ensure_topics(settings)
    base = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    try:
        async with aiohttp.ClientSession() as http:

            async def answers(path: str, status: int) -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    return (await _get(http, base + path))[0] == status
                return False

            await _until(lambda: answers("/healthz", 200))
            await _until(lambda: answers("/readyz", 200))
            status, body = await _get(http, f"{base}/readyz")
            assert (status, body) == (
                200,
                '{"ready":true,"checks":{"worker":"ok","kafka":"ok","redis":"ok"}}',
            )

            # A forged envelope: dead-lettered, and counted on /metrics.
            producer = await start_producer(settings)
            try:
                forged = CallbackEnvelope(
                    fields={"mch_id": "t9awtvk6dn", "mch_order": "p-1", "sign": "0" * 32},
                    key_id="sha256:forged", received_at=time.time(), peer=None,
                    delivery_id=uuid.uuid4().hex, source="notification",
                )  # fmt: skip
                await producer.send_and_wait(
                    settings.topics.callbacks, forged.encode(), key="t9awtvk6dn:p-1"
                )
            finally:
                await producer.stop()

            async def counted() -> bool:
                text = (await _get(http, f"{base}/metrics"))[1]
                return 'paynotify_worker_events_total{event="dead_lettered"} 1.0' in text

            await _until(counted)
            text = (await _get(http, f"{base}/metrics"))[1]
            for line in (
                "# HELP paynotify_worker_events_total ",
                "# TYPE paynotify_worker_events_total counter",
                "paynotify_worker_jobs_held 0.0",
                f'paynotify_worker_consumer_lag{{partition="0",topic="{settings.topics.callbacks}"}}',
                'paynotify_worker_retries{state="scheduled"} 0.0',
                "paynotify_process_start_time_seconds ",
                'paynotify_build_info{process="worker"',
            ):
                assert line in text, line

            # Redis away: not ready (and says why), the worker still runs; back: ready again.
            await asyncio.to_thread(own_redis.stop_redis)
            try:
                await _until(lambda: answers("/readyz", 503))
                status, body = await _get(http, f"{base}/readyz")
                assert '"redis":"redis unreachable' in body
                assert '"kafka":"ok"' in body
                assert not worker.done()
            finally:
                await asyncio.to_thread(own_redis.start_redis)
            await _until(lambda: answers("/readyz", 200))
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await worker


async def test_the_sweeper_reports_its_lease_and_index(
    kafka_bootstrap: str, own_redis: LocalStack, merchants_file: Path
) -> None:
    port = free_port()
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap, redis_url=own_redis.redis_url,
        merchants_file=merchants_file, platform_url="http://127.0.0.1:9/",
        topic_prefix=f"probes{uuid.uuid4().hex[:6]}.", topic_partitions=1, metrics_port=port,
    )  # fmt: skip
    await ensure_topics(settings)
    base = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    sweeper = asyncio.create_task(run_sweeper(settings, stop))
    try:
        async with aiohttp.ClientSession() as http:

            async def leading() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    return (
                        "paynotify_sweeper_leading 1.0" in (await _get(http, f"{base}/metrics"))[1]
                    )
                return False

            await _until(leading)
            status, body = await _get(http, f"{base}/readyz")
            assert (status, body) == (
                200,
                '{"ready":true,"checks":{"sweeper":"ok","kafka":"ok","redis":"ok"}}',
            )
            text = (await _get(http, f"{base}/metrics"))[1]
            for line in (
                'paynotify_sweeper_pending_orders{state="pending"} 0.0',
                'paynotify_sweeper_pending_orders{state="overdue"} 0.0',
                "# TYPE paynotify_sweeper_events_total counter",
                'paynotify_build_info{process="sweeper"',
            ):
                assert line in text, line
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await sweeper


async def test_paynotify_worker_metrics_port_flag_serves_the_probes(
    kafka_bootstrap: str, own_redis: LocalStack, merchants_file: Path, tmp_path: Path
) -> None:
    """`paynotify worker --metrics-port N`, as SREs run it: the flag wins over the (unset)
    environment, and SIGTERM ends the process and its listener."""
    port = free_port()
    prefix = f"probes{uuid.uuid4().hex[:6]}."
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "REDIS_URL": own_redis.redis_url,
        "PAYNOTIFY_MERCHANTS_FILE": str(merchants_file), "PAYNOTIFY_TOPIC_PREFIX": prefix,
        "PAYNOTIFY_CONSUMER_GROUP": f"cli-{uuid.uuid4().hex[:8]}",
        "PAYNOTIFY_TOPIC_PARTITIONS": "1",
    }  # fmt: skip
    await ensure_topics(Settings.from_env(env))
    worker = ServiceProcess(
        "worker", ["-m", "shared.cli", "worker", "--metrics-port", str(port)], env,
        tmp_path / "worker.log",
    ).start()  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    return (await _get(http, f"http://127.0.0.1:{port}/readyz"))[0] == 200
                assert worker.alive, worker.tail()
                return False

            await _until(ready)
            text = (await _get(http, f"http://127.0.0.1:{port}/metrics"))[1]
            assert 'paynotify_build_info{process="worker"' in text
    finally:
        assert worker.stop() == 0, worker.tail()
