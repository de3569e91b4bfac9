"""One demo run: the project's processes around a given Kafka and Redis, orders created and paid,
outcomes counted, everything started here stopped again.

The orders go through the real client (`PlatformClient.create_order`, recorded in the order book
first) against the sandbox, which pays them with each order's scenario. The outcome counts come
from the example billing consumer reading `paynotify.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp

from devtools.demo.isolation import (
    claim_database,
    database_of,
    end_offsets,
    release_database,
    start_group_at_end,
)
from devtools.demo.observe import ControlError, SandboxControl, ingress_counts, scrape
from devtools.demo.plan import PAID_AFTER, PlannedOrder, plan_orders
from devtools.demo.report import Observed, SeenEvent
from devtools.stack.pipeline import Pipeline
from shared import bootstrap
from shared.adapters.outages import OUTAGES
from shared.adapters.redis_client import connect_redis
from shared.clock import SystemClock
from shared.merchants import load_merchants
from shared.platform.client import PlatformClient
from shared.platform.retry import OUTAGE_BACKOFF
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.errors import PlatformError
from shared.protocol.models import CreateOrderRequest
from shared.settings import Settings
from workers.orders_consumer import orders_group

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from examples.billing_consumer import BillingState
    from shared.adapters.order_book import OrderBook
    from shared.merchants import Merchant

PAYER_IP = "203.0.113.7"  # documentation range: the payer's address the merchant reports


@dataclass(frozen=True)
class DemoConfig:
    orders: int = 5000
    rate: float = 40.0  # orders created per second, at most
    time_scale: float = 0.01  # PAYNOTIFY_TIME_SCALE of every process
    workers: int = 2
    expiry: float = 60.0  # real seconds after creation that an unpaid order expires
    query_latency: float = 0.02  # real seconds the sandbox adds to each order query
    query_error_rate: float = 0.01  # share of order queries answered 113 (system busy)
    settle_timeout: float = 60.0  # real seconds to wait for outcomes after the last order
    create_concurrency: int = 32
    seed: int = 1
    # Real seconds a creation is tried again while Redis (the order book) or the network is
    # away, as a merchant's system would; 0: the first failure ends the run. The chaos run
    # (tests/chaos) creates orders through Redis outages.
    create_patience: float = 0.0


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str  # any database; the run claims one of its own


@dataclass
class RunResult:
    observed: Observed
    redis_db: int  # the run's own database, emptied at the end
    processes: dict[str, int] = field(default_factory=dict)  # name -> pid, all stopped now


def pick_merchant(merchants: Mapping[str, Merchant]) -> Merchant:
    """The first merchant that takes notifications from any address (the sandbox is loopback)."""
    for merchant in merchants.values():
        if not merchant.allow_from:
            return merchant
    raise ValueError("the merchants file has no merchant without allow_from")


def run_demo(
    config: DemoConfig,
    services: Services,
    *,
    merchants_file: Path,
    state_dir: Path,
    run_id: str,
    out: TextIO = sys.stdout,
) -> RunResult:
    """Run the demo; stops every process it started before it returns or raises."""
    merchant = pick_merchant(load_merchants(merchants_file))
    redis_url = asyncio.run(claim_database(services.redis_url, run_id))
    env = run_env(
        config, Services(services.kafka_bootstrap, redis_url), merchants_file, run_id, "demo"
    )
    pipeline = Pipeline(state_dir=state_dir, env=env)
    result = RunResult(Observed(run_id=run_id, orders=[]), database_of(redis_url))
    out.write(f"demo {run_id}: logs and state in {state_dir}\n")
    try:
        pipeline.ensure_topics()
        billing_state = state_dir / "billing-state.json"
        asyncio.run(start_at_end(Settings.from_env(env), billing_state))
        # Orders pay themselves shortly after creation, unless their scenario says "never".
        pipeline.start_sandbox("--seed", str(config.seed), "--pay-after", repr(PAID_AFTER))
        pipeline.start_ingress()
        for index in range(config.workers):
            pipeline.start_worker(index)
        pipeline.start_sweeper()
        result.processes = {p.name: p.pid for p in pipeline.processes if p.pid is not None}
        out.write(f"started: {', '.join(result.processes)}\n")
        settings = Settings.from_env({**os.environ, **pipeline.env})
        run = DemoRun(config, settings, pipeline, merchant, billing_state, run_id, out)
        result.observed = asyncio.run(run.drive())
    finally:
        # A second Ctrl-C must not leave processes behind half-stopped.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            out.write("stopping the sandbox, ingress, workers and sweeper...\n")
            out.flush()
            pipeline.stop_all()
            asyncio.run(release_database(redis_url, run_id))
        finally:
            signal.signal(signal.SIGINT, previous)
    return result


def run_env(
    config: DemoConfig, services: Services, merchants_file: Path, run_id: str, kind: str
) -> dict[str, str]:
    """The environment of a run's processes: its own topics (`<kind>-<run id>.`) and consumer
    group, the time scale, and the order expiry in real seconds."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap,
        "REDIS_URL": services.redis_url,
        "PAYNOTIFY_MERCHANTS_FILE": str(merchants_file),
        "PAYNOTIFY_TIME_SCALE": repr(config.time_scale),
        "PAYNOTIFY_CONSUMER_GROUP": f"paynotify-{kind}-{run_id}",
        # Topics of the run's own: runs sharing a broker never see each other's messages (two
        # runs on one callbacks topic but different Redis databases decided payments twice).
        "PAYNOTIFY_TOPIC_PREFIX": f"{kind}-{run_id}.",
        "PAYNOTIFY_ORDER_EXPIRY": repr(config.expiry / config.time_scale),
        "PAYNOTIFY_ORDER_RECORDS": "required",  # whatever the shell says: the checks assume it
        # Compressed time packs a day of sweeping into a minute: let the sweeper keep up.
        "PAYNOTIFY_SWEEP_RATE": "200",
    }


