"""The ingress against the real broker: `success` only after Kafka's ack, `fail` for the rest.

Each test runs the real application (aiohttp server on 127.0.0.1, real producer) and reads the
real `paynotify.callbacks` and `paynotify.rejected` topics. "Nothing on the topic" is checked
with a sentinel: after a refusal, a valid notification for the same order key is accepted, and
everything that reached the topic up to the sentinel is inspected.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ingress.app import INGRESS, build_app
from shared.adapters.kafka import CallbackEnvelope, start_admin
from shared.adapters.topic_admin import ensure_topics
from shared.merchants import LiveMerchants, parse_merchants
from shared.protocol.signing import MerchantKey, signed
from shared.settings import Settings
from shared.trace import from_headers as trace_from_headers
from shared.tracing import Spans

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from aiokafka.structs import ConsumerRecord

pytestmark = pytest.mark.integration

MCH, KEY, OLD_KEY = "t9awtvk6dn", "25e72d96d0ffe0bb74373344d986df3c", "0a1b2c3d4e5f6071"
FENCED, FENCED_KEY = "m2fenced", "f00dfeedf00dfeedf00dfeedf00dfeed"
LOCAL, LOCAL_KEY = "m3local", "c0ffeec0ffeec0ffeec0ffeec0ffee00"
MERCHANTS = parse_merchants(
    {
        "merchants": {
            MCH: {"keys": [KEY, OLD_KEY]},
            FENCED: {"keys": [FENCED_KEY], "allow_from": ["10.9.8.0/24"]},
            LOCAL: {"keys": [LOCAL_KEY], "allow_from": ["127.0.0.0/8"]},
        }
    }
)
FORM = "application/x-www-form-urlencoded"
WAIT = 30.0  # seconds any poll may take before the test fails


def notification(mch_order: str, mch_id: str = MCH, **overrides: str) -> dict[str, str]:
    fields = {
        "mch_id": mch_id,
        "service": "10",
        "mch_order": mch_order,
        "amt": "1000",
        "mch_amt": "1000",
        "sign_type": "md5",
        "amt_type": "cny",
        "status": "2",
        "created_at": "1700000000",
        "success_at": "1700000100",
        **overrides,
    }
    key = {MCH: KEY, FENCED: FENCED_KEY, LOCAL: LOCAL_KEY}.get(mch_id, KEY)
    return signed(fields, key)


def new_order() -> str:
    return f"it-{uuid.uuid4().hex[:16]}"


class TopicTail:
    """Reads what arrives on a topic after the moment it was opened."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.seen: list[ConsumerRecord[bytes, bytes]] = []

    @classmethod
    @asynccontextmanager
    async def open(cls, bootstrap: str, topic: str) -> AsyncIterator[TopicTail]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        try:
            admin = await start_admin(Settings(kafka_bootstrap_servers=bootstrap))
            try:
                (described,) = await admin.describe_topics([topic])
            finally:
                await admin.close()
            partitions = sorted(p["partition"] for p in described["partitions"])
            assert partitions, f"topic {topic} has no partitions"
            assigned = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(assigned)
            for tp, end in (await consumer.end_offsets(assigned)).items():
                consumer.seek(tp, end)
            yield cls(consumer)
        finally:
            await consumer.stop()

    async def until(
        self, found: Callable[[ConsumerRecord[bytes, bytes]], bool]
    ) -> ConsumerRecord[bytes, bytes]:
        """Read on until a record satisfies `found` (everything read is kept in `seen`)."""
        for record in self.seen:
            if found(record):
                return record
        async with asyncio.timeout(WAIT):
            while True:
                batches = await self.consumer.getmany(timeout_ms=200)
                fresh = [record for records in batches.values() for record in records]
                self.seen.extend(fresh)
                for record in fresh:
                    if found(record):
                        return record


def key_is(order_key: str) -> Callable[[ConsumerRecord[bytes, bytes]], bool]:
    return lambda record: record.key == order_key.encode()


@dataclasses.dataclass
class Running:
    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def counters(self) -> Any:
        return self.app[INGRESS].counters


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[Running]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Running(f"http://{host}:{port}", app, runner)
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
async def settings(kafka_bootstrap: str) -> Settings:
    # Topics of this module's own: other modules create the default names with other partition
    # counts, and the ingress is not ready on a topic with fewer partitions than configured.
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_ack_timeout=5.0,
        topic_prefix=f"ingress-{uuid.uuid4().hex[:8]}.",
    )
    await ensure_topics(settings, [settings.topics.callbacks, settings.topics.rejected])
    return settings


