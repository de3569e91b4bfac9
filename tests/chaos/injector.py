"""Carry out a chaos schedule against the running pipeline: kill -9 and restart processes and
servers, pause workers, and disturb the sandbox platform's answers. Each fault is recorded with
its wall-clock start and end; recovery is computed afterwards from the offsets monitor."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient

from devtools.stack.pipeline import wait_for_http
from shared.adapters.kafka import CallbackEnvelope, start_producer
from shared.protocol.payment import order_key
from shared.protocol.signing import signed
from tests.chaos.schedule import Kind

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from devtools.demo.observe import SandboxControl
    from devtools.demo.plan import PlannedOrder
    from devtools.stack.local import LocalStack
    from devtools.stack.pipeline import Pipeline, ServiceProcess
    from shared.settings import Settings
    from tests.chaos.schedule import Fault, Schedule

# Answers a hostile or broken platform might give to an order query (issue 10, hole 1): each must
# end as a retry, never a crash, a stopped partition or a `succeeded`.
HOSTILE_BODIES = (
    '{"code":1,"msg":"ok","x":1e999999999}',  # decimal.Overflow in decoding, before the fix
    "[" * 600 + "]" * 600,  # nesting past the recursion limit
    '{"code":1,"msg":"ok","amt":NaN}',
    '{"code":1,"msg":"ok","amt":' + "9" * 5000 + "}",  # a number of 5000 digits
    '{"code":"1","msg":{"nested":[1,2]}}',  # wrong types
    '{"code":1,"msg":"success","mch_id":"x"',  # cut short
    "<html><body>502 Bad Gateway</body></html>",
    "",
)
HOSTILE_FAULTS: tuple[dict[str, Any], ...] = (
    *({"endpoint": "query", "body": body} for body in HOSTILE_BODIES),
    {"endpoint": "query", "forge_sign": True},  # a paid answer signed with the wrong key
    {"endpoint": "query", "http_status": 502},
    {"endpoint": "query", "code": 114},
)
FORGED_ORDERS = 5  # unpaid orders a forger claims paid, per forgeries fault
FORGER_PATIENCE = 120.0  # seconds the forger waits for the brokers to take its envelopes
LATE_BY = 1.0  # a timeout burst's answers come this much after the client's timeout


@dataclass
class FaultRecord:
    fault: Fault
    started: float  # Unix time
    ended: float = 0.0
    detail: str = ""
    restart: float | None = None  # seconds a killed process or server took to be back
    recovered: float | None = None  # Unix time (monitor.recovered_at)
    stall: float | None = None  # seconds its partitions stood still (monitor.stall_after)
    handover: dict[str, float] = field(default_factory=dict)  # from the workers' logs
    overlapped: list[str] = field(default_factory=list)  # other lanes' faults meanwhile


@dataclass
class Targets:
    """What the faults act on."""

    pipeline: Pipeline
    stack: LocalStack
    sandbox: SandboxControl
    settings: Settings
    mch_id: str
    plan: Sequence[PlannedOrder]
    created: Callable[[], set[str]]  # order numbers the platform accepted so far
    query_latency: float  # the run's standing chaos, restored after each burst
    query_error_rate: float


class Injector:
    def __init__(self, schedule: Schedule, targets: Targets, say: Callable[[str], None]) -> None:
        self.schedule = schedule
        self.targets = targets
        self.records: list[FaultRecord] = []
        self._say = say
        self._t0 = 0.0
        self._stopped: set[int] = set()  # pids under SIGSTOP, resumed whatever happens

    async def run(self, t0: float) -> list[FaultRecord]:
        """Every lane at once, each fault of a lane after the previous one ended."""
        self._t0 = t0
        try:
            async with asyncio.TaskGroup() as group:
                for lane in self.schedule.lanes().values():
                    group.create_task(self._lane(lane))
        finally:
            for pid in self._stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        return self.records

    async def _lane(self, faults: list[Fault]) -> None:
        for fault in faults:
            wait = self._t0 + fault.at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            record = FaultRecord(fault, started=time.time())
            self.records.append(record)
            self._say(f"{self._clock(record.started)} + {fault.describe()}")
            await self._inject(fault, record)
            record.ended = time.time()
            self._say(f"{self._clock(record.ended)} - {fault.kind.value}: {record.detail}")

    def _clock(self, at: float) -> str:
        return f"[{at - self._t0:6.1f}s]"

    async def _inject(self, fault: Fault, record: FaultRecord) -> None:
        """Carry out one fault; it returns once what it broke has been started again."""
        actions: dict[Kind, Callable[[Fault, FaultRecord], Awaitable[str]]] = {
            Kind.WORKER_KILL: self._restart_process,
            Kind.SWEEPER_KILL: self._restart_process,
            Kind.INGRESS_KILL: self._restart_process,
            Kind.WORKER_STOP: self._pause_worker,
            Kind.KAFKA_KILL: self._kill_node,
            Kind.LEADER_KILL: self._kill_leader,
            Kind.KAFKA_OUTAGE: self._kafka_outage,
            Kind.REDIS_KILL: self._redis_down,
            Kind.REDIS_OUTAGE: self._redis_down,
            Kind.QUERY_TIMEOUTS: self._late_answers,
            Kind.QUERY_BUSY: self._busy_answers,
            Kind.HOSTILE_ANSWERS: self._hostile_answers,
            Kind.FORGERIES: self._forge,
        }
        record.detail = await actions[fault.kind](fault, record)

    async def _pause_worker(self, fault: Fault, record: FaultRecord) -> str:
        process = self._current(f"worker-{fault.target}")
        pid = process.pid
        if pid is None:  # never started: nothing to pause
            return f"{process.name} not running"
        os.kill(pid, signal.SIGSTOP)
        self._stopped.add(pid)
        try:
            await asyncio.sleep(fault.seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
            self._stopped.discard(pid)
        return f"{process.name} (pid {pid}) stopped {fault.seconds:g}s, continued"

    async def _kill_leader(self, fault: Fault, record: FaultRecord) -> str:
        node = await self._leader(fault.target)
        detail = await self._kill_node(replace(fault, target=node), record)
        return f"leader of callbacks partition {fault.target}: {detail}"

    async def _kafka_outage(self, fault: Fault, record: FaultRecord) -> str:
        stack = self.targets.stack
        for node in stack.nodes:
            await asyncio.to_thread(stack.kill_kafka_node, node)
        await asyncio.sleep(fault.seconds)
        began = time.time()
        await asyncio.to_thread(stack.start_kafka)
        record.restart = time.time() - began
        return (
            f"all {stack.brokers} broker(s) down {fault.seconds:g}s, back in {record.restart:.1f}s"
        )

    async def _redis_down(self, fault: Fault, record: FaultRecord) -> str:
        stack = self.targets.stack
        await asyncio.to_thread(stack.kill_redis)
        await asyncio.sleep(fault.seconds)
        began = time.time()
        await asyncio.to_thread(stack.start_redis)
        record.restart = time.time() - began
        return f"redis-server killed, down {fault.seconds:g}s, back in {record.restart:.1f}s"

    async def _late_answers(self, fault: Fault, record: FaultRecord) -> str:
        t = self.targets
        late = t.settings.platform_timeout + LATE_BY
        await t.sandbox.set_chaos(query_latency=late, query_error_rate=t.query_error_rate)
        await self._restore_after(fault.seconds)
        return f"order queries answered after {late:g}s for {fault.seconds:g}s"

    async def _busy_answers(self, fault: Fault, record: FaultRecord) -> str:
        t = self.targets
        await t.sandbox.set_chaos(query_latency=t.query_latency, query_error_rate=1.0)
        await self._restore_after(fault.seconds)
        return f"every order query answered 113 for {fault.seconds:g}s"

    async def _hostile_answers(self, fault: Fault, record: FaultRecord) -> str:
        queued = await self.targets.sandbox.queue_faults(list(HOSTILE_FAULTS))
        return f"{len(HOSTILE_FAULTS)} hostile answers queued ({queued} waiting)"

    async def _restore_after(self, seconds: float) -> None:
        t = self.targets
        try:
            await asyncio.sleep(seconds)
        finally:
            await t.sandbox.set_chaos(
                query_latency=t.query_latency, query_error_rate=t.query_error_rate
            )

    def _current(self, name: str) -> ServiceProcess:
        return [p for p in self.targets.pipeline.processes if p.name == name][-1]

    async def _restart_process(self, fault: Fault, record: FaultRecord) -> str:
        name = {
            Kind.WORKER_KILL: f"worker-{fault.target}",
            Kind.SWEEPER_KILL: "sweeper-0",
            Kind.INGRESS_KILL: "ingress",
        }[fault.kind]
        pipeline = self.targets.pipeline
        old = self._current(name)
        await asyncio.to_thread(old.kill)
        began = time.time()
        if name == "ingress":
            try:
                new = await asyncio.to_thread(pipeline.start_ingress)
            except TimeoutError:  # Kafka away meanwhile: it waits it out; so do we
                new = self._current(name)
                await asyncio.to_thread(wait_for_http, f"{pipeline.ingress_url}/readyz", 600.0, new)
        elif name.startswith("worker-"):
            new = pipeline.start_worker(int(name.removeprefix("worker-")))
        else:
            new = pipeline.start_sweeper()
        record.restart = time.time() - began
        return f"{name} pid {old.pid} killed, started again as pid {new.pid}"

    async def _kill_node(self, fault: Fault, record: FaultRecord) -> str:
        """kill -9 broker `fault.target`; started again after `fault.seconds`."""
        node, down = fault.target, fault.seconds
        stack = self.targets.stack
        await asyncio.to_thread(stack.kill_kafka_node, node)
        await asyncio.sleep(down)
        began = time.time()
        await asyncio.to_thread(stack.start_kafka_node, node)
        record.restart = time.time() - began
        return f"broker {node} killed, down {down:g}s, back in {record.restart:.1f}s"

    async def _leader(self, partition: int) -> int:
        """The node leading a callbacks partition now (node 1 if the brokers cannot say)."""
        settings = self.targets.settings
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        try:
            async with asyncio.timeout(20):
                await admin.start()
                (described,) = await admin.describe_topics([settings.topics.callbacks])
            for found in described["partitions"]:
                if found["partition"] == partition and found["leader"] >= 1:
                    return int(found["leader"])
        except Exception:  # a cluster in a bad way: kill the first node instead
            return 1
        finally:
            await admin.close()
        return 1

    async def _forge(self, fault: Fault, record: FaultRecord) -> str:
        """A forger claims unpaid orders were paid: through the ingress (a notification signed
        with a wrong key) and straight onto the callbacks topic (an envelope whose report is
        signed wrongly, as from the ingress and as from the sweeper). None may settle."""
        t = self.targets
        created = t.created()
        unpaid = [o for o in t.plan if not o.paid and o.mch_order in created][:FORGED_ORDERS]
        now = str(int(time.time()))
        for order in unpaid:
            changes = {"status": "2", "success_at": now, "amt": str(order.amt)}
            await t.sandbox.forge(t.mch_id, order.mch_order, changes)
        try:
            async with asyncio.timeout(FORGER_PATIENCE):
                sent = await self._forge_envelopes(unpaid, now)
        except TimeoutError:  # Kafka away all along: the notifications were still forged
            return f"{len(unpaid)} forged notifications; envelopes not sent (Kafka away)"
        return f"{len(unpaid)} forged notifications and {sent} forged envelopes for unpaid orders"

    async def _forge_envelopes(self, unpaid: list[PlannedOrder], now: str) -> int:
        """Write them once the brokers take them (a lane may have Kafka down meanwhile)."""
        t = self.targets
        while True:
            try:
                producer = await start_producer(t.settings, client_id="chaos-forger")
                try:
                    for number, order in enumerate(unpaid):
                        source = "query" if number % 2 else "notification"
                        await producer.send_and_wait(
                            t.settings.topics.callbacks,
                            _forged_envelope(t.mch_id, order, now, source),
                            key=order_key(t.mch_id, order.mch_order),
                        )
                finally:
                    await producer.stop()
            except Exception:  # the brokers away: all again in a moment (more forgeries)
                await asyncio.sleep(2.0)
            else:
                return len(unpaid)


def _forged_envelope(mch_id: str, order: PlannedOrder, now: str, source: str) -> bytes:
    report = {
        "mch_id": mch_id, "service": str(order.pay_type), "mch_order": order.mch_order,
        "amt": str(order.amt), "mch_amt": str(order.amt), "amt_type": "cny", "status": "2",
        "created_at": now, "success_at": now, "sign_type": "md5",
    }  # fmt: skip
    fields = signed(report, "0123456789abcdef0123456789abcdef")  # not the merchant's key
    return CallbackEnvelope(
        fields=fields,
        key_id="sha256:forged",
        received_at=float(now),
        peer=None,
        delivery_id=uuid.uuid4().hex,
        source=source,
    ).encode()
