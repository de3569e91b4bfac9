"""The ingress web application: routes, handlers, and the Kafka clients' lifetime.

`build_app` wires everything once: merchants, keys and validators are built here, the Kafka
producer and admin client start in `cleanup_ctx` and live under `web.AppKey`s. The handler
only translates: HTTP in, `forms` and `verification` to decide, `Publisher` to hand over,
HTTP out.
"""

from __future__ import annotations

import asyncio
import functools
import random
import uuid
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import hdrs, web
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ingress.audit_budget import AuditBudget
from ingress.counters import IngressCounters
from ingress.forms import parse_request
from ingress.publisher import Publisher
from ingress.refusals import Reason, Refusal
from ingress.verification import Verifier
from shared import bootstrap
from shared.adapters.kafka import (
    CallbackEnvelope,
    start_admin,
    start_producer,
)
from shared.adapters.kafka_readiness import KafkaReadiness, TopicSpec, wait_for_topics
from shared.adapters.outages import KAFKA_OUTAGES
from shared.adapters.parked import ParkedNotifications
from shared.adapters.redis_client import connect_redis
from shared.clock import Clock, SystemClock
from shared.domain.events import SOURCE_NOTIFICATION
from shared.logs import BoundLogger, get_logger
from shared.merchants import LiveMerchants
from shared.merchants_reload import watching
from shared.platform.retry import wait_out
from shared.protocol.payment import order_fields
from shared.trace import HEADER as TRACE_HEADER
from shared.trace import TraceParent
from shared.trace import parse as parse_trace
from shared.tracing import Spans

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from ingress.forms import Fields
    from shared.merchants import Merchant
    from shared.settings import Settings

SUCCESS = b"success"
FAIL = b"fail"
_METHOD_NOT_ALLOWED = Refusal(Reason.METHOD_NOT_ALLOWED)
_BODY_TOO_LARGE = Refusal(Reason.BODY_TOO_LARGE)
_NOT_FOUND = Refusal(Reason.NOT_FOUND)
_NOT_READY = Refusal(Reason.NOT_READY)
_BODY_TIMEOUT = Refusal(Reason.BODY_TIMEOUT, rule="the body did not arrive within the deadline")
SERVER_HEADER = "paynotify"  # no product versions for a scanner to match against advisories
_KAFKA_START_TRY = 30.0  # bound on one attempt to start the Kafka clients
_KAFKA_FIRST_WAIT = 3.0  # start-up waits this long for Kafka, then serves (503, parked)
_KAFKA_STOP_BOUND = 30.0  # bound on stopping the clients (a flush waits for the broker)
_READINESS_BOUND = 2.0  # bound on one metadata request of the readiness check
_PARK_BOUND = 1.0  # bound on keeping a notification Kafka did not take (shared.adapters.parked)
_PARK_CONNECTIONS = 16  # Redis connections for parking (used only while Kafka fails)
_AUDIT_TEXT = 64  # characters kept of any sender-chosen text in an audit record
_AUDIT_NAMES = 40  # field names kept in an audit record


