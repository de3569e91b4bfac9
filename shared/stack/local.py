"""The local stack: a real Apache Kafka broker (KRaft, single node) and Redis, as plain processes.

No Docker engine is needed. Kafka's jars come from Maven Central through `kafka-pom.xml` and are
cached outside the repo (`PAYNOTIFY_CACHE_DIR`, default `~/.cache/paynotify`); data, logs and pid
files live under one state directory. `up` is idempotent: a stack already answering is reused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

KAFKA_VERSION = "4.1.1"
_START_DEADLINE = 90.0
_PROGRAMS = {"kafka": {"java"}, "redis": {"redis-server"}}
_STOP_DEADLINE = 30.0


class StackError(RuntimeError):
    """The stack could not be set up; the message says what is missing or what failed."""


def cache_dir() -> Path:
    return Path(os.environ.get("PAYNOTIFY_CACHE_DIR") or Path.home() / ".cache" / "paynotify")


def default_state_dir() -> Path:
    return cache_dir() / "stack"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def kafka_cluster_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A cluster id as Kafka's `Uuid.randomUuid` makes one: 16 random bytes in URL-safe base64,
    drawn again when the text would start with `-` (a command line reads that as an option;
    one id in 64 did, and `kafka-storage format -t -…` failed)."""
    while True:
        text = base64.urlsafe_b64encode(random_bytes(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _log(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


def ensure_kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """Download the broker's jars with Maven once; return the directory holding them."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    done = libs.parent / ".complete"
    if done.exists():
        return libs
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise StackError(f"{tool} is not on PATH: the local Kafka needs Java 17+ and Maven")
    _log(f"fetching Apache Kafka {version} from Maven Central into {libs}")
    pom = resources.files("shared.stack").joinpath("kafka-pom.xml")
    with resources.as_file(pom) as pom_path:
        result = subprocess.run(
            [
                "mvn", "-q", "-B", "-f", str(pom_path), f"-Dkafka.version={version}",
                "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise StackError(
            f"maven could not fetch Kafka {version}:\n{(result.stdout + result.stderr)[-2000:]}"
        )
    done.write_text(version)
    return libs


@dataclass
class LocalStack:
    """One broker and one Redis on loopback ports, under `state_dir`."""

    state_dir: Path
    kafka_port: int = 9092
    redis_port: int = 6379
    kafka_version: str = KAFKA_VERSION
    kafka_heap: str = "768m"
    # Kept so a process started here is reaped here (and Python does not warn about it).
    _children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def controller_port(self) -> int:
        stored = self.state_dir / "kafka" / "controller.port"
        if stored.exists():
            return int(stored.read_text())
        port = free_port()
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(str(port))
        return port

    def exports(self) -> str:
        return (
            f"export KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers}\n"
            f"export REDIS_URL={self.redis_url}\n"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def up(self) -> None:
        self.start_redis()
        self.start_kafka()

    def down(self) -> None:
        self.stop_kafka()
        self.stop_redis()

    def status(self) -> dict[str, bool]:
        return {
            "kafka": self._alive("kafka") and _port_open(self.kafka_port),
            "redis": self._alive("redis") and _port_open(self.redis_port),
        }

    def start_kafka(self) -> None:
        if self._alive("kafka"):
            self._wait_for_kafka()
            _log(f"kafka already running on {self.bootstrap_servers}")
            return
        if _port_open(self.kafka_port):
            raise StackError(f"port {self.kafka_port} is taken by something that is not our Kafka")
        libs = ensure_kafka_jars(self.kafka_version)
        home = self.state_dir / "kafka"
        data = home / "data"
        home.mkdir(parents=True, exist_ok=True)
        props = home / "server.properties"
        props.write_text(self._server_properties(data))
        log4j = home / "log4j2.properties"
        log4j.write_text(_LOG4J.format(log=home / "server.log"))
        java = [
            "java", "-Xms256m", f"-Xmx{self.kafka_heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", f"{libs}/*",
        ]  # fmt: skip
        if not (data / "meta.properties").exists():
            formatted = subprocess.run(
                [*java, "kafka.tools.StorageTool", "format",
                 f"--cluster-id={kafka_cluster_id()}", "-c", str(props)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if formatted.returncode != 0:
                output = (formatted.stdout + formatted.stderr)[-2000:]
                raise StackError(f"kafka storage format failed:\n{output}")
        self._spawn("kafka", [*java, "kafka.Kafka", str(props)], home / "stdout.log")
        self._wait_for_kafka()
        _log(f"kafka {self.kafka_version} up on {self.bootstrap_servers}")

    def stop_kafka(self) -> None:
        self._stop("kafka")

    def start_redis(self) -> None:
        if self._alive("redis"):
            _log(f"redis already running on {self.redis_url}")
            return
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(server).exists():
            raise StackError("redis-server is not installed (Debian: apt-get install redis-server)")
        if _port_open(self.redis_port):
            raise StackError(f"port {self.redis_port} is taken by something that is not our Redis")
        home = self.state_dir / "redis"
        home.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "redis",
            [
                server, "--bind", "127.0.0.1", "--port", str(self.redis_port),
                "--dir", str(home), "--appendonly", "yes", "--save", "",
                "--daemonize", "no", "--logfile", str(home / "redis.log"),
            ],
            home / "stdout.log",
        )  # fmt: skip
        self._wait(self._redis_ping, "redis", home / "redis.log")
        _log(f"redis up on {self.redis_url}")

    def stop_redis(self) -> None:
        self._stop("redis")

    # -- internals -------------------------------------------------------------------------

    def _server_properties(self, data: Path) -> str:
        return _SERVER_PROPERTIES.format(
            port=self.kafka_port, controller=self.controller_port, data=data
        )

    def _pidfile(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def _alive(self, name: str) -> bool:
        pidfile = self._pidfile(name)
        if not pidfile.exists():
            return False
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
            return False
        # A zombie, or a pid reused by some other program, is not our server.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return False
        state = stat.rpartition(")")[2].split()[0]
        return state != "Z" and comm in _PROGRAMS[name]

    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the shell that ran `stack up`
            )  # fmt: skip
        self._children[name] = process
        self._pidfile(name).write_text(str(process.pid))

    def _stop(self, name: str) -> None:
        if not self._alive(name):
            _log(f"{name} not running")
            return
        pid = int(self._pidfile(name).read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_DEADLINE
        while time.monotonic() < deadline and self._alive(name):
            _reap(pid)
            time.sleep(0.1)
        if self._alive(name):
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self._pidfile(name).unlink(missing_ok=True)
        child = self._children.pop(name, None)
        if child is not None:
            child.wait(timeout=_STOP_DEADLINE)
        _log(f"{name} stopped")

    def _redis_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_for_kafka(self) -> None:
        log = self.state_dir / "kafka" / "server.log"
        self._wait(lambda: _port_open(self.kafka_port), "kafka", log)
        # An open port is not a working broker: wait until a client can list topics.
        asyncio.run(_wait_for_metadata(self.bootstrap_servers, _START_DEADLINE))

    def _wait(self, ready: Callable[[], bool], name: str, log: Path) -> None:
        deadline = time.monotonic() + _START_DEADLINE
        while time.monotonic() < deadline:
            if ready():
                return
            if not self._alive(name):
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise StackError(f"{name} exited while starting; its log ends:\n{tail}")
            time.sleep(0.2)
        raise StackError(f"{name} did not become ready within {_START_DEADLINE:.0f}s; see {log}")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


async def _wait_for_metadata(bootstrap: str, deadline: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - only the stack needs it

    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
        except Exception as exc:  # the broker is still starting
            last = exc
            await asyncio.sleep(0.3)
        else:
            return
        finally:
            await admin.close()
    raise StackError(f"kafka on {bootstrap} did not answer a metadata request: {last}")


_SERVER_PROPERTIES = """\
# Generated by `paynotify stack`: a single KRaft node that is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
"""

_LOG4J = """\
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=FILE
appender.file.type=File
appender.file.name=FILE
appender.file.fileName={log}
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.apache.name=org.apache.kafka
logger.apache.level=WARN
"""
