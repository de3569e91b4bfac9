"""One chaos run: a local stack of its own, the whole pipeline, the demo's messy payments, a
seeded schedule of faults, and the verdict of the sandbox's ledger against the events topic.

The orders are the demo's (`devtools.demo.plan`), created and paid by the demo's driver
(`devtools.demo.driver.DemoRun`, extended here): duplicates, concurrent duplicates, repeat payments,
bank transfers, forged and dropped notifications, underpayments and unpaid orders, with order
queries that answer late or `113`. Meanwhile `tests.chaos.injector` carries out the schedule.
Everything started here is stopped at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from devtools.demo.driver import DemoConfig, DemoRun, Services, run_env, start_at_end
from devtools.demo.isolation import topic_partitions
from devtools.demo.observe import SandboxControl
from devtools.demo.plan import PAID_AFTER
from devtools.stack.local import LocalStack, free_port
from devtools.stack.pipeline import Pipeline
from shared.adapters.parked import PARKED_KEY
from shared.domain.events import PAYMENT_TYPES, EventType
from shared.merchants import load_merchants
from shared.settings import Settings
from tests.chaos.injector import FaultRecord, Injector, Targets
from tests.chaos.monitor import (
    OffsetsMonitor,
    log_events,
    longest_stalls,
    recovered_at,
    stall_after,
)
from tests.chaos.schedule import Kind, Schedule, Timing, build_schedule
from tests.chaos.verdict import Event, Payment, Verdict, judge

if TYPE_CHECKING:
    from devtools.demo.report import Observed

MCH_ID = "chaos0001"
EXIT_FAILED = 1
EXIT_SETUP = 2
EXIT_TIMED_OUT = 3
EXIT_INTERRUPTED = 130
QUERY_LATENCY = 0.02  # the run's standing disturbance of order queries, as in `make run`
QUERY_ERROR_RATE = 0.01
PLATFORM_TIMEOUT = 2.0  # the client's timeout on platform calls: timeout bursts stay short
HANDOVER_WINDOW = 15.0  # seconds after a worker fault's end in which its rebalance begins
REBALANCE_SPREAD = 5.0  # seconds between the workers' revocations of one rebalance, at most
# With only unreachable payments left (see settle): judged once no event came for this long.
QUIET = 10.0
UNREACHABLE_CHECKS = 500  # more payments waiting than this are not looked at one by one
MAX_RATE = 25.0  # orders per second by default: what this 2-core machine carries with faults
SHOWN_LOST = 20


@dataclass(frozen=True)
class ChaosConfig:
    payments: int = 10_000  # orders created (most paid once, some twice, a few never)
    seed: int = 1
    brokers: int = 1
    workers: int = 2
    short: bool = False  # each fault kind once
    duration: float | None = None  # real seconds of orders and faults; default: the schedule's
    rate: float | None = None  # orders per second; default: payments over the duration
    time_scale: float = 0.01
    expiry: float = 90.0  # real seconds after creation that an unpaid order expires
    settle_timeout: float = 300.0  # real seconds for quiescence after the last fault
    state_dir: Path | None = None
    keep: bool = False  # keep the state directory (logs, data) after a run that passed
    only: frozenset[Kind] | None = None  # these fault kinds alone (default: every kind)


@dataclass
class ChaosResult:
    verdict: Verdict | None = None
    records: list[FaultRecord] = field(default_factory=list)
    interrupted: bool = False


def say_to(out: TextIO) -> Any:
    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    return say


def run_chaos(config: ChaosConfig, out: TextIO = sys.stdout) -> int:
    """Run; print the faults, recovery times and figures; return the exit code."""
    say = say_to(out)
    run_id = time.strftime("%m%d%H%M%S") + secrets.token_hex(2)
    state_dir = config.state_dir or Path(tempfile.mkdtemp(prefix=f"paynotify-chaos-{run_id}-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    # Orders come at `rate` (default at most MAX_RATE a second) over at least the time the
    # schedule needs; a longer --duration spreads faults and orders over it.
    duration = config.duration or config.payments / (config.rate or MAX_RATE)
    schedule = build_schedule(
        random.Random(config.seed), short=config.short, brokers=config.brokers,
        workers=config.workers, timing=Timing(time_scale=config.time_scale), window=duration,
        only=config.only,
    )  # fmt: skip
    stack, pipeline, demo = _prepare(config, schedule, run_id, state_dir)
    say(
        f"chaos run {run_id}: seed={config.seed} brokers={config.brokers} "
        f"workers={config.workers} orders={config.payments} rate={demo.rate:.1f}/s "
        f"window={schedule.window:.0f}s time_scale={config.time_scale:g}"
    )
    say(f"state, logs and data: {state_dir}")
    run: ChaosRun | None = None
    result = ChaosResult()
    try:
        stack.up()
        billing_state = _start(pipeline, config, state_dir)
        say("started: " + ", ".join(f"{p.name} (pid {p.pid})" for p in pipeline.processes))
        settings = Settings.from_env({**os.environ, **pipeline.env})
        (merchant,) = load_merchants(settings.require_merchants_file()).values()
        run = ChaosRun(
            demo, settings, pipeline, merchant, billing_state, run_id, out,
            schedule=schedule, stack=stack, say=say,
        )  # fmt: skip
        observed = asyncio.run(run.drive())
        result.records = run.records
        result.interrupted = observed.interrupted
        if not observed.interrupted:
            result.verdict = asyncio.run(run.verdict(observed))
    except KeyboardInterrupt:
        result.interrupted = True
    except Exception:  # the run broke (a server that would not start, say): no verdict
        say("the run failed:\n" + traceback.format_exc())
    finally:
        say("stopping the sandbox, ingress, workers, sweeper, Kafka and Redis...")
        pipeline.stop_all()
        stack.down()
    if run is not None:
        _measure(result.records, run.monitor_samples, state_dir / "logs")
    code = _report(say, config, schedule, result, run)
    _save(state_dir / "chaos-run.json", result, run)
    if code == 0 and config.state_dir is None and not config.keep:
        shutil.rmtree(state_dir, ignore_errors=True)
    return code


def _prepare(
    config: ChaosConfig, schedule: Schedule, run_id: str, state_dir: Path
) -> tuple[LocalStack, Pipeline, DemoConfig]:
    """The stack (not started), the pipeline's processes' environment, the demo's settings."""
    stack = LocalStack(
        state_dir=state_dir / "stack", kafka_port=free_port(), redis_port=free_port(),
        brokers=config.brokers, kafka_heap="512m",
    )  # fmt: skip
    demo = DemoConfig(
        orders=config.payments, rate=config.payments / schedule.window,
        time_scale=config.time_scale, workers=config.workers, expiry=config.expiry,
        settle_timeout=config.settle_timeout, seed=config.seed, query_latency=QUERY_LATENCY,
        query_error_rate=QUERY_ERROR_RATE,
        create_patience=schedule.window + config.settle_timeout,
    )  # fmt: skip
    services = Services(stack.bootstrap_servers, stack.redis_url)
    env = run_env(demo, services, _merchants_file(state_dir), run_id, "chaos")
    env["PAYNOTIFY_TOPIC_REPLICATION"] = str(stack.replication)
    env["PAYNOTIFY_PLATFORM_TIMEOUT"] = repr(PLATFORM_TIMEOUT)
    return stack, Pipeline(state_dir=state_dir, env=env), demo