class Ingress:
    """The request handlers and what they share; one per application."""

    def __init__(
        self,
        settings: Settings,
        verifier: Verifier,
        clock: Clock,
        counters: IngressCounters,
        log: BoundLogger,
        *,
        spans: Spans | None = None,
    ) -> None:
        self.settings = settings
        self.spans = spans or Spans.off()
        self.verifier = verifier
        self.clock = clock
        self.counters = counters
        self.log = log
        self.max_body = settings.max_body_bytes
        self.body_timeout = settings.ingress_body_timeout
        self.audit_budget = AuditBudget(settings.ingress_audit_rate, settings.ingress_audit_burst)
        # Set while the Kafka clients run (see `_kafka_clients`).
        self.publisher: Publisher | None = None
        self.readiness: KafkaReadiness | None = None
        self.parking: ParkedNotifications | None = None  # set while the app runs (`_parking`)
        self.closing = False

    async def notify(self, request: web.Request) -> web.Response:
        received_at = self.clock.time()
        form = await self._read_form(request)
        if form is _BODY_TIMEOUT:
            return await self._refuse_and_close(request, form, received_at)
        if isinstance(form, Refusal):
            return self._refuse(request, form, received_at)
        peer = request.remote
        verified = self.verifier.check(form, peer, request.match_info.get("mch_id"))
        if isinstance(verified, Refusal):
            return self._refuse(request, verified, received_at, form)
        envelope = CallbackEnvelope(
            fields=form,
            key_id=verified.key_id,
            received_at=received_at,
            peer=peer,
            delivery_id=uuid.uuid4().hex,
            source=SOURCE_NOTIFICATION,
        )
        # This notification's span: a child of a valid `traceparent` sent along, else a trace.
        parent = parse_trace(request.headers.get(TRACE_HEADER))
        with self.spans.span("ingress.notify", parent) as span:
            span.set("paynotify.order_key", verified.order_key)
            publisher = self.publisher
            if publisher is None:  # only before start-up finished (Kafka away) or after shutdown
                refusal = _NOT_READY
            else:
                failure = await publisher.publish(verified.order_key, envelope, span.trace)
                if failure is None:
                    span.set("paynotify.result", "published")
                    return web.Response(body=SUCCESS, content_type="text/plain")
                refusal = Refusal(failure)
            span.set("paynotify.result", refusal.reason.value)
            # Still `fail` (the platform tries again), but kept: if every try meets Kafka away,
            # the sweeper publishes the parked copy once it is back.
            await self._park(verified.order_key, envelope, span.trace)
        return self._refuse(request, refusal, received_at, form)

    async def _park(self, key: str, envelope: CallbackEnvelope, trace: TraceParent) -> None:
        parking = self.parking
        if parking is None:  # PAYNOTIFY_INGRESS_PARK_MAX=0
            return
        try:
            async with asyncio.timeout(_PARK_BOUND):
                result = await parking.park(
                    key, envelope, self.clock.time(), trace, bound=self.settings.ingress_park_max
                )
        except Exception as exc:  # Redis away too: the platform's next try is all there is
            self.counters.parked["failed"] += 1
            self.log.warning(
                "notification_not_parked", **order_fields(key), error=type(exc).__name__
            )
            return
        self.counters.parked[result] += 1
        if result == "full":
            self.log.warning("notification_not_parked", **order_fields(key), error="parked_full")
        else:
            self.log.info("notification_parked", **order_fields(key), result=result)

    async def _read_form(self, request: web.Request) -> Fields | Refusal:
        if request.method != hdrs.METH_POST:
            return _METHOD_NOT_ALLOWED
        length = request.content_length
        if length is not None and length > self.max_body:
            return _BODY_TOO_LARGE  # refused before reading a byte of it
        try:
            if request.content.is_eof():
                # The whole body is buffered already (a small notification arrives with its
                # headers): reading it cannot wait, so it needs no timer.
                body = await request.read()
            else:
                async with asyncio.timeout(self.body_timeout):
                    body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # no Content-Length: chunked past the limit
            return _BODY_TOO_LARGE
        except TimeoutError:  # a client trickling its body would hold the connection for hours
            return _BODY_TIMEOUT
        return parse_request(
            body, request.headers.get(hdrs.CONTENT_TYPE), request.query_string, self.max_body
        )

    def _refuse(
        self,
        request: web.Request,
        refusal: Refusal,
        received_at: float,
        form: Fields | None = None,
    ) -> web.Response:
        self.counters.refusals[refusal.reason] += 1
        mch_id = _clip(form.get("mch_id")) if form else None
        self.log.info(
            "notification_refused",
            reason=refusal.reason.value,
            status=refusal.status,
            field=refusal.field,
            rule=refusal.rule,
            mch_id=mch_id,
            peer=request.remote,
        )
        if self.publisher is not None:
            suppressed = self.audit_budget.take(request.remote, self.clock.monotonic())
            if suppressed is None:
                self.counters.audit_suppressed += 1
            else:
                record = _audit_record(request, refusal, received_at, form)
                record["suppressed"] = suppressed
                self.publisher.audit(record, mch_id)
        response = web.Response(status=refusal.status, body=FAIL, content_type="text/plain")
        if refusal.reason is Reason.METHOD_NOT_ALLOWED:
            response.headers[hdrs.ALLOW] = hdrs.METH_POST
        return response

    async def _refuse_and_close(
        self, request: web.Request, refusal: Refusal, received_at: float
    ) -> web.Response:
        """Answer now and drop the connection: the rest of the body is never waited for (aiohttp
        would otherwise linger, reading it, before closing)."""
        response = self._refuse(request, refusal, received_at)
        try:
            async with asyncio.timeout(1.0):  # a few bytes into an idle socket's buffer
                await response.prepare(request)
                await response.write_eof()
        except (TimeoutError, ConnectionError):
            pass  # the client is gone or not reading: closing is all that is left to do
        request.protocol.force_close()
        return response

    async def not_found(self, request: web.Request) -> web.Response:
        return self._refuse(request, _NOT_FOUND, self.clock.time())

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, _: web.Request) -> web.Response:
        if self.closing:
            ready, why = False, "shutting down"
        elif self.readiness is None:
            ready, why = False, "kafka clients not started"
        else:
            ready, why = await self.readiness.check()
        return web.Response(
            status=200 if ready else 503,
            body=orjson.dumps({"ready": ready, "kafka": why}),
            content_type="application/json",
        )

    async def metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=self.counters.prometheus().encode())
        response.headers[hdrs.CONTENT_TYPE] = CONTENT_TYPE_LATEST
        return response


