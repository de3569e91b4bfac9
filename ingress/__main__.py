"""`paynotify ingress` / `python -m ingress`: serve POST /notify until SIGTERM or SIGINT.

On a signal the server stops accepting, finishes in-flight requests (bounded by the Kafka ack
deadline), then flushes and closes the producer.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from aiohttp import web
from aiokafka.errors import KafkaError

from ingress.app import build_app
from shared.logs import configure_logging, get_logger
from shared.merchants import MerchantsFileError, load_merchants
from shared.settings import Settings, SettingsError

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_CONFIG = 2
EXIT_KAFKA = 3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ingress", description="Serve POST /notify for the payment platform."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
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
        merchants = load_merchants(settings.require_merchants_file())
    except (SettingsError, MerchantsFileError):
        log.exception("ingress_config_invalid")
        return EXIT_CONFIG
    log.info("ingress_starting", host=args.host, port=args.port, merchants=len(merchants))
    try:
        web.run_app(
            build_app(settings, merchants),
            host=args.host,
            port=args.port,
            access_log=None,  # one line per request would cost more than the request
            print=None,
            # In-flight requests wait at most for their Kafka deadline; a little slack on top.
            shutdown_timeout=settings.kafka_ack_timeout + 5.0,
        )
    except KafkaError:
        log.exception("ingress_kafka_unavailable")
        return EXIT_KAFKA
    return 0


if __name__ == "__main__":
    sys.exit(main())
