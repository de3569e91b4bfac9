"""Run paynotify's own processes (sandbox, ingress, workers, sweeper) as children, on loopback.

The one launcher used by `make run`'s demo, the end-to-end tests and the benchmarks: each process
is a real `python -m ...` with the same environment variables as in production, its log kept in a
file under the state directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devtools.stack.local import free_port

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path


def wait_for_http(url: str, deadline: float = 30.0, process: ServiceProcess | None = None) -> None:
    """Poll `url` until it answers 200, the deadline passes, or `process` died."""
    end = time.monotonic() + deadline
    last = "no answer"
    while time.monotonic() < end:
        if process is not None and not process.alive:
            raise RuntimeError(f"{process.name} exited while starting:\n{process.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - loopback URL
                if answer.status == 200:
                    return
                last = f"HTTP {answer.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {deadline}s ({last})")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class ServiceProcess:
    """One child process with its own log file."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_start: int = 0  # where this run's output begins in a log shared with earlier runs

    def start(self) -> ServiceProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log_start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait: the graceful path (drain, commit, flush)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL: no drain, no commit, no flush."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def output(self) -> str:
        """Everything this run of the process wrote (a restarted process appends to its log)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(self.log_start)
            return handle.read().decode(errors="replace")


@dataclass
class Pipeline:
    """The project's processes around one Kafka and one Redis."""

    state_dir: Path
    env: dict[str, str]  # KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, PAYNOTIFY_MERCHANTS_FILE, ...
    sandbox_port: int = field(default_factory=free_port)
    ingress_port: int = field(default_factory=free_port)
    processes: list[ServiceProcess] = field(default_factory=list)
    # Each started process's /metrics (workers and sweepers get a listener of their own).
    metrics: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {"PAYNOTIFY_PLATFORM_URL": self.sandbox_url + "/", **self.env}

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def notify_url(self) -> str:
        return f"{self.ingress_url}/notify"

    def _spawn(self, name: str, argv: Sequence[str], **extra_env: str) -> ServiceProcess:
        process = ServiceProcess(
            name, argv, {**self.env, **extra_env}, self.state_dir / "logs" / f"{name}.log"
        ).start()
        self.processes.append(process)
        return process

    def start_sandbox(self, *extra: str) -> ServiceProcess:
        process = self._spawn(
            "sandbox",
            ["-m", "shared.cli", "sandbox", "--port", str(self.sandbox_port), *extra],
        )
        wait_for_http(f"{self.sandbox_url}/_sandbox/health", process=process)
        return process

    def start_ingress(self, processes: int = 1) -> ServiceProcess:
        """The ingress on `ingress_port`; `processes` > 1: `--processes N` on that one port."""
        argv = ["-m", "ingress", "--port", str(self.ingress_port)]
        if processes > 1:
            argv += ["--processes", str(processes)]
        process = self._spawn("ingress", argv)
        self.metrics["ingress"] = f"{self.ingress_url}/metrics"
        wait_for_http(f"{self.ingress_url}/readyz", process=process)
        return process

    def start_worker(self, index: int = 0, **extra_env: str) -> ServiceProcess:
        return self._with_metrics(f"worker-{index}", ["-m", "workers"], extra_env)

    def start_sweeper(self, index: int = 0) -> ServiceProcess:
        return self._with_metrics(f"sweeper-{index}", ["-m", "shared.cli", "sweeper"], {})

    def _with_metrics(
        self, name: str, argv: Sequence[str], extra_env: dict[str, str]
    ) -> ServiceProcess:
        """A worker or sweeper with its /healthz, /readyz and /metrics on a port of its own."""
        port = free_port()
        self.metrics[name] = f"http://127.0.0.1:{port}/metrics"
        return self._spawn(name, argv, **{"PAYNOTIFY_METRICS_PORT": str(port), **extra_env})

    def ensure_topics(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", "topics", "ensure"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"topics ensure failed:\n{result.stdout}{result.stderr}")

    def stop_all(self) -> None:
        # Reverse order: the ingress and sweeper stop producing before the workers drain.
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
