"""A Redis primary and one replica (`--replicaof`) on loopback, for the tests and the benchmark of
`PAYNOTIFY_REDIS_WAIT_REPLICAS` (docs/scaling.md, Failover semantics).

Both are plain `redis-server` processes of this object's own, with the stack's durability
(`appendfsync always`), in a directory it is given; `close` stops both, whatever state they are
in. The replica can be paused (SIGSTOP) so that WAIT on the primary times out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from redis import Redis
from redis.exceptions import RedisError

from devtools.stack.local import StackError, free_port
from devtools.stack.redis_cluster import _redis_server

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

_START_DEADLINE = 30.0


@dataclass
class LocalRedisPair:
    home: Path
    primary_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def primary_url(self) -> str:
        return f"redis://127.0.0.1:{self.primary_port}/0"

    def __enter__(self) -> Self:
        try:
            self._start("primary", self.primary_port)
            self._start("replica", self.replica_port, "--replicaof", "127.0.0.1",
                        str(self.primary_port))  # fmt: skip
            self.wait_synced()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self, name: str, port: int, *extra: str) -> None:
        home = self.home / name
        home.mkdir(parents=True, exist_ok=True)
        argv = [
            _redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(home),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--daemonize", "no", "--logfile", str(home / "redis.log"), *extra,
        ]  # fmt: skip
        self._processes[name] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._until(lambda: self._answers(port), f"redis {name} on {port}")

    def wait_synced(self, deadline: float = _START_DEADLINE) -> None:
        """Until the primary sees its replica online (WAIT counts only those)."""
        self._until(self._replica_online, "the replica's link", deadline)

    def pause_replica(self) -> None:
        """SIGSTOP the replica: it takes nothing, acknowledges nothing, until resumed."""
        os.kill(self._processes["replica"].pid, signal.SIGSTOP)

    def resume_replica(self) -> None:
        os.kill(self._processes["replica"].pid, signal.SIGCONT)

    def close(self) -> None:
        for process in self._processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            process.wait(timeout=10)
        self._processes.clear()

    def _replica_online(self) -> bool:
        try:
            with Redis(host="127.0.0.1", port=self.primary_port, socket_timeout=2.0) as client:
                info = client.info("replication")
        except RedisError:
            return False
        return int(info.get("connected_slaves", 0)) >= 1 and "online" in str(info.get("slave0"))

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            with Redis(host="127.0.0.1", port=port, socket_timeout=1.0) as client:
                return bool(client.ping())
        except RedisError:
            return False

    @staticmethod
    def _until(ready: Callable[[], bool], what: str, deadline: float = _START_DEADLINE) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if ready():
                return
            time.sleep(0.05)
        raise StackError(f"{what} was not ready within {deadline:.0f}s")
