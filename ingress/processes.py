"""`paynotify ingress --processes N`: N ingress processes serving one port, for a machine's cores.

Each child is a whole ingress (`python -m ingress`: its own event loop, Kafka producer, counters
and Redis client) that listens on the port with SO_REUSEPORT; the kernel spreads new connections
over the children (Linux 3.9+; on macOS every child serves but the kernel does not balance). The
parent serves nothing: it holds the port, starts the children, forwards signals and waits.

- The port: the parent binds (host, port) with SO_REUSEPORT before starting any child, without
  listening (so it takes no connection). `--port 0` thus names one port for all the children, and
  no socket without SO_REUSEPORT can take the port while they run.
- SIGTERM or SIGINT: sent on as SIGTERM to every child, which shuts down gracefully (in-flight
  requests finished, the producer flushed: `ingress.__main__`). The parent waits at most
  `stop_bound(settings)`, then SIGKILLs what is left; it exits 0, or 1 if it had to kill.
- SIGHUP: sent on (each child reads the merchants file again).
- A child that exits on its own (a crash, kill -9, OOM): the parent stops the others as above and
  exits non-zero (the child's exit code, else 1), so the orchestrator restarts the whole ingress.
  Restarting children here was considered and left out: a process that looks alive while one of
  its children crash-loops hides the fault from the orchestrator's restart count and alerts.
- A parent that dies without stopping them (kill -9): each child notices within a second that
  its parent changed and shuts down gracefully on its own.
- Operations paths: with `--admin-port A`, child i serves its own /healthz, /readyz and /metrics
  on A + i (scrape each; the counters are per process). Without it they are on the public port,
  where a request reaches whichever child the kernel picked: /metrics then shows one child's
  counters, so use --admin-port with --processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from shared.logs import BoundLogger
    from shared.settings import Settings

_KAFKA_STOP_BOUND = 30.0  # as ingress.app's: a child's producer flush is bounded by this
_EXIT_KILLED = 1


def stop_bound(settings: Settings) -> float:
    """How long a child may take to stop: in-flight requests (ack deadline + 5 s, the server's
    shutdown timeout), the producer's flush, and a few seconds of slack."""
    return settings.kafka_ack_timeout + 5.0 + _KAFKA_STOP_BOUND + 5.0


def hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT and not listening: it fixes the port
    (0: one the kernel picks) for the children, and takes no connection itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def child_argv(args: argparse.Namespace, port: int, index: int) -> list[str]:
    """The command line of child `index`: the same ingress, on the held port."""
    argv = [sys.executable, "-m", "ingress", "--host", args.host, "--port", str(port)]
    if args.admin_port is not None:
        argv += ["--admin-port", str(args.admin_port + index)]
    return [*argv, "--child", str(index), "--parent-pid", str(os.getpid())]


async def supervise(
    args: argparse.Namespace, settings: Settings, log: BoundLogger, processes: int
) -> int:
    """Run `processes` children until a signal or one of them exits; the exit code (module doc)."""
    held = hold_port(args.host, args.port)
    try:
        port = held.getsockname()[1]
        return await _run_children(args, port, settings, log, processes)
    finally:
        held.close()


async def _run_children(
    args: argparse.Namespace, port: int, settings: Settings, log: BoundLogger, processes: int
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    children: list[asyncio.subprocess.Process] = []

    def forward(signum: int) -> None:
        for child in children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, forward, signal.SIGHUP)
    try:
        for index in range(processes):
            child = await asyncio.create_subprocess_exec(
                *child_argv(args, port, index), stdin=asyncio.subprocess.DEVNULL
            )
            children.append(child)
        log.info(
            "ingress_processes_started",
            port=port,
            processes=processes,
            pids=[child.pid for child in children],
        )
        exits = {asyncio.ensure_future(child.wait()): child for child in children}
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if stopping not in done:  # a child exited on its own
            stopping.cancel()
            first = next(exits[task] for task in done if task in exits)
            code = first.returncode if first.returncode and first.returncode > 0 else 1
            log.error(
                "ingress_process_exited", pid=first.pid, code=first.returncode, stopping_all=True
            )
        return await _stop_children(children, settings, log) or code
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        for child in children:  # only if something above failed: never leave one behind
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()


async def _stop_children(
    children: list[asyncio.subprocess.Process], settings: Settings, log: BoundLogger
) -> int:
    """SIGTERM every child still running, wait for them (bounded), SIGKILL the rest. 0 when
    all stopped on their own, else 1."""
    running = [child for child in children if child.returncode is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
    bound = stop_bound(settings)
    waits = [asyncio.ensure_future(child.wait()) for child in running]
    if waits:
        await asyncio.wait(waits, timeout=bound)
    killed = [child for child in running if child.returncode is None]
    for child in killed:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
    if killed:
        log.error("ingress_processes_killed", pids=[child.pid for child in killed], bound=bound)
        return _EXIT_KILLED
    log.info("ingress_processes_stopped", processes=len(children))
    return 0


async def watch_parent(parent: int, stop: asyncio.Event, every: float = 1.0) -> None:
    """Set `stop` once this process's parent is no longer `parent` (it died: we were adopted)."""
    while not stop.is_set():
        if os.getppid() != parent:
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()
