"""The small HTTP listener of the worker and the sweeper: `/healthz`, `/readyz` and `/metrics`.

`paynotify worker --metrics-port N` (or `PAYNOTIFY_METRICS_PORT`) starts it; off by default.

- `/healthz`: `200 ok` while the process's event loop answers.
- `/readyz`: `200` when every check passes, else `503`; the body says each check's state, e.g.
  `{"ready": false, "checks": {"kafka": "ok", "redis": "redis unreachable (ConnectionError)"}}`.
  The checks ask the services themselves (a metadata request, a PING), bounded and cached for a
  second, so an outage turns the process unready while it waits the outage out.
- `/metrics`: Prometheus text from the process's own registry (never the library's global one);
  `refresh` runs first, for gauges that must be read at scrape time (consumer lag, index sizes).
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
from importlib import metadata
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections import Counter as CounterType
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping

    from prometheus_client.metrics_core import Metric
    from redis.asyncio import Redis

    from shared.adapters.kafka_readiness import KafkaCheck
    from shared.clock import Clock
    from shared.settings import Settings

_CHECK_BOUND = 2.0  # seconds one check may take before it counts as failed


def new_registry(process: str) -> CollectorRegistry:
    """A registry with what every paynotify process exports: its start time, CPU and memory
    (`paynotify_process_*`) and `paynotify_build_info{version, python, process}`."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(namespace="paynotify", registry=registry)
    build = Gauge(
        "paynotify_build_info",
        "Always 1; the labels say which build runs.",
        ["version", "python", "process"],
        registry=registry,
    )
    try:
        version = metadata.version("paynotify")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        version = "unknown"
    build.labels(version=version, python=platform.python_version(), process=process).set(1)
    return registry


# Counted events named `<kind>:<label>` in a process's stats are exported as a counter of their
# own, `paynotify_<process>_<metric>_total{<label name>=...}`, instead of as events.
LABELED_EVENTS: dict[str, tuple[str, str, str]] = {
    "outcome": ("outcomes", "type", "Outcomes decided and published, by event type."),
    "dead_letter": ("dead_letters", "reason", "Messages written to the DLQ, by reason."),
}


class StatsCollector(Collector):
    """A process's event counters (`Counter[str]`, as its log's `..._stats` line shows them) as
    Prometheus counters: `paynotify_<process>_events_total{event=...}`, and for the labeled
    kinds of `LABELED_EVENTS` (`outcome:paynotify.payment.succeeded`, `dead_letter:stale`)
    `paynotify_<process>_outcomes_total{type=...}` and `..._dead_letters_total{reason=...}`."""

    def __init__(self, process: str, stats: CounterType[str], help_text: str) -> None:
        self._process = process
        self._stats = stats
        self._help = help_text

    def collect(self) -> Iterable[Metric]:
        events = CounterMetricFamily(
            f"paynotify_{self._process}_events", self._help, labels=["event"]
        )
        labeled = {
            kind: CounterMetricFamily(f"paynotify_{self._process}_{metric}", text, labels=[name])
            for kind, (metric, name, text) in LABELED_EVENTS.items()
        }
        for event, count in sorted(self._stats.items()):
            kind, colon, label = event.partition(":")
            family = labeled.get(kind) if colon else None
            if family is None:
                events.add_metric([event], count)
            else:
                family.add_metric([label], count)
        yield events
        yield from labeled.values()


# Seconds per platform call: the client's timeout is 10 s by default.
_CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def platform_calls(registry: CollectorRegistry) -> Callable[[str, str, float], None]:
    """`paynotify_platform_call_seconds{endpoint, result}` in `registry`, and the observer to
    give the platform client (`PlatformClient(observe=...)`): the latency of every call, and by
    its `result` label the answer codes ("1", "113", ...) and failures without one."""
    histogram = Histogram(
        "paynotify_platform_call_seconds",
        "Seconds per platform call (each attempt), by endpoint and result: the answer code "
        "(1: success) or the failure without one (PlatformUnavailable, MalformedAnswer).",
        ["endpoint", "result"],
        buckets=_CALL_BUCKETS,
        registry=registry,
    )

    def observe(endpoint: str, result: str, seconds: float) -> None:
        histogram.labels(endpoint, result).observe(seconds)

    return observe


def redis_check(redis: Redis) -> Callable[[], Awaitable[tuple[bool, str]]]:
    async def check() -> tuple[bool, str]:
        try:
            async with asyncio.timeout(_CHECK_BOUND):
                await redis.ping()
        except TimeoutError:
            return False, "redis did not answer in time"
        except Exception as exc:  # any failure to answer a PING is "not ready", never a crash
            return False, f"redis unreachable ({type(exc).__name__})"
        return True, "ok"

    return check


class Cached:
    """One check's answer, asked at most once a `ttl` (several probes share one request)."""

    def __init__(
        self, check: Callable[[], Awaitable[tuple[bool, str]]], clock: Clock, ttl: float = 1.0
    ) -> None:
        self._check = check
        self._clock = clock
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._at: float | None = None
        self._answer: tuple[bool, str] = (False, "not checked yet")

    async def __call__(self) -> tuple[bool, str]:
        async with self._lock:
            now = self._clock.monotonic()
            if self._at is None or now - self._at >= self._ttl:
                try:
                    async with asyncio.timeout(_CHECK_BOUND * 2):
                        self._answer = await self._check()
                except TimeoutError:
                    self._answer = (False, "the check did not finish in time")
                self._at = self._clock.monotonic()
            return self._answer


@contextlib.asynccontextmanager
async def probe_server(
    host: str,
    port: int,
    *,
    registry: CollectorRegistry,
    checks: Mapping[str, Callable[[], Awaitable[tuple[bool, str]]]],
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[int]:
    """Serve the probes while the block runs; yields the bound port (`port` 0 picks one)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        answers = {name: await check() for name, check in checks.items()}
        ready = all(ok for ok, _ in answers.values())
        body = {"ready": ready, "checks": {name: why for name, (_, why) in answers.items()}}
        return web.Response(
            status=200 if ready else 503, body=orjson.dumps(body), content_type="application/json"
        )

    async def metrics(_: web.Request) -> web.Response:
        if refresh is not None:
            with contextlib.suppress(TimeoutError):  # stale gauges beat a failed scrape
                async with asyncio.timeout(_CHECK_BOUND):
                    await refresh()
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield site.port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def process_probes(
    settings: Settings,
    clock: Clock,
    redis: Redis,
    *,
    kafka: KafkaCheck,
    name: str,
    running: Callable[[], Awaitable[tuple[bool, str]]],
    registry: CollectorRegistry,
    refresh: Callable[[], Awaitable[None]] | None = None,
    extra: Mapping[str, Callable[[], Awaitable[tuple[bool, str]]]] | None = None,
) -> AsyncIterator[None]:
    """The worker's or the sweeper's listener on `PAYNOTIFY_METRICS_PORT` (nothing when 0):
    ready when the process says it runs (`running`, reported under `name`), the brokers show
    its topics as configured (`kafka`, the caller's to close), Redis answers, and every `extra`
    check passes."""
    if not settings.metrics_port:
        yield
        return
    checks: dict[str, Callable[[], Awaitable[tuple[bool, str]]]] = {
        name: running,
        "kafka": kafka,
        "redis": Cached(redis_check(redis), clock),
        **(extra or {}),
    }
    async with probe_server(
        settings.metrics_host,
        settings.metrics_port,
        registry=registry,
        checks=checks,
        refresh=refresh,
    ):
        yield