def _start(pipeline: Pipeline, config: ChaosConfig, state_dir: Path) -> Path:
    """Topics, the billing consumer's start, then the sandbox, ingress, workers and sweeper."""
    pipeline.ensure_topics()
    billing_state = state_dir / "billing-state.json"
    asyncio.run(start_at_end(Settings.from_env(pipeline.env), billing_state))
    pipeline.start_sandbox("--seed", str(config.seed), "--pay-after", repr(PAID_AFTER))
    pipeline.start_ingress()
    for index in range(config.workers):
        pipeline.start_worker(index)
    pipeline.start_sweeper()
    return billing_state


def _merchants_file(state_dir: Path) -> Path:
    """One merchant with a key made for this run."""
    path = state_dir / "merchants.toml"
    path.touch(mode=0o600)
    path.write_text(f'[merchants.{MCH_ID}]\nkeys = ["{secrets.token_hex(16)}"]\n')
    return path


class ChaosRun(DemoRun):
    """The demo's run with the faults alongside, settled on the sandbox's ledger."""

    def __init__(
        self,
        *args: Any,
        schedule: Schedule,
        stack: LocalStack,
        say: Any,
    ) -> None:
        super().__init__(*args)
        self.schedule = schedule
        self.stack = stack
        self.say = say
        self.records: list[FaultRecord] = []
        self.ledger: list[dict[str, Any]] = []
        self._ledger_next = 0
        self._faults_done: asyncio.Event | None = None
        self._fault_error: BaseException | None = None
        self.monitor = OffsetsMonitor(
            self.settings.kafka_bootstrap_servers, self.settings.consumer_group,
            self.settings.topics.callbacks, self.settings.topic_partitions,
        )  # fmt: skip
        self.settled_at = 0.0
        self.lost_detail: dict[str, str] = {}
        self._lost_tries: dict[str, tuple[bool, bool]] = {}  # order -> (a repeat?, a try taken?)
        self._gave_up: set[str] = set()  # repeat payments the platform stopped notifying, untaken

    @property
    def monitor_samples(self) -> list[Any]:
        return self.monitor.samples

    async def alongside(self, session: aiohttp.ClientSession, sandbox: SandboxControl) -> None:
        done = self._done_event()
        targets = Targets(
            pipeline=self.pipeline, stack=self.stack, sandbox=sandbox, settings=self.settings,
            mch_id=self.merchant.mch_id, plan=self.plan, created=lambda: set(self.seen.created),
            query_latency=QUERY_LATENCY, query_error_rate=QUERY_ERROR_RATE,
        )  # fmt: skip
        injector = Injector(self.schedule, targets, self.say)
        self.records = injector.records
        monitor = asyncio.create_task(self.monitor.run())
        try:
            await injector.run(time.time())
            self.say(f"[{time.time() - self.seen.started:6.1f}s] every fault done")
        except BaseException as exc:
            self._fault_error = exc
            raise
        finally:
            done.set()
        await monitor  # until the run cancels it

    def _done_event(self) -> asyncio.Event:
        if self._faults_done is None:
            self._faults_done = asyncio.Event()
        return self._faults_done

    async def settle(self, sandbox: SandboxControl) -> None:
        """After the last fault: until every payment in the ledger has an outcome, every unpaid
        order has expired, no notification is in flight and the workers committed everything,
        or until the only payments left are ones nothing can settle any more (repeat payments
        the platform gave up notifying, the known limit), or the settle timeout passes. Any
        other payment is waited for: the sweeper may still find it (judging on a quiet spell
        alone judged one too early on a loaded machine)."""
        done = self._done_event()
        while not done.is_set() and not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await done.wait()
        if self._fault_error is not None or self.stop.is_set():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.settle_timeout
        seen, changed = -1, loop.time()
        while not self.stop.is_set() and loop.time() < deadline:
            if len(self.seen.events) != seen:
                seen, changed = len(self.seen.events), loop.time()
            with contextlib.suppress(Exception):  # the sandbox is never faulted; but be safe
                await self._read_ledger(sandbox)
                waiting = self._unsettled()
                if await self._idle(sandbox):
                    if not waiting:
                        self.settled_at = time.time()
                        return
                    if loop.time() - changed >= QUIET and await self._unreachable(sandbox, waiting):
                        self.settled_at = time.time()
                        self.say(
                            f"settled but for {len(waiting)} repeat payment(s) the platform "
                            "gave up notifying (no query finds them): judging now"
                        )
                        return
            await asyncio.sleep(1.0)
        self.say(f"settle timeout ({self.config.settle_timeout:g}s) passed: judging as it is")

    async def _read_ledger(self, sandbox: SandboxControl) -> None:
        while True:
            page, self._ledger_next = await sandbox.payments(self._ledger_next)
            self.ledger.extend(page)
            if not page:
                return

    def _unsettled(self) -> list[dict[str, Any]]:
        """Ledger payments without an outcome, and unpaid orders not expired (as plain rows)."""
        outcomes: dict[str, set[str]] = {}
        for event in self.seen.events:
            outcomes.setdefault(event.mch_order, set()).add(event.type)
        waiting = [
            p for p in self.ledger if not outcomes.get(p["mch_order"], set()) & PAYMENT_TYPES
        ]
        expired = EventType.ORDER_EXPIRED.value
        waiting += [
            {"mch_order": o.mch_order, "origin_order": None}
            for o in self.plan
            if not o.paid
            and o.mch_order in self.seen.created
            and expired not in outcomes.get(o.mch_order, set())
        ]
        return waiting

    async def _unreachable(self, sandbox: SandboxControl, waiting: list[dict[str, Any]]) -> bool:
        """Every payment still waiting is a repeat payment whose notifications the platform gave
        up on without one try taken: nothing will ever report it (docs/reliability.md)."""
        if len(waiting) > UNREACHABLE_CHECKS:
            return False
        for row in waiting:
            order = row["mch_order"]
            if order in self._gave_up:
                continue
            if not row.get("origin_order"):
                return False
            view = await sandbox.order(self.merchant.mch_id, order)
            mine = [n for n in view["notifications"] if n["mch_order"] == order]
            taken = any(
                d["outcome"] == "success" and d["kind"] != "forged"
                for d in view["deliveries"]
                if d["mch_order"] == order
            )
            if taken or not mine or any(n["state"] != "exhausted" for n in mine):
                return False
            self._gave_up.add(order)
        return True

    async def _idle(self, sandbox: SandboxControl) -> bool:
        """No notification in flight at the platform, none parked for the sweeper to publish,
        nothing uncommitted on callbacks."""
        if (await sandbox.stats()).get("in_flight"):
            return False
        redis = Redis.from_url(self.settings.redis_url, socket_timeout=5.0)
        try:
            if await redis.hlen(PARKED_KEY):
                return False
        finally:
            await redis.aclose()
        sample = await self.monitor.sample()
        return sample is not None and not any(sample.lags.values())

    async def explain_lost(self, sandbox: SandboxControl, verdict: Verdict) -> dict[str, str]:
        """For each lost payment: how the platform's notifications of it went."""
        found: dict[str, str] = {}
        for row in self.ledger:
            if row["mch_order"] not in verdict.lost:
                continue
            view = await sandbox.order(self.merchant.mch_id, row["mch_order"])
            tries = Counter(
                f"{d['outcome']}" + (f" {d['http_status']}" if d["http_status"] else "")
                for d in view["deliveries"]
                if d["mch_order"] == row["mch_order"] and d["kind"] != "forged"
            )
            states = {
                n["state"] for n in view["notifications"] if n["mch_order"] == row["mch_order"]
            }
            taken = any(
                d["outcome"] == "success" and d["kind"] != "forged" for d in view["deliveries"]
                if d["mch_order"] == row["mch_order"]
            )  # fmt: skip
            self._lost_tries[row["mch_order"]] = (bool(row["origin_order"]), taken)
            kind = f"repeat payment of {row['origin_order']}" if row["origin_order"] else "payment"
            found[row["mch_order"]] = (
                f"{kind}, paid at {row['success_at']}; notification {'/'.join(sorted(states))}; "
                f"tries: {', '.join(f'{n} {what}' for what, n in tries.most_common())}"
            )
        return found

    async def verdict(self, observed: Observed) -> Verdict:
        """The ledger, every record of the events topic and the final lags, judged."""
        events = await read_all_events(self.settings)
        lags: dict[int, int] = {}
        try:
            for _ in range(30):
                sample = await self.monitor.sample()
                if sample is not None:
                    lags = sample.lags
                    break
                await asyncio.sleep(1.0)
            else:  # the brokers never answered: no partition can be shown to have moved on
                lags = dict.fromkeys(range(self.settings.topic_partitions), 1)
        finally:
            await self.monitor.close()
        verdict = judge(
            self.plan,
            observed.created,
            [Payment.from_ledger(row) for row in self.ledger],
            events,
            forged_deliveries_accepted=observed.deliveries.forged_accepted,
            lags=lags,
        )
        if not verdict.lost:
            return verdict
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            sandbox = SandboxControl(session, self.pipeline.sandbox_url)
            self.lost_detail = await self.explain_lost(sandbox, verdict)
        untaken = [
            order for order, (repeat, taken) in self._lost_tries.items() if repeat and not taken
        ]
        return verdict.with_unreachable(untaken)


