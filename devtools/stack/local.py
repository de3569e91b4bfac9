"""The local stack: real Apache Kafka (KRaft) and Redis, as plain processes.

Kafka is one node by default; `brokers=3` runs a three-node cluster on loopback (each node both
broker and controller, so the controller quorum survives one node's loss) with replication
factor 3 and `min.insync.replicas=2` for the internal topics and as the brokers' defaults.

No Docker engine is needed. Kafka's jars come from Maven Central through `kafka-pom.xml` and are
cached outside the repo (`PAYNOTIFY_CACHE_DIR`, default `~/.cache/paynotify`); data, logs and pid
files live under one state directory. `up` is idempotent: a stack already answering is reused.

Redis runs with an append-only file fsynced before every reply (`appendfsync always`): an outcome
or an order record that a client was told is written survives `kill -9` of redis-server. With
`everysec`, a write Redis postpones while a slow background fsync runs is acknowledged before it
reaches the file, and is lost with the process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
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

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable

KAFKA_VERSION = "4.1.1"
_START_DEADLINE = 90.0
_PROGRAMS = {"kafka": {"java"}, "redis": {"redis-server"}}
MAX_BROKERS = 3
_STOP_DEADLINE = 30.0
# psutil derives start times from the boot time in whole seconds; a pid reused after the pid
# file was written still starts far later than this.
_CLOCK_SLACK = 2.0


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


def stored_brokers(state_dir: Path) -> int | None:
    """How many Kafka nodes the stack under `state_dir` was made with, if it was."""
    stored = state_dir / "kafka" / "brokers"
    return int(stored.read_text()) if stored.exists() else None


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
    pom = resources.files("devtools.stack").joinpath("kafka-pom.xml")
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
    brokers: int = 1  # Kafka nodes: 1, or 3 for a cluster (replication 3, min.insync.replicas 2)
    # Kept so a process started here is reaped here (and Python does not warn about it).
    _children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.brokers not in {1, MAX_BROKERS}:
            raise StackError(f"the local stack runs 1 or {MAX_BROKERS} Kafka brokers")

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.broker_ports)

    @property
    def replication(self) -> int:
        """The replication factor topics should get on this stack (PAYNOTIFY_TOPIC_REPLICATION)."""
        return self.brokers

    @property
    def nodes(self) -> range:
        """The Kafka node ids: 1, or 1-3."""
        return range(1, self.brokers + 1)

    @property
    def broker_ports(self) -> list[int]:
        """The client port of each node; node 1's is `kafka_port`, the others' are chosen free
        once and kept in the state directory."""
        return [self.kafka_port, *(self._stored_port(n, "port") for n in self.nodes[1:])]

    def node_name(self, node: int) -> str:
        """`kafka` for node 1 (as with one broker), `kafka-2`, `kafka-3` for the others."""
        return "kafka" if node == 1 else f"kafka-{node}"

    def node_of_port(self, port: int) -> int:
        return self.broker_ports.index(port) + 1

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def controller_port(self) -> int:
        return self._stored_port(1, "controller.port")

    def _stored_port(self, node: int, name: str) -> int:
        stored = self._node_home(node) / name
        if stored.exists():
            return int(stored.read_text())
        port = free_port()
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(str(port))
        return port

    def _node_home(self, node: int) -> Path:
        return self.state_dir / self.node_name(node)

    def exports(self) -> str:
        lines = [
            f"export KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers}\n",
            f"export REDIS_URL={self.redis_url}\n",
        ]
        if self.brokers > 1:  # `paynotify topics ensure` then creates replicated topics
            lines.append(f"export PAYNOTIFY_TOPIC_REPLICATION={self.replication}\n")
        return "".join(lines)

    # -- lifecycle -------------------------------------------------------------------------

    def up(self) -> None:
        self.start_redis()
        self.start_kafka()

    def down(self) -> None:
        self.stop_kafka()
        self.stop_redis()

    def status(self) -> dict[str, bool]:
        kafka = all(
            self._alive(self.node_name(node)) and _port_open(port)
            for node, port in zip(self.nodes, self.broker_ports, strict=True)
        )
        return {"kafka": kafka, "redis": self._alive("redis") and _port_open(self.redis_port)}

    def start_kafka(self) -> None:
        """Start every node that is not running (all at once: a cluster's nodes need each other
        to form the controller quorum), then wait until the cluster answers with all of them."""
        self._check_broker_count()
        down = [node for node in self.nodes if not self._alive(self.node_name(node))]
        if not down:
            self._wait_for_kafka()
            _log(f"kafka already running on {self.bootstrap_servers}")
            return
        for node in down:
            self._spawn_node(node)
        self._wait_for_kafka()
        _log(f"kafka {self.kafka_version} up on {self.bootstrap_servers}")

    def start_kafka_node(self, node: int) -> None:
        """Start one node again (after `kill_kafka_node`) and wait until the cluster has it."""
        if not self._alive(self.node_name(node)):
            self._spawn_node(node)
        self._wait_for_kafka()

    def kill_kafka_node(self, node: int) -> None:
        """`kill -9` one node: no controlled shutdown, no flush."""
        self._kill(self.node_name(node))

    def kill_redis(self) -> None:
        """`kill -9` redis-server: what it acknowledged must be in its append-only file."""
        self._kill("redis")

    def _spawn_node(self, node: int) -> None:
        port = self.broker_ports[node - 1]
        if _port_open(port):
            raise StackError(f"port {port} is taken by something that is not our Kafka")
        libs = ensure_kafka_jars(self.kafka_version)
        home = self._node_home(node)
        data = home / "data"
        home.mkdir(parents=True, exist_ok=True)
        props = home / "server.properties"
        props.write_text(self._server_properties(data, node))
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
                 f"--cluster-id={self._cluster_id()}", "-c", str(props)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if formatted.returncode != 0:
                output = (formatted.stdout + formatted.stderr)[-2000:]
                raise StackError(f"kafka storage format failed:\n{output}")
        self._spawn(self.node_name(node), [*java, "kafka.Kafka", str(props)], home / "stdout.log")

    def _cluster_id(self) -> str:
        """One node: a fresh id. A cluster: one id for every node, kept to format them alike."""
        if self.brokers == 1:
            return kafka_cluster_id()
        stored = self.state_dir / "kafka" / "cluster.id"
        if not stored.exists():
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_text(kafka_cluster_id())
        return stored.read_text().strip()

    def _check_broker_count(self) -> None:
        """A state directory holds one shape of cluster: its data cannot change voters."""
        stored = self.state_dir / "kafka" / "brokers"
        data = self.state_dir / "kafka" / "data" / "meta.properties"
        if stored.exists():
            found = int(stored.read_text())
        elif data.exists():
            found = 1  # made before clusters existed: one node
        else:
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_text(str(self.brokers))
            return
        if found != self.brokers:
            raise StackError(
                f"{self.state_dir} holds a {found}-broker Kafka; use another --state-dir for "
                f"{self.brokers} (or remove that one)"
            )

    def stop_kafka(self) -> None:
        if self.brokers == 1:
            self._stop("kafka")
        else:  # all at once: stopped one by one, the last would wait for a lost quorum
            self._stop_all([self.node_name(node) for node in self.nodes])

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
                "--dir", str(home), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no", "--logfile", str(home / "redis.log"),
            ],
            home / "stdout.log",
        )  # fmt: skip
        self._wait(self._redis_ping, "redis", home / "redis.log")
        _log(f"redis up on {self.redis_url}")

    def stop_redis(self) -> None:
        self._stop("redis")

    # -- internals -------------------------------------------------------------------------

    def _server_properties(self, data: Path, node: int = 1) -> str:
        if self.brokers == 1:
            return _SERVER_PROPERTIES.format(
                port=self.kafka_port, controller=self.controller_port, data=data
            )
        voters = ",".join(
            f"{n}@127.0.0.1:{self._stored_port(n, 'controller.port')}" for n in self.nodes
        )
        return _CLUSTER_PROPERTIES.format(
            node=node,
            voters=voters,
            port=self.broker_ports[node - 1],
            controller=self._stored_port(node, "controller.port"),
            data=data,
            replication=self.replication,
            min_isr=self.replication - 1,
        )

    def _pidfile(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def _alive(self, name: str) -> bool:
        """Whether the pid file names our server, running: through psutil, so it holds on macOS
        as on Linux (reading /proc made every server look dead on macOS: `up` said "exited while
        starting" and `down` left Redis running)."""
        pidfile = self._pidfile(name)
        try:
            pid, written = int(pidfile.read_text()), pidfile.stat().st_mtime
        except (OSError, ValueError):
            return False
        try:
            process = psutil.Process(pid)
            # A zombie, or a pid reused by some other program (or started after the pid file was
            # written), is not our server.
            return (
                process.status() != psutil.STATUS_ZOMBIE
                and process.name() in _PROGRAMS[name.partition("-")[0]]
                and process.create_time() <= written + _CLOCK_SLACK
            )
        except psutil.NoSuchProcess:
            pidfile.unlink(missing_ok=True)
            return False
        except psutil.Error:  # AccessDenied: not a process of ours
            return False

    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the shell that ran `stack up`
            )  # fmt: skip
        self._children[name] = process
        self._pidfile(name).write_text(str(process.pid))

    def _stop(self, name: str) -> None:
        self._stop_all([name])

    def _stop_all(self, names: list[str]) -> None:
        """SIGTERM each, wait for all together, SIGKILL what is left after the deadline."""
        running = {}
        for name in names:
            if not self._alive(name):
                _log(f"{name} not running")
                self._forget(name)  # reaps it, if it was a child of ours that exited
                continue
            running[name] = int(self._pidfile(name).read_text())
            os.kill(running[name], signal.SIGTERM)
        deadline = time.monotonic() + _STOP_DEADLINE
        while time.monotonic() < deadline and any(self._alive(n) for n in running):
            for pid in running.values():
                _reap(pid)
            time.sleep(0.1)
        for name, pid in running.items():
            if self._alive(name):
                os.kill(pid, signal.SIGKILL)
                _reap(pid)
            self._forget(name)
            _log(f"{name} stopped")

    def _kill(self, name: str) -> None:
        """SIGKILL, and wait until the process is gone (its ports closed with it)."""
        if self._alive(name):
            pid = int(self._pidfile(name).read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            # Gone means reaped, not a zombie: a JVM's leader thread shows as one while its other
            # threads still exit and hold its sockets.
            deadline = time.monotonic() + _STOP_DEADLINE
            while time.monotonic() < deadline and _exists(pid):
                _reap(pid)
                time.sleep(0.02)
        self._forget(name)

    def _forget(self, name: str) -> None:
        self._pidfile(name).unlink(missing_ok=True)
        child = self._children.pop(name, None)
        if child is not None:
            child.wait(timeout=_STOP_DEADLINE)

    def _redis_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_for_kafka(self) -> None:
        for node, port in zip(self.nodes, self.broker_ports, strict=True):
            name = self.node_name(node)
            log = self._node_home(node) / "server.log"
            self._wait(functools.partial(_port_open, port), name, log)
        # An open port is not a working broker: wait until a client can list topics (and, for a
        # cluster, until every node has registered: replicated topics need them all).
        asyncio.run(_wait_for_metadata(self.bootstrap_servers, _START_DEADLINE, self.brokers))

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


def _exists(pid: int) -> bool:
    """Whether `pid` is still in the process table (a zombie is, until it is reaped)."""
    return psutil.pid_exists(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


async def _wait_for_metadata(bootstrap: str, deadline: float, brokers: int = 1) -> None:
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - only the stack needs it

    end = time.monotonic() + deadline
    last: Exception | str | None = None
    while time.monotonic() < end:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            if brokers > 1:
                found = len((await admin.describe_cluster())["brokers"])
                if found < brokers:
                    last = f"{found} of {brokers} brokers registered"
                    await asyncio.sleep(0.3)
                    continue
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
# No topic appears by accident: `paynotify topics ensure` creates them (issue 11).
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
"""

_CLUSTER_PROPERTIES = """\
# Generated by `paynotify stack --brokers 3`: node {node} of a KRaft cluster whose every node is
# both broker and controller (the quorum survives one node's loss).
process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
default.replication.factor={replication}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=10
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
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
