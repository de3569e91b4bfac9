"""`paynotify ingress` / `python -m ingress`: serve POST /notify until SIGTERM or SIGINT.

On a signal the server stops accepting, finishes in-flight requests (bounded by the Kafka ack
deadline), then flushes and closes the producer. A broker that is away is waited out (503 and
`/readyz` false meanwhile), never a reason to exit.

At most `PAYNOTIFY_INGRESS_MAX_CONNECTIONS` connections are served at once: one more is answered
`503 fail` and closed at once, so a flood of idle or slow connections cannot exhaust the process's
file descriptors; idle keep-alive connections close after `KEEPALIVE_TIMEOUT` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

from aiohttp import web

from ingress.app import INGRESS, SERVER_HEADER, build_admin_app, build_app
from ingress.processes import supervise, watch_parent
from shared.cli import add_process_options
from shared.event_loop import EventLoopUnavailableError, run
from shared.logs import configure_logging, get_logger
from shared.merchants import LiveMerchants, MerchantsFileError
from shared.settings import Settings, SettingsError
from shared.tracing import Spans, TracingUnavailableError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shared.logs import BoundLogger

EXIT_CONFIG = 2
KEEPALIVE_TIMEOUT = 15.0  # seconds an idle connection is kept open for another request
_OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\nServer: " + SERVER_HEADER.encode("ascii") + b"\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nfail"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ingress", description="Serve POST /notify for the payment platform."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--admin-port",
        type=int,
        help="serve /healthz, /readyz and /metrics on this port (same host) instead of --port, "
        "so the public port serves the notification paths only",
    )
    add_process_options(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace | None = None) -> int:
    args = parse_args() if args is None else args
    log = get_logger("ingress")
    try:
        settings = Settings.from_env()
    except SettingsError:
        configure_logging()
        log.exception("ingress_config_invalid")
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    try:
        merchants = LiveMerchants(settings.require_merchants_file())
    except (SettingsError, MerchantsFileError):
        log.exception("ingress_config_invalid")
        return EXIT_CONFIG
    admin_port = getattr(args, "admin_port", None)
    processes = getattr(args, "processes", 1)
    if processes > 1:
        log.info("ingress_starting", host=args.host, port=args.port, processes=processes)
        return asyncio.run(supervise(args, settings, log, processes))  # the parent: mostly asleep
    child = getattr(args, "child", None)
    if child is not None:
        log = log.bind(process=child)
    log.info(
        "ingress_starting",
        host=args.host,
        port=args.port,
        admin_port=admin_port,
        merchants=len(merchants),
    )
    try:
        spans = Spans.from_env(os.environ, "ingress")
    except TracingUnavailableError:
        log.exception("ingress_config_invalid")
        return EXIT_CONFIG
    app = build_app(settings, merchants, operations=admin_port is None, spans=spans)
    served = serve(
        app,
        args.host,
        args.port,
        settings,
        log,
        admin_port=admin_port,
        reuse_port=child is not None,
        parent_pid=getattr(args, "parent_pid", None),
    )
    try:
        run(served, settings.event_loop)
    except EventLoopUnavailableError:
        log.exception("ingress_config_invalid")
        return EXIT_CONFIG
    return 0


class _Overloaded(asyncio.Protocol):
    """One connection too many: answered 503 (the platform retries) and closed unread."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(_OVERLOADED)
        transport.close()


async def serve(
    app: web.Application,
    host: str,
    port: int,
    settings: Settings,
    log: BoundLogger,
    *,
    stop: asyncio.Event | None = None,
    admin_port: int | None = None,
    reuse_port: bool = False,
    parent_pid: int | None = None,
) -> None:
    """Serve `app` until `stop` is set (by default: SIGTERM or SIGINT), then shut down gracefully
    (see the module's doc); with `admin_port`, its operations app (`build_admin_app`) there.
    `reuse_port` and `parent_pid`: a child of `--processes` (ingress.processes), which shares the
    port and stops too when its parent is gone."""
    runner = web.AppRunner(
        app,
        access_log=None,  # one line per request would cost more than the request
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        # In-flight requests wait at most for their Kafka deadline; a little slack on top.
        shutdown_timeout=settings.kafka_ack_timeout + 5.0,
    )
    await runner.setup()  # starts the Kafka clients (waited out in the background if away)
    server = runner.server
    if server is None:  # setup() always makes one; typed Optional for before it ran
        raise RuntimeError("the runner has no server after setup")
    counters = app[INGRESS].counters
    limit = settings.ingress_max_connections

    def protocol() -> asyncio.BaseProtocol:
        if len(server.connections) >= limit:
            counters.connections_refused += 1
            return _Overloaded()
        return server()

    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    orphaned = None if parent_pid is None else asyncio.ensure_future(watch_parent(parent_pid, stop))
    admin: web.AppRunner | None = None
    try:
        if admin_port is not None:
            admin = web.AppRunner(build_admin_app(app), access_log=None, shutdown_timeout=2.0)
            await admin.setup()
            await web.TCPSite(admin, host, admin_port, reuse_address=True).start()
        listener = await loop.create_server(
            protocol, host, port, reuse_address=True, reuse_port=reuse_port or None
        )
        log.info(
            "ingress_listening", host=host, port=port, admin_port=admin_port, max_connections=limit
        )
        await stop.wait()
        log.info("ingress_stopping")
        listener.close()  # no new connections; the open ones finish below
    finally:
        if orphaned is not None:
            orphaned.cancel()
        await runner.cleanup()
        if admin is not None:
            await admin.cleanup()


if __name__ == "__main__":
    sys.exit(main())