def _clip(value: str | None) -> str | None:
    if value is None:
        return None
    # Sender-chosen text: bounded, and made encodable whatever it holds.
    return value[:_AUDIT_TEXT].encode("utf-8", "backslashreplace").decode("utf-8")


def _audit_record(
    request: web.Request, refusal: Refusal, received_at: float, form: Fields | None
) -> dict[str, Any]:
    """What an operator needs to see why a request was refused - never `sign` or a key."""
    return {
        "reason": refusal.reason.value,
        "status": refusal.status,
        "field": refusal.field,
        "rule": refusal.rule,
        "mch_id": _clip(form.get("mch_id")) if form else None,
        "mch_order": _clip(form.get("mch_order")) if form else None,
        "field_names": sorted(_clip(name) for name in list(form)[:_AUDIT_NAMES]) if form else [],
        "method": request.method,
        "path": _clip(request.path),
        "content_type": _clip(request.headers.get(hdrs.CONTENT_TYPE)),
        "content_length": request.content_length,
        "peer": request.remote,
        "received_at": received_at,
    }


async def _plain_server_header(_: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER_HEADER


INGRESS = web.AppKey("ingress", Ingress)
PRODUCER = web.AppKey("kafka_producer", AIOKafkaProducer)
ADMIN = web.AppKey("kafka_admin", AIOKafkaAdminClient)


async def _parking(app: web.Application) -> AsyncIterator[None]:
    """The Redis client that parks notifications Kafka did not take. It connects on first use
    (Redis is not needed to serve, only to keep such a copy) and is closed after the requests."""
    ingress = app[INGRESS]
    if not ingress.settings.ingress_park_max:
        yield
        return
    redis = connect_redis(ingress.settings.redis_url, max_connections=_PARK_CONNECTIONS)
    ingress.parking = ParkedNotifications(redis)
    try:
        yield
    finally:
        ingress.parking = None
        await redis.aclose()


async def _watch_merchants(live: LiveMerchants, app: web.Application) -> AsyncIterator[None]:
    """SIGHUP or a changed file puts new keys to use at once (shared.merchants_reload)."""
    ingress = app[INGRESS]
    async with watching(live, every=ingress.settings.merchants_reload, clock=ingress.clock):
        yield


async def _kafka_clients(app: web.Application) -> AsyncIterator[None]:
    """The Kafka clients' lifetime. A broker that is away at start-up is waited out in the
    background: the ingress serves meanwhile, answering 503 `not_ready` (the platform retries)
    with `/readyz` false, and never exits for it."""
    ingress = app[INGRESS]
    starting = asyncio.create_task(_start_kafka(ingress), name="ingress-kafka-start")
    # Usually quick: then the first request already finds the clients ready.
    await asyncio.wait({starting}, timeout=_KAFKA_FIRST_WAIT)
    try:
        yield
    finally:
        # In-flight requests are finished by now; what is still queued is flushed by `stop`.
        ingress.publisher, ingress.readiness = None, None
        starting.cancel()  # nothing when it finished
        await asyncio.wait({starting}, timeout=_KAFKA_STOP_BOUND)
        if starting.done() and not starting.cancelled() and starting.exception() is None:
            await _stop_kafka(ingress, *starting.result())
        ingress.log.info("ingress_stopped", published=ingress.counters.published)


async def _start_kafka(ingress: Ingress) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient, Publisher]:
    settings = ingress.settings

    async def attempt() -> tuple[AIOKafkaProducer, AIOKafkaAdminClient]:
        async with asyncio.timeout(_KAFKA_START_TRY):
            producer = await start_producer(settings, client_id="paynotify-ingress")
            try:
                admin = await start_admin(settings, client_id="paynotify-ingress-readiness")
            except BaseException:
                await producer.stop()
                raise
        return producer, admin

    def waiting(exc: BaseException, delay: float) -> None:
        ingress.log.warning("ingress_kafka_unavailable", error=type(exc).__name__, retry_in=delay)

    try:
        producer, admin = await wait_out(
            attempt,
            errors=(*KAFKA_OUTAGES, TimeoutError),
            clock=ingress.clock,
            random=random.random,
            on_retry=waiting,
        )
    except Exception:
        # Not an outage (a configuration the client refuses): say so; /readyz stays false.
        ingress.log.exception("ingress_kafka_start_failed")
        raise
    try:
        return await _when_topics_ready(ingress, producer, admin)
    except BaseException:  # cancelled (shutdown) while waiting: the clients are ours to close
        async with asyncio.timeout(_KAFKA_STOP_BOUND):
            await producer.stop()
            await admin.close()
        raise