async def start_at_end(settings: Settings, billing_state: Path) -> None:
    """The run's consumer groups and its billing consumer start after every older record."""
    from examples.billing_consumer import BillingState  # noqa: PLC0415 - a repo example

    bootstrap, names = settings.kafka_bootstrap_servers, settings.topics
    await start_group_at_end(bootstrap, settings.consumer_group, names.callbacks)
    await start_group_at_end(bootstrap, orders_group(settings), names.orders)
    billing_state.parent.mkdir(parents=True, exist_ok=True)
    BillingState(offsets=await end_offsets(bootstrap, names.events)).save(billing_state)


class DemoRun:
    """The asynchronous part of a run, inside one event loop: orders created and paid, outcomes
    counted. The chaos run (tests/chaos) extends it: `alongside` runs its faults while orders
    are created, and its `settle` waits on the sandbox's ledger instead of the plan."""

    def __init__(  # noqa: PLR0917
        self,
        config: DemoConfig,
        settings: Settings,
        pipeline: Pipeline,
        merchant: Merchant,
        billing_state: Path,
        run_id: str,
        out: TextIO,
    ) -> None:
        self.config = config
        self.settings = settings
        self.pipeline = pipeline
        self.merchant = merchant
        self.billing_state = billing_state
        self.out = out
        self.rng = random.Random(config.seed)
        self.plan = plan_orders(run_id, config.orders, self.rng)
        self.seen = Observed(run_id=run_id, orders=self.plan)
        self.stop = asyncio.Event()
        self.progress = _Progress(out, self.seen)
        self.sandbox_paid = 0
        self._since = 0

    async def drive(self) -> Observed:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._interrupt)
        clock = SystemClock()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            sandbox = SandboxControl(session, self.pipeline.sandbox_url)
            await sandbox.set_chaos(
                query_latency=self.config.query_latency,
                query_error_rate=self.config.query_error_rate,
            )
            consumer_stop = asyncio.Event()
            billing = asyncio.create_task(self._billing(consumer_stop))
            watcher = asyncio.create_task(self._watch(session, sandbox))
            # The one way processes open Redis: a cluster client for a cluster URL.
            redis = connect_redis(
                self.settings.redis_url, max_connections=self.config.create_concurrency + 8
            )
            book = bootstrap.order_book(self.settings, redis, clock)
            client = PlatformClient.open(
                bootstrap.platform_config(self.settings),
                {self.merchant.mch_id: self.merchant},
                clock=clock,
                random=self.rng.random,
                limit=self.config.create_concurrency,
            )
            companion = asyncio.create_task(self.alongside(session, sandbox))
            try:
                await self._create_all(client, book, sandbox, clock)
                await self.settle(sandbox)
            finally:
                if not companion.done():
                    companion.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await companion  # its failure is the run's
                self.seen.finished = clock.time()
                self.progress.done()
                await client.close()
                await redis.aclose()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await self._collect(session, sandbox)
                consumer_stop.set()
                state = await billing
                self.seen.outcome_counts = dict(state.counts)
                self.seen.duplicates_dropped = state.duplicates
        return self.seen

    async def alongside(self, session: aiohttp.ClientSession, sandbox: SandboxControl) -> None:
        """Runs from the first order until `settle` returns (then it is cancelled): nothing
        here; the chaos run injects its faults."""

    def _interrupt(self) -> None:
        self.seen.interrupted = True
        self.stop.set()

    # --- creating and paying ------------------------------------------------------------------

    async def _create_all(
        self, client: PlatformClient, book: OrderBook, sandbox: SandboxControl, clock: SystemClock
    ) -> None:
        slots = asyncio.Semaphore(self.config.create_concurrency)
        start = clock.monotonic()
        self.seen.started = clock.time()

        async def one(order: PlannedOrder) -> None:
            try:
                await self._create(order, client, book, sandbox, clock)
            except (ControlError, aiohttp.ClientError, OSError):
                if not self.stop.is_set():  # after a Ctrl-C the sandbox may be gone: expected
                    raise
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            for index, order in enumerate(self.plan):
                # Paced: a steady stream of payments, as a shop sees them, not one burst.
                delay = start + index / self.config.rate - clock.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self.stop.wait()
                if self.stop.is_set():
                    break
                await slots.acquire()  # backpressure: never more than the limit in flight
                group.create_task(one(order))
        self.seen.created_by = clock.time()

    async def _create(
        self,
        order: PlannedOrder,
        client: PlatformClient,
        book: OrderBook,
        sandbox: SandboxControl,
        clock: SystemClock,
    ) -> None:
        scenario = order.scenario()
        if scenario is not None:
            await sandbox.set_scenario(self.merchant.mch_id, order.mch_order, scenario)
        request = _request(order, self.merchant.mch_id, self.pipeline.notify_url, clock)
        patience = clock.monotonic() + self.config.create_patience
        tries = 0
        while True:
            try:
                await client.create_order(request, recorder=book)
            except PlatformError as exc:
                self.seen.create_failures[exc.reason] += 1
            except OUTAGES:
                # Redis away: try the same request again (recording it again changes nothing,
                # and the platform answers an order it has again), as a shop's system would.
                if clock.monotonic() >= patience or self.stop.is_set():
                    raise
                await clock.sleep(OUTAGE_BACKOFF.backoff(tries, self.rng.random))
                tries += 1
                continue
            else:
                self.seen.created.add(order.mch_order)
            return

    # --- waiting for the outcomes -------------------------------------------------------------

    async def settle(self, sandbox: SandboxControl) -> None:
        """Until every created order has its outcome (unpaid ones expire), or time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.settle_timeout
        if any(not o.paid for o in self.plan):  # the last unpaid one must reach its expiry
            expires = self.seen.started + self.config.expiry - time.time()
            deadline = max(deadline, loop.time() + expires + self.config.settle_timeout / 2)
        while not self.stop.is_set() and loop.time() < deadline:
            if self._settled_orders() >= self.seen.expected_outcomes():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self.stop.wait()
        # Duplicate deliveries of settled orders may still be on their way: let them land.
        end = loop.time() + 5.0
        while not self.stop.is_set() and loop.time() < end:
            stats = await sandbox.stats()
            if not stats.get("in_flight"):
                break
            await asyncio.sleep(0.2)

    def _settled_orders(self) -> int:
        return len({e.mch_order for e in self.seen.events if self.seen.ours(e)})

    # --- watching -----------------------------------------------------------------------------

    async def _billing(self, stop: asyncio.Event) -> BillingState:
        from examples.billing_consumer import consume  # noqa: PLC0415 - a repo example

        def collect(event: dict[str, Any], kafka_ms: int) -> None:
            self.seen.events.append(SeenEvent.from_event(event, kafka_ms))

        return await consume(
            self.settings.kafka_bootstrap_servers,
            self.billing_state,
            stop,
            on_event=collect,
            topic=self.settings.topics.events,
        )

    async def _watch(self, session: aiohttp.ClientSession, sandbox: SandboxControl) -> None:
        """The delivery log, the ingress's counters and the progress line, once a second."""
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await self._read_deliveries(sandbox)
                self.seen.ingress = await ingress_counts(session, self.pipeline.ingress_url)
                self.seen.metrics = await scrape(session, self.pipeline.metrics)
                self.sandbox_paid = int((await sandbox.stats())["counters"].get("paid", 0))
            self.progress.show(self.sandbox_paid)
            await asyncio.sleep(1.0)

    async def _read_deliveries(self, sandbox: SandboxControl) -> None:
        while True:
            page, self._since = await sandbox.deliveries(self._since)
            self.seen.deliveries.add(page)
            if not page:
                return

    async def _collect(self, session: aiohttp.ClientSession, sandbox: SandboxControl) -> None:
        """The last pages and counters. After a Ctrl-C the processes may be gone already."""
        try:
            async with asyncio.timeout(10):
                await self._read_deliveries(sandbox)
                self.seen.ingress = await ingress_counts(session, self.pipeline.ingress_url)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if not self.seen.interrupted:
                raise
            self.out.write(f"(final counters incomplete: {type(exc).__name__})\n")


