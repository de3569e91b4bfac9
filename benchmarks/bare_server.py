"""The ingress's baseline: an aiohttp server whose POST /notify answers `success` at once.

Same framework, same process model (one process, `web.run_app`, no access log) as the ingress,
without parsing, verifying or publishing: what is left is aiohttp's own cost per request.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

SUCCESS = b"success"


async def notify(_: web.Request) -> web.Response:
    return web.Response(body=SUCCESS, content_type="text/plain")


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/notify", notify)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description="bare aiohttp server answering `success`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
