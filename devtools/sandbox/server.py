"""`paynotify sandbox`: a real aiohttp server that behaves like the payment platform as documented.

`build_app` wires the pieces with an injected clock and random source; the delivery engine's
`ClientSession` lives in the app's cleanup context. See docs/sandbox.md for the control API.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from devtools.sandbox.core import SandboxPlatform
from devtools.sandbox.delivery import Deliverer
from devtools.sandbox.model import NEVER, SandboxConfig
from devtools.sandbox.routes import (
    CLOCK_KEY,
    DELIVERER_KEY,
    FREEZE_BATCHES_KEY,
    PLATFORM_KEY,
    add_routes,
    control_errors,
)
from shared import bootstrap
from shared.clock import SystemClock
from shared.event_loop import settle_collector
from shared.logs import configure_logging, get_logger
from shared.merchants import MerchantsFileError, load_merchants
from shared.settings import Settings, SettingsError

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Mapping

    from shared.clock import Clock
    from shared.merchants import Merchant

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # control API batches; platform forms have their own cap


def build_app(
    config: SandboxConfig,
    merchants: Mapping[str, Merchant],
    *,
    clock: Clock,
    rng: random.Random,
) -> web.Application:
    app = web.Application(middlewares=[control_errors], client_max_size=MAX_REQUEST_BYTES)
    platform = SandboxPlatform(config, merchants, clock=clock, rng=rng)
    deliverer = Deliverer(config, clock, platform)
    platform.attach(deliverer)
    app[PLATFORM_KEY] = platform
    app[DELIVERER_KEY] = deliverer
    app[CLOCK_KEY] = clock
    app.cleanup_ctx.append(_delivery_session)
    add_routes(app, config.pay_types)
    return app


async def _delivery_session(app: web.Application) -> AsyncIterator[None]:
    """One session for every notification; keep-alive connections, bounded by concurrency."""
    deliverer = app[DELIVERER_KEY]
    limit = app[PLATFORM_KEY].config.delivery_concurrency
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    async with aiohttp.ClientSession(connector=connector) as session:
        deliverer.open(session)
        yield
        await deliverer.cancel_all()


def config_from(args: argparse.Namespace, settings: Settings) -> SandboxConfig:
    time_scale = getattr(args, "time_scale", None)
    pay_after = getattr(args, "pay_after", None)
    return SandboxConfig(
        pay_types=bootstrap.pay_types(settings),
        time_scale=settings.time_scale if time_scale is None else time_scale,
        pay_after=NEVER if pay_after is None else pay_after,
        answer_sign_includes_envelope=settings.answer_sign_includes_envelope,
    )


def main(args: argparse.Namespace) -> int:
    """Run the sandbox until interrupted; exit 2 on a configuration error."""
    try:
        settings = Settings.from_env()
        configured = getattr(args, "config", None)
        path = Path(configured) if configured else settings.require_merchants_file()
        merchants = load_merchants(path)
        config = config_from(args, settings)
    except (SettingsError, MerchantsFileError, ValueError) as exc:
        sys.stderr.write(f"sandbox: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    seed = getattr(args, "seed", None)
    app = build_app(config, merchants, clock=SystemClock(), rng=random.Random(seed))
    get_logger("sandbox").info(
        "sandbox_starting", host=args.host, port=args.port, merchants=len(merchants),
        time_scale=config.time_scale,
    )  # fmt: skip
    settle_collector()  # as every paynotify process does: its pauses would be the platform's
    app[FREEZE_BATCHES_KEY] = True
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0