def _request(
    order: PlannedOrder, mch_id: str, notify_url: str, clock: SystemClock
) -> CreateOrderRequest:
    rules = PayTypeCatalog.documented().get(order.pay_type)
    extra: dict[str, Any] = {}
    if rules.needs_portrait_id:  # Alipay service window and the bank transfers
        extra["user_portrait_id"] = f"payer-{order.mch_order[-6:]}"
    if rules.needs_portrait_name:
        extra["user_portrait_name"] = "Demo Payer"
    return CreateOrderRequest(
        pay_type=order.pay_type,
        mch_id=mch_id,
        mch_order=order.mch_order,
        amt=order.amt,
        remark="paynotify demo",
        created_at=int(clock.time()),
        client_ip=PAYER_IP,
        notify_url=notify_url,
        **extra,
    )


class _Progress:
    """One updating line on a terminal; a line every few seconds otherwise (logs, CI, tests)."""

    def __init__(self, out: TextIO, seen: Observed) -> None:
        self._out = out
        self._seen = seen
        self._tty = out.isatty()
        self._started = time.monotonic()
        self._last_line = 0.0
        self._width = 0

    def show(self, paid: int) -> None:
        now = time.monotonic()
        if not self._tty and now - self._last_line < 5.0:
            return
        self._last_line = now
        seen = self._seen
        ours = [e for e in seen.events if seen.ours(e)]
        by_sweeper = sum(1 for e in ours if e.source == "query")
        text = (
            f"[{now - self._started:5.0f}s] orders {len(seen.created)}/{len(seen.orders)}"
            f" | paid {paid} | ingress {seen.ingress.published} ok, {seen.ingress.refused} refused"
            f" | outcomes {len(ours)}/{seen.expected_outcomes()}"
            f" ({by_sweeper} by sweeper)"
        )
        if self._tty:
            self._out.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def done(self) -> None:
        if self._tty and self._width:
            self._out.write("\n")
            self._out.flush()
