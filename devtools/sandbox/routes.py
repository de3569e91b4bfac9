"""HTTP for the sandbox: the platform's endpoints and the JSON control API (docs/sandbox.md)."""

from __future__ import annotations

import gc
import html
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web

from devtools.sandbox.core import Reply, SandboxPlatform
from devtools.sandbox.delivery import Deliverer
from devtools.sandbox.model import (
    NEVER,
    Chaos,
    ControlError,
    Fault,
    Order,
    Scenario,
    amount_field,
    order_key,
    text_field,
)
from shared.protocol.models import encode_answer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from shared.clock import Clock
    from shared.protocol.catalog import PayTypeCatalog

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PLATFORM_KEY = web.AppKey("sandbox_platform", SandboxPlatform)
DELIVERER_KEY = web.AppKey("sandbox_deliverer", Deliverer)
CLOCK_KEY: web.AppKey[Clock] = web.AppKey("sandbox_clock")
# Set by the sandbox's own process (server.main): the collector is that process's to settle, not
# that of a test process serving the app in-process.
FREEZE_BATCHES_KEY = web.AppKey("sandbox_freeze_batches", bool)
CONTROL = "/_sandbox"
MAX_PAGE = 100_000
MAX_FORM_BYTES = 64 * 1024


# --- the platform's API ---------------------------------------------------------------------


def _parse_form(body: bytes) -> dict[str, str] | None:
    """A urlencoded UTF-8 form with unique names, or None."""
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    form = dict(pairs)
    return form if len(form) == len(pairs) else None


def _respond(reply: Reply) -> web.Response:
    if reply.http_status != 200:
        return web.Response(status=reply.http_status, text="sandbox: injected HTTP failure")
    if reply.body is not None:
        return web.Response(body=reply.body, content_type="application/json")
    return web.Response(body=encode_answer(reply.pairs), content_type="application/json")


def platform_handler(endpoint: str, pay_type: int | None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        platform = request.app[PLATFORM_KEY]
        if request.method != "POST":
            return _respond(platform.refuse(endpoint, 111))
        body = await request.read()
        form = _parse_form(body) if len(body) <= MAX_FORM_BYTES else None
        base_url = str(request.url.origin())
        reply = platform.handle(endpoint, form, pay_type=pay_type, base_url=base_url)
        if reply.delay > 0:
            await request.app[CLOCK_KEY].sleep(reply.delay)
        return _respond(reply)

    return handle


async def unknown_api(request: web.Request) -> web.StreamResponse:
    """113 系统API异常: a payment API that does not exist (5 and 21 have none)."""
    return _respond(request.app[PLATFORM_KEY].refuse("unknown", 113))


# --- the control API ----------------------------------------------------------------------------


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControlError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.read() or b"{}")
    except ValueError:
        raise ControlError("the body must be JSON") from None
    if not isinstance(data, dict):
        raise ControlError("the body must be a JSON object")
    return data


