"""A local Redis Cluster for the stack: `primaries` plain `redis-server` processes with
`cluster-enabled yes` on loopback (and `replicas` replicas of each), slots split evenly.

The nodes are formed from Python (CLUSTER ADDSLOTSRANGE, MEET, REPLICATE), so only
`redis-server` is needed, not `redis-cli`. Each node keeps its `nodes.conf` in its own directory
under the stack's state directory, with its client and bus ports, so `stack down` then `stack up`
brings the same cluster back with its data. Processes are started, checked and stopped by the
stack's own process handling (`LocalStack`), as its single Redis is.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from devtools.stack.local import LocalStack, StackError, free_port

SLOTS = 16384
MAX_PRIMARIES = 9
# Short, so a primary killed by a test fails over within seconds (the default is 15 s).
NODE_TIMEOUT_MS = 2000
_FORM_DEADLINE = 60.0


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The slots each primary serves, split as evenly as they go (inclusive ranges)."""
    bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


def cluster_url(ports: list[int]) -> str:
    """The `REDIS_URL` of a cluster: every node as a seed (shared.adapters.redis_client)."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)


@dataclass
class LocalRedisCluster:
    """The nodes of one cluster under `stack.state_dir / "redis-cluster"`; node `i` is the
    process named `redis-cluster-<i>` (node 1 to `primaries` are the first primaries)."""

    stack: LocalStack
    primaries: int = 3
    replicas: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.primaries <= MAX_PRIMARIES or not 0 <= self.replicas <= 2:
            raise StackError(f"a local cluster has 1 to {MAX_PRIMARIES} primaries, 0 to 2 replicas")

    @property
    def home(self) -> Path:
        return self.stack.state_dir / "redis-cluster"

    @property
    def nodes(self) -> range:
        return range(1, self.primaries * (1 + self.replicas) + 1)

    def name(self, node: int) -> str:
        return f"redis-cluster-{node}"

    def port(self, node: int) -> int:
        return self._stored(node, "port")

    @property
    def ports(self) -> list[int]:
        return [self.port(node) for node in self.nodes]

    @property
    def url(self) -> str:
        return cluster_url(self.ports)

    def _stored(self, node: int, name: str) -> int:
        """A port chosen free once and kept, so a restarted node is where the others expect."""
        stored = self.home / str(node) / name
        if stored.exists():
            return int(stored.read_text())
        port = free_port()
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(str(port))
        return port

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def stored(cls, stack: LocalStack) -> LocalRedisCluster | None:
        """The cluster an earlier `up` left in the stack's state directory, if any."""
        shape = stack.state_dir / "redis-cluster" / "shape"
        if not shape.exists():
            return None
        primaries, _, replicas = shape.read_text().partition(" ")
        return cls(stack, int(primaries), int(replicas or 0))

    def up(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "shape").write_text(f"{self.primaries} {self.replicas}")
        for node in self.nodes:
            self.start_node(node)
        if not self._formed():
            self._form()
        self.wait_ok()

    def down(self) -> None:
        self.stack._stop_all([self.name(node) for node in self.nodes])  # noqa: SLF001 - the stack's process handling

    def alive(self) -> bool:
        return all(self.stack._alive(self.name(node)) for node in self.nodes)  # noqa: SLF001

    def start_node(self, node: int) -> None:
        name = self.name(node)
        if self.stack._alive(name):  # noqa: SLF001
            return
        server = _redis_server()
        home = self.home / str(node)
        home.mkdir(parents=True, exist_ok=True)
        self.stack._spawn(  # noqa: SLF001
            name,
            [
                server, "--bind", "127.0.0.1", "--port", str(self.port(node)),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(self._stored(node, "bus-port")),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--dir", str(home), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--daemonize", "no", "--logfile", str(home / "redis.log"),
            ],
            home / "stdout.log",
        )  # fmt: skip
        self.stack._wait(lambda: self._ping(node), name, home / "redis.log")  # noqa: SLF001

    def kill_node(self, node: int) -> None:
        """`kill -9` one node (a primary, for a failover)."""
        self.stack._kill(self.name(node))  # noqa: SLF001

    def pause_node(self, node: int) -> None:
        """SIGSTOP one node: it answers nothing (a replica then acknowledges no writes) until
        `resume_node`. For the failover test (docs/scaling.md, Failover semantics)."""
        os.kill(self._pid(node), signal.SIGSTOP)

    def resume_node(self, node: int) -> None:
        os.kill(self._pid(node), signal.SIGCONT)

    def first_replica(self, primary: int) -> int:
        """The node formed as `primary`'s first replica (before any failover)."""
        if not self.replicas or not 1 <= primary <= self.primaries:
            raise StackError(f"node {primary} has no replica of its own")
        return primary + self.primaries

    def role(self, node: int) -> str:
        """`master` or `slave`, as the node says (ROLE); `down` when it does not answer."""
        try:
            with self.client(node) as client:
                answer: list[bytes] = client.execute_command("ROLE")
        except RedisError:
            return "down"
        return answer[0].decode()

    def client(self, node: int) -> Redis:
        return Redis(host="127.0.0.1", port=self.port(node), socket_timeout=5.0)

    def wait_ok(self, deadline: float = _FORM_DEADLINE) -> None:
        """Until every running node says `cluster_state:ok` and knows every other node."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if all(self._ok(node) for node in self.nodes if self.stack._alive(self.name(node))):  # noqa: SLF001
                return
            time.sleep(0.2)
        raise StackError(f"the Redis cluster did not become ready within {deadline:.0f}s")

    # -- internals -------------------------------------------------------------------------

    def _pid(self, node: int) -> int:
        pidfile = self.stack._pidfile(self.name(node))  # noqa: SLF001 - the stack's process handling
        if not self.stack._alive(self.name(node)):  # noqa: SLF001
            raise StackError(f"{self.name(node)} is not running")
        return int(pidfile.read_text())

    def _ping(self, node: int) -> bool:
        try:
            with self.client(node) as client:
                return bool(client.ping())
        except RedisError:
            return False

    def _ok(self, node: int) -> bool:
        try:
            with self.client(node) as client:
                info = _command(client, "CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
        except RedisError:
            return False
        fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        return (
            fields.get("cluster_state") == "ok"
            and int(fields.get("cluster_known_nodes", 0)) == len(self.nodes)
            and int(fields.get("cluster_slots_assigned", 0)) == SLOTS
        )

    def _formed(self) -> bool:
        """Whether the nodes already hold a cluster (from an earlier `up`)."""
        with self.client(1) as client:
            info = _command(client, "CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_slots_assigned:0" not in text

    def _form(self) -> None:
        clients = {node: self.client(node) for node in self.nodes}
        try:
            for node, (first, last) in zip(self.nodes, slot_ranges(self.primaries), strict=False):
                _command(clients[node], "CLUSTER", "ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                _command(
                    clients[node],
                    "CLUSTER",
                    "MEET",
                    "127.0.0.1",
                    self.port(1),
                    self._stored(1, "bus-port"),
                )
            self._wait_known(clients)
            for node in self.nodes[self.primaries :]:
                primary = (node - 1) % self.primaries + 1
                primary_id = _command(clients[primary], "CLUSTER", "MYID")
                _command(clients[node], "CLUSTER", "REPLICATE", _text(primary_id))
        finally:
            for client in clients.values():
                client.close()

    def _wait_known(self, clients: dict[int, Redis]) -> None:
        """A replica can only follow a primary it has heard of through the bus."""
        end = time.monotonic() + _FORM_DEADLINE
        while time.monotonic() < end:
            if all(
                _text(_command(client, "CLUSTER", "INFO")).count(
                    f"cluster_known_nodes:{len(self.nodes)}"
                )
                for client in clients.values()
            ):
                return
            time.sleep(0.1)
        raise StackError("the Redis cluster's nodes did not meet")


def _command(client: Redis, *args: str | int) -> bytes | str:
    """A raw command (CLUSTER ... has no typed method in redis-py's sync client)."""
    answer: bytes | str = client.execute_command(*args)  # type: ignore[no-untyped-call]
    return answer


def _redis_server() -> str:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).exists():
        raise StackError("redis-server is not installed (Debian: apt-get install redis-server)")
    return server


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