@pytest.fixture(scope="module")
async def ingress(settings: Settings) -> AsyncIterator[Running]:
    async with serve(build_app(settings, MERCHANTS)) as running:
        yield running


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def callbacks(settings: Settings) -> AsyncIterator[TopicTail]:
    async with TopicTail.open(settings.kafka_bootstrap_servers, settings.topics.callbacks) as tail:
        yield tail


@pytest.fixture
async def rejected(settings: Settings) -> AsyncIterator[TopicTail]:
    async with TopicTail.open(settings.kafka_bootstrap_servers, settings.topics.rejected) as tail:
        yield tail


async def post_form(
    http: aiohttp.ClientSession, url: str, form: dict[str, str]
) -> tuple[int, str, str]:
    async with http.post(url, data=urlencode(form), headers={"Content-Type": FORM}) as response:
        return response.status, await response.text(), response.content_type


# -- acceptance --------------------------------------------------------------------------------


async def test_valid_notification_is_acked_and_its_envelope_is_on_the_topic(
    ingress: Running, http: aiohttp.ClientSession, callbacks: TopicTail
) -> None:
    """`success` (200, text/plain) comes back, and the topic holds the envelope, keyed by
    mch_id:mch_order, with the fields as received, the verifying key's id and the peer."""
    order = new_order()
    form = notification(order, call="{user:1}", extra_field="kept")
    before = time.time()
    assert await post_form(http, f"{ingress.url}/notify", form) == (200, "success", "text/plain")
    record = await callbacks.until(key_is(f"{MCH}:{order}"))
    envelope = CallbackEnvelope.decode(record.value)
    assert envelope.fields == form
    assert list(envelope.fields) == list(form)
    assert envelope.key_id == MerchantKey.from_secret(KEY).key_id
    assert envelope.peer == "127.0.0.1"
    assert envelope.source == "notification"
    assert len(envelope.delivery_id) == 32
    int(envelope.delivery_id, 16)
    assert before - 1 <= envelope.received_at <= time.time() + 1
    assert KEY.encode() not in record.value


async def test_repeated_deliveries_of_one_order_share_a_partition(
    ingress: Running, http: aiohttp.ClientSession, callbacks: TopicTail
) -> None:
    """The platform repeats a notification; every delivery lands on the order's one partition,
    each with its own delivery id."""
    order = new_order()
    form = notification(order)
    for _ in range(3):
        assert (await post_form(http, f"{ingress.url}/notify", form))[:2] == (200, "success")
    mine: list[ConsumerRecord[bytes, bytes]] = []
    while len(mine) < 3:
        mine.append(await callbacks.until(lambda r: key_is(f"{MCH}:{order}")(r) and r not in mine))
    assert len({r.partition for r in mine}) == 1
    assert len({CallbackEnvelope.decode(r.value).delivery_id for r in mine}) == 3


@pytest.mark.parametrize("encoding", ["multipart", "json"])
async def test_multipart_and_json_notifications_are_acked(
    encoding: str, ingress: Running, http: aiohttp.ClientSession, callbacks: TopicTail
) -> None:
    """The same notification as multipart/form-data (as aiohttp's client writes it) or as a
    JSON object is accepted just like the urlencoded form."""
    order = new_order()
    form = notification(order, remark_cn="产品备注")
    if encoding == "multipart":
        data = aiohttp.FormData(default_to_multipart=True)
        for name, value in form.items():
            data.add_field(name, value)
        request = http.post(f"{ingress.url}/notify", data=data)
    else:
        json_form: dict[str, Any] = {**form, "amt": 1000, "status": 2}
        request = http.post(f"{ingress.url}/notify", json=json_form)
    async with request as response:
        assert (response.status, await response.text()) == (200, "success")
    record = await callbacks.until(key_is(f"{MCH}:{order}"))
    assert CallbackEnvelope.decode(record.value).fields == form


async def test_per_merchant_url_and_previous_key_are_accepted(
    ingress: Running, http: aiohttp.ClientSession, callbacks: TopicTail
) -> None:
    """`/notify/{mch_id}` takes that merchant's notifications; a rotated-out key still
    verifies and is named in the envelope."""
    order = new_order()
    form = signed({**notification(order), "sign": ""}, OLD_KEY)
    assert (await post_form(http, f"{ingress.url}/notify/{MCH}", form))[:2] == (200, "success")
    record = await callbacks.until(key_is(f"{MCH}:{order}"))
    assert CallbackEnvelope.decode(record.value).key_id == MerchantKey.from_secret(OLD_KEY).key_id