async def read_all_events(settings: Settings, deadline: float = 120.0) -> list[Event]:
    """Every record of the run's events topic, from its start to its end now."""
    topic = settings.topics.events
    bootstrap = settings.kafka_bootstrap_servers
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[Event] = []
    try:
        async with asyncio.timeout(deadline):
            tps = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=500, max_records=2000)
                for records in batch.values():
                    found += [Event.from_cloudevent(orjson.loads(r.value)) for r in records]
    finally:
        await consumer.stop()
    return found


def _measure(records: list[FaultRecord], samples: list[Any], logs: Path) -> None:
    """Recovery from the offsets samples; for worker faults, the hand-over from the logs."""
    events = log_events(
        sorted(logs.glob("worker-*.log")), {"partitions_revoked", "partitions_assigned"}
    )
    for record in records:
        record.recovered = recovered_at(samples, record.started, record.ended)
        record.stall = stall_after(samples, record.started, record.ended)
        record.overlapped = sorted(
            {
                other.fault.kind.value
                for other in records
                if other is not record
                and other.fault.lane != record.fault.lane
                and other.started < (record.recovered or record.ended)
                and other.ended > record.started
            }
        )
        if record.fault.kind in {Kind.WORKER_KILL, Kind.WORKER_STOP}:
            record.handover = _handover(record, events)


