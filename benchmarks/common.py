"""What every benchmark shares: the services, the machine, CPU and memory readings, the sandbox's
control API, pre-signed notifications, Kafka helpers, and the results file with its headline.

Nothing here runs at import time. Every figure a benchmark prints is also written to
`benchmarks/results/<name>.json` together with the machine it was measured on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from devtools.stack.local import KAFKA_VERSION, LocalStack, cache_dir, free_port
from devtools.stats import percentile
from shared.adapters.kafka import CallbackEnvelope, start_producer
from shared.domain.events import SOURCE_NOTIFICATION
from shared.merchants import load_merchants
from shared.protocol.payment import PaymentReport, PaymentStatus, report_fields
from shared.protocol.signing import signed
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
MERCHANTS_FILE = ROOT / "deploy" / "merchants.example.toml"
BENCH_REDIS_DB = 12  # benchmarks keep their Redis keys apart from a developer's database 0
ORDER_AMOUNT = 10_000  # li
PAY_TYPE = 10


# --- the machine --------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The machine and software a figure was measured with, and how busy it was already."""
    load1, load5, _ = os.getloadavg()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kafka": KAFKA_VERSION,
        "packages": {
            name: _version(name)
            for name in ("aiohttp", "aiokafka", "redis", "orjson", "faststream", "py-spy")
        },
        "wrk": shutil.which("wrk") is not None,
        # Other engineers run tests on this machine too: the load before a run says how noisy.
        "loadavg_at_start": [round(load1, 2), round(load5, 2)],
    }


# --- services -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Services:
    bootstrap: str
    redis_url: str  # the benchmark database of the stack's Redis
    origin: str  # "environment" or "local stack"
    kafka_pid: int | None
    redis_pid: int | None


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


def in_db(url: str, db: int) -> str:
    return urlsplit(url)._replace(path=f"/{db}").geturl()


def pid_listening_on(port: int) -> int | None:
    """The process listening on a loopback TCP port (to read its CPU), if it is visible."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) in wanted:
                        return int(proc.name)
    return None


@contextlib.contextmanager
def services() -> Iterator[Services]:
    """A running Kafka and Redis from the environment, else a local stack of our own."""
    kafka, redis = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("REDIS_URL")
    if kafka and redis:
        yield Services(
            kafka,
            in_db(redis, BENCH_REDIS_DB),
            "environment",
            pid_listening_on(_port(kafka)),
            pid_listening_on(urlsplit(redis).port or 6379),
        )
        return
    state = Path(tempfile.mkdtemp(prefix="paynotify-bench-"))
    stack = LocalStack(state, kafka_port=free_port(), redis_port=free_port())
    try:
        stack.up()
        yield Services(
            stack.bootstrap_servers,
            in_db(stack.redis_url, BENCH_REDIS_DB),
            "local stack",
            pid_listening_on(stack.kafka_port),
            pid_listening_on(stack.redis_port),
        )
    finally:
        stack.down()
        shutil.rmtree(state, ignore_errors=True)


def kafka_libs() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def run_id() -> str:
    return uuid.uuid4().hex[:8]


def pipeline_env(svc: Services, group: str, **extra: str) -> dict[str, str]:
    """The environment of the project's processes in a benchmark (production defaults else)."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": svc.bootstrap,
        "REDIS_URL": svc.redis_url,
        "PAYNOTIFY_MERCHANTS_FILE": str(MERCHANTS_FILE),
        "PAYNOTIFY_TIME_SCALE": "1",
        # Orders are created in the sandbox only, not in the merchant's order book.
        "PAYNOTIFY_ORDER_RECORDS": "optional",
        "PAYNOTIFY_CONSUMER_GROUP": group,
        **extra,
    }