async def test_a_key_rotation_in_the_merchants_file_takes_effect_without_a_restart(
    settings: Settings, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The rotation of docs/operations.md on a running ingress: the new key added (SIGHUP), both
    verify while the platform switches, then the old one removed (the file watch sees it
    without a signal). No notification signed with a listed key is refused on the way."""
    new_key = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    path = tmp_path / "merchants.toml"

    def write(*keys: str) -> None:
        quoted = ", ".join(f'"{key}"' for key in keys)
        path.write_text(f"[merchants.{MCH}]\nkeys = [{quoted}]\n")

    async def status(key: str) -> int:
        form = signed({**notification(new_order()), "sign": ""}, key)
        return (await post_form(http, f"{ingress.url}/notify", form))[0]

    async def until(key: str, expected: int) -> None:
        async with asyncio.timeout(WAIT):
            while await status(key) != expected:
                await asyncio.sleep(0.05)

    write(KEY)
    live = LiveMerchants(path)
    watched = dataclasses.replace(settings, merchants_reload=0.2)
    async with serve(build_app(watched, live)) as ingress:
        await until(KEY, 200)  # the Kafka clients are up
        assert await status(new_key) == 401
        write(KEY, new_key)  # step 1: the new key second
        os.kill(os.getpid(), signal.SIGHUP)
        await until(new_key, 200)
        assert await status(KEY) == 200  # still listed: never refused during the switch
        write(new_key)
        await until(KEY, 401)
        assert await status(new_key) == 200
        assert live.reloads == 2


async def test_the_callbacks_message_carries_the_notifications_trace_context(
    ingress: Running, http: aiohttp.ClientSession, callbacks: TopicTail
) -> None:
    """A valid `traceparent` sent along is continued (same trace, the ingress's own span); a
    malformed one is never echoed: a new trace starts, as it does without one."""
    sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traces = []
    for header in (sent, "00-forged-by-a-sender", None):
        order = new_order()
        headers = {"Content-Type": FORM} | ({"traceparent": header} if header else {})
        body = urlencode(notification(order))
        async with http.post(f"{ingress.url}/notify", data=body, headers=headers) as response:
            assert (response.status, await response.text()) == (200, "success")
        record = await callbacks.until(key_is(f"{MCH}:{order}"))
        trace = trace_from_headers(record.headers)
        assert trace is not None, record.headers
        traces.append(trace)
    continued = traces[0]
    assert continued.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert continued.span_id != "00f067aa0ba902b7"
    assert len({t.trace_id for t in traces}) == 3  # the forged one and none: new traces


async def test_with_opentelemetry_the_ingress_span_is_recorded_and_sent_on(
    settings: Settings, http: aiohttp.ClientSession, callbacks: TopicTail
) -> None:
    """`paynotify[otel]` on: the notification's span is recorded as a child of the sender's,
    and the callbacks message carries that span's own id."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    order = new_order()
    app = build_app(settings, MERCHANTS, spans=Spans(provider.get_tracer("test")))
    async with serve(app) as running:
        headers = {"Content-Type": FORM, "traceparent": sent}
        body = urlencode(notification(order))
        async with asyncio.timeout(WAIT):
            while True:  # the first requests may meet the Kafka clients starting
                async with http.post(f"{running.url}/notify", data=body, headers=headers) as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
    record = await callbacks.until(key_is(f"{MCH}:{order}"))
    trace = trace_from_headers(record.headers)
    recorded = [s for s in exporter.get_finished_spans() if s.name == "ingress.notify"]
    published = [s for s in recorded if (s.attributes or {}).get("paynotify.result") == "published"]
    assert trace is not None
    assert len(published) == 1
    (span,) = published
    assert f"{span.context.span_id:016x}" == trace.span_id
    assert f"{span.context.trace_id:032x}" == trace.trace_id == sent[3:35]
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"


async def test_allow_from_admits_the_listed_network(
    ingress: Running, http: aiohttp.ClientSession, callbacks: TopicTail
) -> None:
    """A merchant whose allow_from lists loopback accepts a notification from 127.0.0.1."""
    order = new_order()
    form = notification(order, mch_id=LOCAL)
    assert (await post_form(http, f"{ingress.url}/notify", form))[:2] == (200, "success")
    await callbacks.until(key_is(f"{LOCAL}:{order}"))


# -- refusals ----------------------------------------------------------------------------------


def _form_request(form: dict[str, str], path: str = "/notify", query: str = "") -> dict[str, Any]:
    url = path + (f"?{query}" if query else "")
    return {
        "method": "POST",
        "path": url,
        "data": urlencode(form),
        "headers": {"Content-Type": FORM},
    }


def _case_invalid_field(order: str) -> dict[str, Any]:
    return _form_request(notification(order, status="3"))


def _case_duplicate(order: str) -> dict[str, Any]:
    form = notification(order)
    return {**_form_request(form), "data": urlencode(form) + "&amt=1000"}


def _case_query(order: str) -> dict[str, Any]:
    return _form_request(notification(order), query="mch_id=x")


def _case_mch_key(order: str) -> dict[str, Any]:
    return _form_request({**notification(order), "mch_key": KEY})


def _case_mismatch(order: str) -> dict[str, Any]:
    return _form_request(notification(order), path=f"/notify/{LOCAL}")


def _case_bad_sign(order: str) -> dict[str, Any]:
    return _form_request({**notification(order), "amt": "999999"})


def _case_wrong_key(order: str) -> dict[str, Any]:
    return _form_request(signed({**notification(order), "sign": ""}, FENCED_KEY))


def _case_no_sign(order: str) -> dict[str, Any]:
    form = notification(order)
    del form["sign"]
    return _form_request(form)


def _case_fenced(order: str) -> dict[str, Any]:
    return _form_request(notification(order, mch_id=FENCED))


def _case_unknown_merchant(order: str) -> dict[str, Any]:
    return _form_request(signed({**notification(order), "mch_id": "nobody", "sign": ""}, KEY))


def _case_unknown_url_merchant(order: str) -> dict[str, Any]:
    return _form_request(notification(order), path="/notify/nobody")


def _case_unknown_path(order: str) -> dict[str, Any]:
    return _form_request(notification(order), path="/notify.php")


def _case_get(order: str) -> dict[str, Any]:
    return {"method": "GET", "path": f"/notify/{MCH}", "data": None, "headers": {}}


def _case_too_large(order: str) -> dict[str, Any]:
    form = {**notification(order), "padding": "x" * 9000}
    return _form_request(form)


def _case_too_large_chunked(order: str) -> dict[str, Any]:
    body = urlencode({**notification(order), "padding": "x" * 9000}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    return {**_form_request(notification(order)), "data": chunks}


def _case_text_plain(order: str) -> dict[str, Any]:
    return {**_form_request(notification(order)), "headers": {"Content-Type": "text/plain"}}


def _case_gbk(order: str) -> dict[str, Any]:
    return {
        **_form_request(notification(order)),
        "headers": {"Content-Type": f"{FORM}; charset=gbk"},
    }


REFUSALS = [
    ("invalid_field", _case_invalid_field, 400, "invalid_field"),
    ("duplicate_field", _case_duplicate, 400, "duplicate_field"),
    ("query_string", _case_query, 400, "query_string"),
    ("mch_key_field", _case_mch_key, 400, "key_field_present"),
    ("url_merchant_mismatch", _case_mismatch, 400, "mch_id_mismatch"),
    ("tampered", _case_bad_sign, 401, "sign_mismatch"),
    ("wrong_key", _case_wrong_key, 401, "sign_mismatch"),
    ("no_sign", _case_no_sign, 401, "sign_missing"),
    ("outside_allow_from", _case_fenced, 403, "peer_not_allowed"),
    ("unknown_merchant", _case_unknown_merchant, 404, "unknown_merchant"),
    ("unknown_url_merchant", _case_unknown_url_merchant, 404, "unknown_merchant"),
    ("unknown_path", _case_unknown_path, 404, "not_found"),
    ("wrong_method", _case_get, 405, "method_not_allowed"),
    ("too_large", _case_too_large, 413, "body_too_large"),
    ("too_large_chunked", _case_too_large_chunked, 413, "body_too_large"),
    ("text_plain", _case_text_plain, 415, "unsupported_media_type"),
    ("gbk", _case_gbk, 415, "unsupported_charset"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[case[0] for case in REFUSALS])
async def test_each_refusal_class_gets_its_status_and_fail_and_nothing_is_published(
    case: tuple[str, Callable[[str], dict[str, Any]], int, str],
    ingress: Running,
    http: aiohttp.ClientSession,
    callbacks: TopicTail,
    rejected: TopicTail,
) -> None:
    """The reply is `fail` with the class's status; nothing reaches paynotify.callbacks (checked
    up to a later accepted sentinel for the same order); the refusal is counted and audited,
    and neither the reply nor the audit record holds a key or the signature."""
    _, make, status, reason = case
    order = new_order()
    spec = make(order)
    data = spec["data"]
    counted = ingress.counters.refusals[reason]
    async with http.request(
        spec["method"],
        ingress.url + spec["path"],
        data=data() if callable(data) else data,
        headers=spec["headers"],
    ) as response:
        assert (response.status, await response.text()) == (status, "fail")
        assert response.content_type == "text/plain"
        if status == 405:
            assert response.headers["Allow"] == "POST"
    assert ingress.counters.refusals[reason] == counted + 1

    sentinel = notification(order)
    assert (await post_form(http, f"{ingress.url}/notify", sentinel))[:2] == (200, "success")
    record = await callbacks.until(key_is(f"{MCH}:{order}"))
    assert CallbackEnvelope.decode(record.value).fields == sentinel
    mine = [r for r in callbacks.seen if order.encode() in (r.value or b"")]
    assert mine == [record], "a refused notification reached paynotify.callbacks"

    audit = await rejected.until(
        lambda r: (
            orjson.loads(r.value)["reason"] == reason
            and orjson.loads(r.value)["mch_order"] in (order, None)
        )
    )
    entry = orjson.loads(audit.value)
    assert entry["status"] == status
    assert entry["peer"] == "127.0.0.1"
    assert "sign" not in entry
    for secret in (KEY, FENCED_KEY, LOCAL_KEY, sentinel["sign"]):
        assert secret.encode() not in audit.value


# -- operations --------------------------------------------------------------------------------


async def test_health_readiness_and_metrics(ingress: Running, http: aiohttp.ClientSession) -> None:
    """/healthz answers, /readyz says ready with the broker up, /metrics shows the counters."""
    async with http.get(f"{ingress.url}/healthz") as response:
        assert (response.status, await response.text()) == (200, "ok")
    async with http.get(f"{ingress.url}/readyz") as response:
        assert response.status == 200
        assert await response.json() == {"ready": True, "kafka": "ok"}
    async with http.get(f"{ingress.url}/metrics") as response:
        text = await response.text()
    assert f"paynotify_ingress_published_total {float(ingress.counters.published)}" in text
    assert "# HELP paynotify_ingress_publish_seconds " in text
    assert 'paynotify_ingress_refusals_total{reason="sign_mismatch",status="401"}' in text


async def test_send_pending_at_the_deadline_is_503_and_never_counted_as_success(
    settings: Settings, http: aiohttp.ClientSession, callbacks: TopicTail
) -> None:
    """With a deadline shorter than the producer's linger, Kafka cannot ack in time: the reply
    is 503 `fail`; when the broker acks later, that counts as a late ack, not as published."""
    app = build_app(dataclasses.replace(settings, kafka_ack_timeout=0.001), MERCHANTS)
    async with serve(app) as running:
        order = new_order()
        status, body, _ = await post_form(http, f"{running.url}/notify", notification(order))
        assert (status, body) == (503, "fail")
        assert running.counters.refusals["kafka_timeout"] == 1
        # Whether the send was still queueing (then it is dropped) or already queued (then
        # Kafka takes it late) depends on the machine's load; either way it is not a success.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT):
                while running.counters.late_acks + running.counters.late_failures < 1:
                    await asyncio.sleep(0.01)
        if running.counters.late_acks:
            await callbacks.until(key_is(f"{MCH}:{order}"))  # Kafka took it after the deadline
        assert running.counters.published == 0


async def test_graceful_shutdown_finishes_the_request_in_flight(
    settings: Settings, callbacks: TopicTail
) -> None:
    """On shutdown the ingress stops accepting connections and turns not-ready, yet a request
    it already received is finished: published, acked by Kafka, and answered `success` before
    the producer is closed."""
    app = build_app(settings, MERCHANTS)
    entered, release = asyncio.Event(), asyncio.Event()

    @web.middleware
    async def hold(request: web.Request, handler: Any) -> web.StreamResponse:
        entered.set()
        await release.wait()  # keeps the request in flight until shutdown is under way
        return await handler(request)

    app.middlewares.append(hold)
    order = new_order()
    body = urlencode(notification(order)).encode()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    async with asyncio.timeout(WAIT):
        await entered.wait()
    closing = asyncio.create_task(runner.cleanup())
    async with asyncio.timeout(WAIT):
        while not app[INGRESS].closing:
            await asyncio.sleep(0.01)
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)
    release.set()
    async with asyncio.timeout(WAIT):
        answer = await reader.read()
    writer.close()
    await closing
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"\r\n\r\nsuccess")
    assert app[INGRESS].counters.published == 1
    await callbacks.until(key_is(f"{MCH}:{order}"))
