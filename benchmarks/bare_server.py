"""The ingress's baselines: an aiohttp server whose POST /notify answers `success` at once, and
with `--kafka` the same server publishing each body to Kafka first.

Same framework, same process model (one process, `web.run_app`, no access log) as the ingress,
without parsing, verifying or publishing: what is left is aiohttp's own cost per request. With
`--kafka BOOTSTRAP --topic T` the handler also sends the body through the ingress's producer
(`shared.adapters.kafka.start_producer`: acks=all, idempotent, linger 2 ms, the same
partitioner) and answers only after the broker's ack, as the ingress does, with no parsing or
signature check: the floor that aiohttp plus aiokafka set for any ingress on this machine.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from aiohttp import web

from shared.adapters.kafka import start_producer
from shared.adapters.renewing_producer import RenewingProducer
from shared.event_loop import settle_collector
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

SUCCESS = b"success"
KEY_BYTES = 33  # an order key's length (mch_id:mch_order), taken from the body's signed end


async def notify(_: web.Request) -> web.Response:
    return web.Response(body=SUCCESS, content_type="text/plain")


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(kafka: str | None = None, topic: str | None = None) -> web.Application:
    app = web.Application()
    if kafka is None:
        app.router.add_post("/notify", notify)
    else:
        if topic is None:
            raise ValueError("--kafka needs --topic")
        app.cleanup_ctx.append(_producer(kafka))

        async def publish(request: web.Request) -> web.Response:
            body = await request.read()
            # The signature's hex digits end every body: keys spread over the partitions.
            await request.app[PRODUCER].send_and_wait(topic, body, key=body[-KEY_BYTES:])
            return web.Response(body=SUCCESS, content_type="text/plain")

        app.router.add_post("/notify", publish)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    return app


PRODUCER = web.AppKey("producer", RenewingProducer)


def _producer(bootstrap: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        producer = await start_producer(Settings(kafka_bootstrap_servers=bootstrap))
        app[PRODUCER] = producer
        yield
        await producer.stop()

    return context


def main() -> int:
    parser = argparse.ArgumentParser(description="bare aiohttp server answering `success`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kafka", help="bootstrap servers: publish each body before answering")
    parser.add_argument("--topic", help="the topic to publish to (with --kafka)")
    args = parser.parse_args()
    settle_collector()  # the ingress's collector settings (shared.event_loop.run), for a fair base
    web.run_app(
        build_app(args.kafka, args.topic),
        host=args.host, port=args.port, access_log=None, print=None,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