# --- CPU and memory -----------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")
MACHINE = "machine"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process, all its threads, so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def memory_mb(pid: int | None) -> dict[str, float | None]:
    """Resident memory now and its peak (VmHWM), in MB."""
    found: dict[str, float | None] = {"rss_mb": None, "peak_rss_mb": None}
    if pid is None:
        return found
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                found["rss_mb"] = round(int(line.split()[1]) / 1024, 1)
            elif line.startswith("VmHWM:"):
                found["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    return found


@dataclass
class CpuMonitor:
    """Samples the CPU time of named processes, so any window's usage can be read afterwards."""

    interval: float = 0.2
    pids: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        # The whole machine too: what our processes did not use went to others' work.
        self.pids[MACHINE] = 0
        self.samples[MACHINE] = []

    def watch(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self.pids[name] = pid
            self.samples[name] = []  # a name watched again is a new process
            self._sample_one(name, time.time())

    def _sample_one(self, name: str, now: float) -> None:
        value = machine_busy_seconds() if name == MACHINE else cpu_seconds(self.pids[name])
        if value is not None:
            self.samples[name].append((now, value))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.time()
            for name in list(self.pids):
                self._sample_one(name, now)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="cpu-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def usage(self, name: str, start: float, end: float) -> float | None:
        """Cores used by `name` between two Unix times (1.0 = one core fully busy)."""
        points = self.samples.get(name, [])
        inside = [p for p in points if start - self.interval <= p[0] <= end + self.interval]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return round((c1 - c0) / (t1 - t0), 3)

    def usages(self, start: float, end: float) -> dict[str, float | None]:
        """Cores used by each watched process, the whole machine, and everything else."""
        found = {name: self.usage(name, start, end) for name in self.pids}
        ours = sum(v for k, v in found.items() if k != MACHINE and v is not None)
        total = found.get(MACHINE)
        found["others"] = None if total is None else round(max(0.0, total - ours), 3)
        return found


# --- statistics and output ----------------------------------------------------------------


def latency_summary_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """Nearest-rank percentiles (devtools.stats, as the demo's report) in milliseconds."""
    ordered = sorted(seconds)

    def ms(share: float) -> float | None:
        return round(percentile(ordered, share) * 1000, 2) if ordered else None

    return {
        "count": len(ordered),
        "p50_ms": ms(0.50),
        "p90_ms": ms(0.90),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": ms(1.0),
    }


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    def text(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    cells = [[text(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def headline(metric: str, value: float | None, target: str) -> dict[str, Any]:
    return {"metric": metric, "value": value, "target": target}


def finish(name: str, figures: dict[str, Any], top: dict[str, Any]) -> None:
    """Write `results/<name>.json` and print the headline as the last line."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{name}", *sys.argv[1:]]),
        "machine": machine(),
        **figures,
        "headline": top,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nresults: {path.relative_to(ROOT)}")
    value = top["value"]
    shown = "n/a" if value is None else (f"{value:,.2f}" if value < 100 else f"{value:,.0f}")
    print(f"HEADLINE {name}: {top['metric']} = {shown} (target {top['target']})", flush=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- notifications ------------------------------------------------------------------------


def merchant() -> Any:
    merchants = load_merchants(MERCHANTS_FILE)
    return next(iter(merchants.values()))


def notification_form(mch_id: str, key: Any, mch_order: str, at: int) -> dict[str, str]:
    """The signed form the platform would POST for a paid order (as the sandbox builds it)."""
    report = PaymentReport(
        mch_id=mch_id, pay_type=PAY_TYPE, mch_order=mch_order, amt=ORDER_AMOUNT,
        mch_amt=ORDER_AMOUNT, amt_type="cny", status=PaymentStatus.PAID, created_at=at,
        success_at=at, origin_order=None, call=None, sign_type="md5",
    )  # fmt: skip
    return signed(report_fields(report), key)


def notification_bodies(prefix: str, count: int) -> tuple[list[str], list[bytes]]:
    """`count` order numbers and their pre-signed urlencoded notification bodies."""
    seller = merchant()
    now = int(time.time())
    names = [f"{prefix}{i:07d}" for i in range(count)]
    bodies = [
        urlencode(notification_form(seller.mch_id, seller.signing_key, n, now)).encode()
        for n in names
    ]
    return names, bodies


def callback_messages(prefix: str, count: int) -> list[tuple[str, bytes]]:
    """Envelopes as the ingress would publish them for `count` paid orders, with their keys."""
    seller = merchant()
    now = time.time()
    messages = []
    for i in range(count):
        name = f"{prefix}{i:07d}"
        form = notification_form(seller.mch_id, seller.signing_key, name, int(now))
        envelope = CallbackEnvelope(
            fields=form, key_id=seller.signing_key.key_id, received_at=now, peer="127.0.0.1",
            delivery_id=uuid.uuid4().hex, source=SOURCE_NOTIFICATION,
        )  # fmt: skip
        messages.append((f"{seller.mch_id}:{name}", envelope.encode()))
    return messages


# --- the sandbox --------------------------------------------------------------------------

NOWHERE = "http://127.0.0.1:9/notify"  # never reached: the scenario drops every try


class SandboxControl:
    """The sandbox's JSON control API (docs/sandbox.md)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"{self.base_url}/_sandbox/{path}", json=body) as answer,
        ):
            document = await answer.json()
            if answer.status >= 300:
                raise RuntimeError(f"sandbox {method} {path}: {answer.status} {document}")
            return document

    async def chaos(self, query_latency: float) -> None:
        await self.call("PUT", "chaos", {"query_latency": query_latency} if query_latency else {})

    async def paid_orders(
        self, names: Sequence[str], *, notify_url: str = NOWHERE, deliver: bool = False
    ) -> None:
        """Create and pay these orders. Unless `deliver`, the sandbox drops every notification
        try, so only the benchmark's own messages reach paynotify."""
        seller = merchant()
        scenario = {} if deliver else {"drop_attempts": 9}
        for start in range(0, len(names), 5000):
            chunk = names[start : start + 5000]
            orders = [
                {"mch_id": seller.mch_id, "mch_order": n, "amt": ORDER_AMOUNT,
                 "pay_type": PAY_TYPE, "notify_url": notify_url, "scenario": scenario}
                for n in chunk
            ]  # fmt: skip
            await self.call("POST", "orders", {"orders": orders})
            paid = [{"mch_id": seller.mch_id, "mch_order": n} for n in chunk]
            await self.call("POST", "pay", {"orders": paid})


# --- Kafka --------------------------------------------------------------------------------


async def partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0 or not described["partitions"]:
        raise RuntimeError(f"topic {topic} is not there (error {described['error_code']})")
    return sorted(p["partition"] for p in described["partitions"])


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    parts = [TopicPartition(topic, p) for p in await partitions(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await asyncio.sleep(0)  # see read_from
        ends = await consumer.end_offsets(parts)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def commit_at_end(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Start `group` at the topic's end, so it reads only what is published from now on."""
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        parts = {TopicPartition(topic, p): o for p, o in ends.items()}
        consumer.assign(list(parts))
        await consumer.commit(parts)
    finally:
        await consumer.stop()
    return ends


async def publish(bootstrap: str, topic: str, messages: Sequence[tuple[str, bytes]]) -> None:
    producer = await start_producer(
        Settings(kafka_bootstrap_servers=bootstrap), client_id="bench-loader", linger_ms=20
    )
    try:
        for start in range(0, len(messages), 2000):
            pending = [
                await producer.send(topic, value, key=key)
                for key, value in messages[start : start + 2000]
            ]
            await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    timestamp: float  # Unix seconds (the producer's CreateTime)
    value: bytes


async def read_from(
    bootstrap: str, topic: str, start: dict[int, int], key_prefix: str
) -> list[Record]:
    """Every record from `start` up to the current end whose key starts with `key_prefix`."""
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    await consumer.start()
    found: list[Record] = []
    try:
        parts = [TopicPartition(topic, p) for p in ends]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, start.get(tp.partition, 0))
        remaining = {tp for tp in parts if ends[tp.partition] > start.get(tp.partition, 0)}
        prefix = key_prefix.encode()
        deadline = time.monotonic() + 120
        while remaining and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                end = ends[tp.partition]
                found.extend(
                    Record(r.key.decode(), r.timestamp / 1000, r.value or b"")
                    for r in records
                    if r.offset < end and r.key and r.key.startswith(prefix)
                )
                if await consumer.position(tp) >= ends[tp.partition]:
                    remaining.discard(tp)
    finally:
        # aiokafka 0.14: a consumer stopped before its background task first ran raises
        # CancelledError from stop(); one turn of the loop lets that task start.
        await asyncio.sleep(0)
        await consumer.stop()
    return found


def event_types(records: Iterable[Record]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for r in records:
        kind = orjson.loads(r.value).get("type", "?")
        counted[kind] = counted.get(kind, 0) + 1
    return counted


def port_free() -> int:
    return free_port()


def wait_port(port: int, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {deadline}s")