def _handover(record: FaultRecord, events: list[dict[str, Any]]) -> dict[str, float]:
    """The rebalance the fault caused (the first after it): `revoke_s`, the longest another
    worker took to give its partitions up (issue 10, hole 9: a job waiting for the dead
    worker's lock gives way at once), and `reassigned_s`, from the fault to partitions assigned
    again (to the restarted worker after a kill, to another worker during a pause)."""
    worker = f"worker-{record.fault.target}"
    killed = record.fault.kind is Kind.WORKER_KILL
    # A rebalance the fault causes starts within the group's session timeout of its end (a pause
    # shorter than that causes none); one later is another fault's.
    until = record.ended + HANDOVER_WINDOW
    after = [e for e in events if record.started <= float(e["ts"]) <= until]
    found: dict[str, float] = {}
    revoked = [e for e in after if e["event"] == "partitions_revoked" and e["process"] != worker]
    if revoked:  # every worker revokes in the same rebalance, within moments of each other
        first = float(revoked[0]["ts"])
        same = [e for e in revoked if float(e["ts"]) <= first + REBALANCE_SPREAD]
        found["revoke_s"] = max(float(e.get("seconds", 0.0)) for e in same)
    for e in after:
        if e["event"] == "partitions_assigned" and (e["process"] == worker) == killed:
            found["reassigned_s"] = float(e["ts"]) - record.started
            break
    return found