def _items(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """`{"orders": [...]}` for a batch, or the body itself for one."""
    if name not in data:
        return [data]
    items = data[name]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ControlError(f"{name} must be a list of objects")
    return items


def _int_query(request: web.Request, name: str, default: int, upper: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isascii() or not raw.isdigit() or int(raw) > upper:
        raise ControlError(f"{name} must be an integer from 0 to {upper}")
    return int(raw)


def _key_query(request: web.Request) -> tuple[str, str]:
    return order_key(request.query)


async def health(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    return web.json_response({"ok": True, "orders": len(platform.orders)})


async def get_config(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    config = platform.config
    return web.json_response(
        {
            "time_scale": config.time_scale,
            "pay_after": "never" if config.pay_after == NEVER else config.pay_after,
            "intervals": list(config.intervals),
            "delivery_timeout": config.delivery_timeout,
            "answer_sign_includes_envelope": config.answer_sign_includes_envelope,
            "paths": {str(p.code): p.path for p in config.pay_types if p.path},
            "defaults": platform.defaults.to_json(),
            "chaos": _chaos_json(platform.chaos),
            "faults_queued": len(platform.faults),
        }
    )


async def put_defaults(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    platform.defaults = Scenario.from_json(await _body(request))
    return web.json_response({"defaults": platform.defaults.to_json()})


async def post_scenario(request: web.Request) -> web.Response:
    """A scenario for an order the client will create, or for an existing (unpaid) order."""
    platform = request.app[PLATFORM_KEY]
    data = await _body(request)
    key = order_key(data)
    scenario = Scenario.from_json(data, extra=frozenset({"mch_id", "mch_order"}))
    order = platform.orders.get(key)
    if order is None:
        platform.scenarios[key] = scenario
        return web.json_response(
            {"scenario": scenario.to_json(), "applied": "on_create"}, status=201
        )
    platform.orders[key] = replace(order, scenario=scenario)
    return web.json_response({"scenario": scenario.to_json(), "applied": "existing"})


def _new_order(
    platform: SandboxPlatform, data: Mapping[str, Any], pay_types: PayTypeCatalog, now: int
) -> Order:
    key = order_key(data)
    allowed = {"mch_id", "mch_order", "amt", "pay_type", "notify_url", "call", "scenario"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise ControlError(f"unknown fields: {', '.join(extra)}")
    amt = amount_field(data, "amt")
    if amt is None:
        raise ControlError("amt is required")
    pay_type = data.get("pay_type", 10)
    if isinstance(pay_type, bool) or not isinstance(pay_type, int) or pay_type not in pay_types:
        raise ControlError("pay_type must be a documented pay type")
    notify_url = text_field(data, "notify_url", 255)
    if not notify_url.startswith(("http://", "https://")):
        raise ControlError("notify_url must be an http(s) URL")
    call = text_field(data, "call", 32) if data.get("call") is not None else None
    scenario_data = data.get("scenario")
    if scenario_data is not None and not isinstance(scenario_data, dict):
        raise ControlError("scenario must be an object")
    scenario = (
        Scenario.from_json(scenario_data)
        if scenario_data is not None
        else platform.scenarios.pop(key, platform.defaults)
    )
    return Order(
        mch_id=key[0], mch_order=key[1], pay_type=pay_type, mch_amt=amt, notify_url=notify_url,
        call=call, created_at=now, scenario=scenario,
    )  # fmt: skip


async def post_orders(request: web.Request) -> web.Response:
    """Create orders directly (no signing): one object, or `{"orders": [...]}` for a batch."""
    platform = request.app[PLATFORM_KEY]
    data = await _body(request)
    now = int(request.app[CLOCK_KEY].time())
    items = _items(data, "orders")
    orders = [_new_order(platform, item, platform.config.pay_types, now) for item in items]
    created = [platform.add_order(order) for order in orders]
    if "orders" in data:
        _keep_out_of_collections(request.app)
        return web.json_response({"created": len(created)}, status=201)
    return web.json_response({"order": created[0].to_json()}, status=201)


def _keep_out_of_collections(app: web.Application) -> None:
    """A batch of orders lives as long as the sandbox: frozen out of the garbage collector's
    later passes, which would otherwise scan every order each time (a benchmark's tens of
    thousands made the sandbox, and so every order query, stand still for 100-400 ms). Only in
    the sandbox's own process (`FREEZE_BATCHES_KEY`)."""
    if app.get(FREEZE_BATCHES_KEY, False):
        gc.freeze()


async def get_order(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    return web.json_response(platform.order_view(_key_query(request)))


async def post_pay(request: web.Request) -> web.Response:
    """Pay orders now: one `{"mch_id", "mch_order", "amt"?}`, or `{"orders": [...]}`."""
    platform = request.app[PLATFORM_KEY]
    data = await _body(request)
    items = _items(data, "orders")
    paid = [platform.pay(order_key(item), amount_field(item, "amt")) for item in items]
    if "orders" in data:
        _keep_out_of_collections(request.app)
        return web.json_response({"paid": len(paid)})
    return web.json_response({"order": paid[0].to_json()})


async def post_forge(request: web.Request) -> web.Response:
    """Deliver one forged notification for an order: `changes` applied, signed with a wrong key."""
    platform = request.app[PLATFORM_KEY]
    data = await _body(request)
    changes = data.get("changes", {})
    if not isinstance(changes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in changes.items()
    ):
        raise ControlError("changes must map field names to strings")
    url = data.get("notify_url")
    if url is not None and (not isinstance(url, str) or not url.startswith("http")):
        raise ControlError("notify_url must be an http(s) URL")
    notification = platform.forge(order_key(data), changes, url)
    return web.json_response({"notification": notification.id}, status=202)


async def get_deliveries(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    since = _int_query(request, "since", 0, 2**62)
    limit = _int_query(request, "limit", 1000, MAX_PAGE)
    key = _key_query(request) if "mch_id" in request.query else None
    found = platform.deliveries(since, limit, key)
    return web.json_response(
        {"deliveries": [a.to_json() for a in found], "next": found[-1].seq if found else since}
    )


async def get_calls(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    since = _int_query(request, "since", 0, 2**62)
    found = platform.calls(since, _int_query(request, "limit", 1000, MAX_PAGE))
    return web.json_response({"calls": found, "next": found[-1]["seq"] if found else since})


async def get_payments(request: web.Request) -> web.Response:
    """The ledger: every payment the platform took, in order, paged with `since=next`."""
    platform = request.app[PLATFORM_KEY]
    since = _int_query(request, "since", 0, 2**62)
    found = platform.ledger(since, _int_query(request, "limit", 1000, MAX_PAGE))
    return web.json_response({"payments": found, "next": found[-1]["seq"] if found else since})


async def get_stats(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    stats = platform.stats()
    stats["in_flight"] = request.app[DELIVERER_KEY].in_flight
    return web.json_response(stats)


async def post_faults(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    faults = [Fault.from_json(item) for item in _items(await _body(request), "faults")]
    platform.faults.extend(faults)
    return web.json_response({"queued": len(platform.faults)})


async def delete_faults(request: web.Request) -> web.Response:
    request.app[PLATFORM_KEY].faults.clear()
    return web.json_response({"queued": 0})


async def put_chaos(request: web.Request) -> web.Response:
    platform = request.app[PLATFORM_KEY]
    platform.chaos = Chaos.from_json(await _body(request))
    return web.json_response({"chaos": _chaos_json(platform.chaos)})


def _chaos_json(chaos: Chaos) -> dict[str, Any]:
    return {
        "query_latency": chaos.query_latency,
        "query_error_rate": chaos.query_error_rate,
        "query_error_code": chaos.query_error_code,
    }


async def post_reset(request: web.Request) -> web.Response:
    await request.app[DELIVERER_KEY].cancel_all()
    request.app[PLATFORM_KEY].reset()
    return web.json_response({"ok": True})


async def checkout(request: web.Request) -> web.Response:
    """Where the sandbox's pay URLs point: GET shows the order, POST pays it (a stand-in payer)."""
    platform = request.app[PLATFORM_KEY]
    key = _key_query(request)
    if request.method == "POST":
        platform.pay(key)
    view = platform.order_view(key)["order"]
    action = html.escape(str(request.rel_url), quote=True)
    page = (
        "<!doctype html><title>sandbox checkout</title>"
        f"<p>Order {html.escape(key[1])} of {html.escape(key[0])}: {view['mch_amt']} li, "
        f"{view['status']}.</p>"
        f'<form method="post" action="{action}"><button>Pay</button></form>'
    )
    return web.Response(text=page, content_type="text/html")


def add_routes(app: web.Application, pay_types: PayTypeCatalog) -> None:
    router = app.router
    for pay_type in pay_types:
        if pay_type.path is not None:
            router.add_route("*", f"/{pay_type.path}", platform_handler("create", pay_type.code))
    router.add_route("*", "/api/v1/quick_confirm.api", platform_handler("confirm", None))
    router.add_route("*", "/api/fetch_order.api", platform_handler("query", None))
    router.add_route("*", "/api/{tail:.*}", unknown_api)
    router.add_get(f"{CONTROL}/health", health)
    router.add_get(f"{CONTROL}/config", get_config)
    router.add_put(f"{CONTROL}/defaults", put_defaults)
    router.add_post(f"{CONTROL}/scenarios", post_scenario)
    router.add_post(f"{CONTROL}/orders", post_orders)
    router.add_get(f"{CONTROL}/order", get_order)
    router.add_post(f"{CONTROL}/pay", post_pay)
    router.add_post(f"{CONTROL}/forge", post_forge)
    router.add_get(f"{CONTROL}/deliveries", get_deliveries)
    router.add_get(f"{CONTROL}/calls", get_calls)
    router.add_get(f"{CONTROL}/stats", get_stats)
    router.add_get(f"{CONTROL}/payments", get_payments)
    router.add_post(f"{CONTROL}/faults", post_faults)
    router.add_delete(f"{CONTROL}/faults", delete_faults)
    router.add_put(f"{CONTROL}/chaos", put_chaos)
    router.add_post(f"{CONTROL}/reset", post_reset)
    router.add_route("GET", f"{CONTROL}/checkout", checkout)
    router.add_route("POST", f"{CONTROL}/checkout", checkout)