async def _when_topics_ready(
    ingress: Ingress, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient, Publisher]:
    settings = ingress.settings
    names = settings.topics
    readiness = KafkaReadiness(
        admin,
        TopicSpec.of(settings, (names.callbacks, names.rejected)),
        ingress.clock,
        timeout=_READINESS_BOUND,
    )
    ingress.readiness = readiness  # /readyz says what is missing while we wait below
    # No request for a topic before it exists as configured: that could auto-create it.
    # Never stopped by an event: shutdown cancels the start task (see `_kafka_clients`).
    await wait_for_topics(
        readiness.check, stop=asyncio.Event(), clock=ingress.clock, log=ingress.log
    )
    await _learn_partitions(
        producer, (names.callbacks, names.rejected), settings.kafka_ack_timeout, ingress.log
    )
    publisher = Publisher(
        producer,
        topics=names,
        ack_timeout=settings.kafka_ack_timeout,
        counters=ingress.counters,
        log=ingress.log,
    )
    ingress.publisher = publisher
    ingress.log.info("ingress_started", kafka=settings.kafka_bootstrap_servers)
    return producer, admin, publisher


async def _stop_kafka(
    ingress: Ingress,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    publisher: Publisher,
) -> None:
    try:
        async with asyncio.timeout(_KAFKA_STOP_BOUND):
            await publisher.drain()
            await producer.stop()
    except TimeoutError:
        ingress.log.warning("ingress_kafka_flush_timeout", bound=_KAFKA_STOP_BOUND)
    finally:
        await admin.close()


async def _learn_partitions(
    producer: AIOKafkaProducer, names: tuple[str, ...], bound: float, log: BoundLogger
) -> None:
    """Fetch the topics' partitions now, so that no request waits for that metadata."""
    for topic in names:
        try:
            async with asyncio.timeout(bound):
                await producer.partitions_for(topic)
        except (TimeoutError, KafkaError) as exc:
            # Not fatal: /readyz reports the topic, and a send fetches metadata again.
            log.warning("kafka_topic_unavailable", topic=topic, error=type(exc).__name__)


async def _on_shutdown(app: web.Application) -> None:
    app[INGRESS].closing = True  # /readyz turns 503 while in-flight requests finish


def build_app(
    settings: Settings,
    merchants: Mapping[str, Merchant],
    clock: Clock | None = None,
    *,
    operations: bool = True,
    spans: Spans | None = None,
) -> web.Application:
    """The ingress application; Kafka clients start when the app starts. `operations` False
    leaves /healthz, /readyz and /metrics to `build_admin_app` (a port of their own), so the
    public port serves the notification paths only."""
    catalog = bootstrap.pay_types(settings)
    ingress = Ingress(
        settings=settings,
        verifier=Verifier(merchants, frozenset(catalog.by_code)),
        clock=clock or SystemClock(),
        counters=IngressCounters(),
        log=get_logger("ingress"),
        spans=spans,
    )
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[INGRESS] = ingress
    app.cleanup_ctx.append(_parking)
    app.cleanup_ctx.append(_kafka_clients)
    if isinstance(merchants, LiveMerchants):  # the merchants file: reloaded while serving
        app.cleanup_ctx.append(functools.partial(_watch_merchants, merchants))
    app.on_shutdown.append(_on_shutdown)
    app.on_response_prepare.append(_plain_server_header)
    app.router.add_route("*", "/notify", ingress.notify)
    app.router.add_route("*", "/notify/{mch_id}", ingress.notify)
    if operations:
        _add_operations(app.router, ingress)
    app.router.add_route("*", "/{tail:.*}", ingress.not_found)
    return app


def build_admin_app(app: web.Application) -> web.Application:
    """/healthz, /readyz and /metrics of the ingress `app` (built with `operations=False`), to
    serve on the admin port (`paynotify ingress --admin-port`)."""
    admin = web.Application()
    _add_operations(admin.router, app[INGRESS])
    admin.on_response_prepare.append(_plain_server_header)
    return admin


def _add_operations(router: web.UrlDispatcher, ingress: Ingress) -> None:
    router.add_get("/healthz", ingress.healthz, allow_head=True)
    router.add_get("/readyz", ingress.readyz, allow_head=True)
    router.add_get("/metrics", ingress.metrics)