def _save(path: Path, result: ChaosResult, run: ChaosRun | None) -> None:
    """The run's faults, samples and figures as JSON, for looking again without running."""
    document = {
        "faults": [
            {
                "kind": r.fault.kind.value, "planned_at": r.fault.at, "seconds": r.fault.seconds,
                "target": r.fault.target, "started": r.started, "ended": r.ended,
                "restart": r.restart, "recovered": r.recovered, "stall": r.stall,
                "overlapped": r.overlapped,
                "handover": r.handover, "detail": r.detail,
            }
            for r in result.records
        ],
        "first_order": run.seen.started if run is not None else None,
        "samples": [
            {"at": s.at, "committed": s.committed, "ends": s.ends}
            for s in (run.monitor_samples if run is not None else [])
        ],
        "figures": None if result.verdict is None else asdict(result.verdict.figures),
        "lost": [] if result.verdict is None else list(result.verdict.lost),
    }  # fmt: skip
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS))


def _report(
    say: Any, config: ChaosConfig, schedule: Schedule, result: ChaosResult, run: ChaosRun | None
) -> int:
    t0 = run.seen.started if run is not None and run.seen.started else 0.0
    say("")
    say(f"seed {config.seed}: {len(schedule.faults)} faults planned, {len(result.records)} done")
    say(
        f"{'at':>8}  {'fault':<22}{'restart':>9}{'stall':>8}{'recovery':>10}{'after end':>11}"
        "  detail"
    )
    for record in result.records:
        say(_fault_line(record, t0))
    say("(stall: the longest its callbacks partitions stood still with messages waiting;")
    say(" recovery: to the backlog it held back committed; *: another lane's fault was on)")
    _recoveries(say, result.records)
    if run is not None:
        stalls = longest_stalls(run.monitor_samples)
        if stalls:
            worst = max(stalls.values())
            say(f"longest stall of a callbacks partition with messages waiting: {worst:.1f}s")
        if run.settled_at and t0:
            say(f"quiescent {run.settled_at - t0:.0f}s after the first order")
    if result.interrupted:
        say("interrupted: no verdict")
        return EXIT_INTERRUPTED
    if result.verdict is None:
        say("no verdict: the run did not get that far (see the logs above)")
        return EXIT_SETUP
    _figures(say, result.verdict, run.lost_detail if run is not None else {})
    return EXIT_FAILED if result.verdict.figures.failed else 0


def _recoveries(say: Any, records: list[FaultRecord]) -> None:
    say("recovery by fault kind (s, from the fault's start to the backlog it held back settled;")
    say("faults overlapped by another lane's left out):")
    by_kind: dict[str, list[float]] = {}
    for record in records:
        if record.recovered is not None and not record.overlapped:
            by_kind.setdefault(record.fault.kind.value, []).append(
                record.recovered - record.started
            )
    for kind, values in sorted(by_kind.items()):
        say(
            f"  {kind:<18} n={len(values):<3} min={min(values):6.1f} "
            f"median={median(values):6.1f} max={max(values):6.1f}"
        )
    stalls: dict[str, list[float]] = {}
    for record in records:
        if record.stall is not None and not record.overlapped:
            stalls.setdefault(record.fault.kind.value, []).append(record.stall)
    say("stall by fault kind (s, faults overlapped by another lane's left out):")
    for kind, values in sorted(stalls.items()):
        say(
            f"  {kind:<18} n={len(values):<3} min={min(values):6.1f} "
            f"median={median(values):6.1f} max={max(values):6.1f}"
        )
    handovers = [r.handover for r in records if r.handover]
    revokes = [h["revoke_s"] for h in handovers if "revoke_s" in h]
    moved = [h["reassigned_s"] for h in handovers if "reassigned_s" in h]
    if revokes:
        say(f"hand-over (revoked partitions given up, s): max {max(revokes):.3f} "
            f"median {median(revokes):.3f} over {len(revokes)} worker faults")  # fmt: skip
    if moved:
        say(f"worker fault -> partitions assigned again (s): median {median(moved):.1f} "
            f"max {max(moved):.1f}")  # fmt: skip


def _figures(say: Any, verdict: Verdict, lost_detail: dict[str, str]) -> None:
    outcomes = ", ".join(f"{k.rsplit('.', 1)[-1]}={n}" for k, n in verdict.outcomes.items())
    say(f"outcomes: {outcomes}")
    say(f"unpaid orders expired: {verdict.expired[0]}/{verdict.expired[1]}")
    for figure, orders in verdict.examples.items():
        if figure != "lost":
            say(f"{figure}: {', '.join(orders)}")
    for order in verdict.lost[:SHOWN_LOST]:
        say(f"lost: {order}: {lost_detail.get(order, '')}")
    if len(verdict.lost) > SHOWN_LOST:
        say(f"lost: ... and {len(verdict.lost) - SHOWN_LOST} more")
    if verdict.unreachable:
        say(
            f"of the lost, {len(verdict.unreachable)} repeat payment(s) none of whose "
            "notification tries was taken: the platform gave up on them and has no query that "
            "finds a repeat payment (docs/reliability.md, known limits)"
        )
    say(f"unexpected={verdict.figures.unexpected} unreachable={len(verdict.unreachable)}")
    say(verdict.figures.line())


def _fault_line(record: FaultRecord, t0: float) -> str:
    restart = f"{record.restart:.1f}s" if record.restart is not None else "-"
    if record.recovered is not None:
        recovery = f"{record.recovered - record.started:.1f}s"
        after = f"{max(0.0, record.recovered - record.ended):.1f}s"
    else:
        recovery = after = "-"
    if record.overlapped:
        recovery += "*"
    handover = ""
    if "revoke_s" in record.handover:
        handover = f"; revoke {record.handover['revoke_s']:.3f}s"
    if "reassigned_s" in record.handover:
        handover += f", reassigned after {record.handover['reassigned_s']:.1f}s"
    at = record.started - t0 if t0 else 0.0
    stall = f"{record.stall:.1f}s" if record.stall is not None else "-"
    return (
        f"{at:7.1f}s  {record.fault.describe():<22}{restart:>9}{stall:>8}{recovery:>10}"
        f"{after:>11}  {record.detail}{handover}"
    )
