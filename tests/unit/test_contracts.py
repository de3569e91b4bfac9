"""Contracts checked against code (issue 12): docs/asyncapi.yaml, the shipped JSON Schemas and
docs/events.md say what the code writes and reads.

- Every documented example (the AsyncAPI messages', the schemas' `examples`, the events in
  docs/events.md) validates against its message's schema and is taken by the project's own
  parser for that message.
- What the code builds (the ingress's envelope and audit record, the workers' and the sweeper's
  events and dead letters, the sweeper's forwards) validates against the documented schema and
  holds no member the document does not name.
- Each message's documented Kafka key is the key the code gives it.
- Where the document states a bound, the parser keeps the same bound.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import orjson
import pytest
import yaml
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request
from jsonschema import Draft202012Validator

from ingress.app import Ingress
from ingress.counters import IngressCounters
from ingress.refusals import Reason as Refused
from ingress.verification import Verifier
from shared.adapters.kafka import CallbackEnvelope
from shared.clock import ManualClock
from shared.domain.decision import (
    Notice,
    QueryAnswer,
    decide,
    decide_expiry,
    requery_schedule,
)
from shared.domain.events import (
    SOURCE_NOTIFICATION,
    SOURCE_QUERY,
    SOURCES,
    EventType,
    Outcome,
    PaymentReconciled,
    encode,
)
from shared.domain.orders import CorruptRecordError, OrderRecord
from shared.domain.sweep import SweepSchedule
from shared.logs import get_logger
from shared.merchants import parse_merchants
from shared.ops.records import Position, parse_dead_letter, parse_event
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.models import OrderQueryAnswer
from shared.protocol.payment import PaymentReport, PaymentStatus, parse_payment_report
from shared.protocol.signing import MerchantKey, signed
from shared.query_envelope import query_envelope
from shared.service.dead_letters import dead_letter
from shared.service.record_order import PAY_TYPES, OrderMessageError, parse_order_created
from shared.service.settle import Reconciler, Settlement, Work
from shared.service.sweep import SweepOrder
from shared.settings import Settings
from shared.trace import HEADER as TRACE_HEADER
from shared.trace import start
from tests.support.fakes import MemoryOrderBook, ScriptedPlatform
from workers.orders_consumer import OrdersConsumer

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"
MCH_ID = "t9awtvk6dn"
ORDER = "P202611270001"
KEY = "25e72d96d0ffe0bb74373344d986df3c"
MERCHANTS = parse_merchants({"merchants": {MCH_ID: {"keys": [KEY]}}})
DOCUMENTED_PAY_TYPES = frozenset(PayTypeCatalog.documented().by_code)
NOW = 1_795_766_461.5


# --- the document ------------------------------------------------------------------------------


@cache
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCS / "asyncapi.yaml").read_text("utf-8"))
    return document


def resolve(node: Any) -> Any:
    """A `$ref` followed: `#/...` inside the document, a relative path to a JSON file."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if ref.startswith("#/"):
            node = asyncapi()
            for part in ref[2:].split("/"):
                node = node[part]
        else:
            node = json.loads((DOCS / ref).read_text("utf-8"))
    return node


def message(name: str) -> dict[str, Any]:
    found: dict[str, Any] = asyncapi()["components"]["messages"][name]
    return found


def payload_schema(name: str) -> dict[str, Any]:
    payload = message(name)["payload"]
    schema: dict[str, Any] = resolve(payload["schema"] if "schemaFormat" in payload else payload)
    return schema


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(payload_schema(name))


def assert_valid(name: str, value: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(name).iter_errors(value)]
    assert errors == [], errors


def assert_documented(name: str, value: dict[str, Any]) -> None:
    """The code writes no member the document does not name."""
    undocumented = set(value) - set(payload_schema(name)["properties"])
    assert not undocumented, f"{name}: {sorted(undocumented)} not in docs/asyncapi.yaml"


def documented_key(name: str) -> str:
    """The Kafka key a message's document gives, as written there (its trait or its own
    binding): `mch_id:mch_order`, `mch_id`, ..."""
    sources = [resolve(trait) for trait in message(name).get("traits", [])] + [message(name)]
    keys = [s["bindings"]["kafka"]["key"] for s in sources if "kafka" in s.get("bindings", {})]
    assert len(keys) == 1, f"{name} documents {len(keys)} Kafka keys"
    template = re.match(r"mch_id(:mch_order)?\b", keys[0]["description"])
    assert template, f"{name}'s key description does not start with what the key is"
    return template.group(0)


def key_of(name: str, mch_id: str = MCH_ID, mch_order: str = ORDER) -> str:
    """The documented key of a message about this merchant and order."""
    return re.sub(
        r"mch_id|mch_order", lambda m: mch_id if m.group(0) == "mch_id" else mch_order,
        documented_key(name),
    )  # fmt: skip


# The events channel's messages, by the event type each one's `name` gives.
EVENT_MESSAGES = {
    message(name)["name"]: name
    for name in (
        ref["$ref"].rsplit("/", 1)[1]
        for ref in asyncapi()["channels"]["events"]["messages"].values()
    )
}


def test_the_events_channel_has_one_message_per_event_type_with_its_schema() -> None:
    """The events channel documents exactly the code's event types, each by its type's name and
    the schema shipped for it."""
    assert set(EVENT_MESSAGES) == set(map(str, EventType))
    for event_type, name in EVENT_MESSAGES.items():
        assert payload_schema(name)["properties"]["type"] == {"const": event_type}


@pytest.mark.parametrize("name", sorted(asyncapi()["components"]["messages"]))
def test_every_payload_schema_is_a_valid_json_schema(name: str) -> None:
    """Each message's payload (inline or a shipped file) is a schema a validator can use."""
    Draft202012Validator.check_schema(payload_schema(name))
    headers = message(name).get("headers")
    if headers is not None:
        Draft202012Validator.check_schema(headers)


# --- every documented example: valid, and taken by the project's own parser ------------------


@dataclass(frozen=True)
class Example:
    where: str
    message: str  # the AsyncAPI message it is an example of
    payload: Any
    headers: dict[str, str] | None = None


def _examples() -> list[Example]:
    found: list[Example] = []
    for name, body in asyncapi()["components"]["messages"].items():
        found += [
            Example(f"asyncapi.yaml {name} {ex['name']}", name, ex["payload"], ex.get("headers"))
            for ex in body.get("examples", [])
        ]
        schema = payload_schema(name)
        found += [
            Example(f"{schema.get('$id', name)} examples[{i}]", name, ex)
            for i, ex in enumerate(schema.get("examples", []))
        ]
    events = (DOCS / "events.md").read_text("utf-8")
    for block in re.findall(r"```json\n(.*?)\n```", events, re.DOTALL):
        event = json.loads(block)
        found.append(Example(f"events.md {event['type']}", EVENT_MESSAGES[event["type"]], event))
    return found


EXAMPLES = _examples()
# No process of this project reads the audit topic: its example is held against the record the
# ingress writes instead (test_the_audit_record_and_its_key_are_the_documented_ones).
NOT_READ = frozenset({"RejectedNotification"})


def parse_example(example: Example) -> None:
    """The example through the parser that reads its topic; raises if it refuses it."""
    value = orjson.dumps(example.payload)
    name, payload = example.message, example.payload
    if name == "OrderCreated":
        key = key_of(name, payload["mch_id"], payload["mch_order"]).encode()
        record = parse_order_created(value, key, merchants={MCH_ID})
        assert (record.mch_id, record.mch_order, record.amt) == (
            payload["mch_id"], payload["mch_order"], payload["amt"],
        )  # fmt: skip
    elif name == "CallbackEnvelope":
        envelope = CallbackEnvelope.decode(value)
        assert envelope.source in SOURCES
        parse_payment_report(envelope.fields, DOCUMENTED_PAY_TYPES)  # the report in it is valid
    elif name == "DeadLetter":
        letter = parse_dead_letter(Position("paynotify.dlq", 0, 0), None, value)
        assert letter.reason == payload["reason"]
        if payload["origin"].startswith("paynotify.orders/"):
            # The reason and detail are the ones the orders consumer gives that message.
            with pytest.raises(OrderMessageError) as refused:
                parse_order_created(orjson.dumps(payload["payload"]), None)
            assert (refused.value.reason, refused.value.detail) == (
                payload["reason"], payload["detail"],
            )  # fmt: skip
    elif name in EVENT_MESSAGES.values():
        data = payload["data"]
        key = key_of(name, data["mch_id"], data["mch_order"])
        event = parse_event(None, key.encode(), value)
        assert event.subject == key
    else:
        assert name in NOT_READ, f"no parser known for {name}'s examples"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_every_documented_example_validates_and_parses(example: Example) -> None:
    """Each example passes its message's schema (and headers schema) and the project's own
    parser for that message takes it."""
    assert_valid(example.message, example.payload)
    if example.headers is not None:
        assert Draft202012Validator(message(example.message)["headers"]).is_valid(example.headers)
    parse_example(example)


def test_every_message_has_a_documented_example() -> None:
    """Nothing is documented without an example to hold against the code."""
    assert {e.message for e in EXAMPLES} == set(asyncapi()["components"]["messages"])


# --- order.created: the document's bounds are the parser's -------------------------------------

ORDER_CREATED = {
    "type": "order.created", "mch_id": MCH_ID, "mch_order": ORDER, "amt": 100_000,
    "pay_type": 10, "created_at": 1_795_766_400,
}  # fmt: skip


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING = _Missing()  # the member left out

PROBES: list[tuple[str, object]] = [
    ("type", MISSING), ("type", "order.updated"),
    ("mch_id", ""), ("mch_id", "m" * 32), ("mch_id", "m" * 33), ("mch_id", "a&b"),
    ("mch_id", "a=b"), ("mch_id", "a\nb"), ("mch_id", "a\x85b"), ("mch_id", 7),
    ("mch_order", ""), ("mch_order", "o" * 50), ("mch_order", "o" * 51), ("mch_order", "o\x7f"),
    ("amt", 0), ("amt", 1), ("amt", 10**15), ("amt", 10**15 + 1), ("amt", -1), ("amt", 1.5),
    ("amt", True), ("amt", None), ("amt", MISSING),
    ("transfer_amt", 0), ("transfer_amt", 1), ("transfer_amt", 10**15),
    ("transfer_amt", 10**15 + 1),
    ("pay_type", 0), ("pay_type", 7), ("pay_type", 999), ("pay_type", MISSING),
    *(("pay_type", code) for code in sorted(PAY_TYPES)),
    ("created_at", 0), ("created_at", 1), ("created_at", 10**11), ("created_at", 10**11 + 1),
    ("created_at", MISSING),
]  # fmt: skip


@pytest.mark.parametrize(("member", "value"), PROBES, ids=[f"{m}={v!r}" for m, v in PROBES])
def test_the_order_created_schema_and_parser_agree(member: str, value: object) -> None:
    """At each documented bound (and just past it), the schema and `parse_order_created`
    accept and refuse the same messages."""
    document = {**ORDER_CREATED, member: value}
    if value is MISSING:
        del document[member]
    # Keyed as documented, so that only the member under test can be refused.
    key = key_of("OrderCreated", str(document.get("mch_id")), str(document.get("mch_order")))
    try:
        parse_order_created(orjson.dumps(document), key.encode())
    except OrderMessageError:
        parsed = False
    else:
        parsed = True
    assert validator("OrderCreated").is_valid(document) is parsed, document


def test_the_documented_pay_types_are_the_ones_the_orders_consumer_takes() -> None:
    """OrderCreated's `pay_type` enum is the catalogue's documented pay types."""
    assert set(payload_schema("OrderCreated")["properties"]["pay_type"]["enum"]) == PAY_TYPES


def test_the_orders_key_is_the_documented_one_and_no_other() -> None:
    """The orders consumer takes an order.created keyed as documented and refuses another."""
    value = orjson.dumps(ORDER_CREATED)
    parse_order_created(value, key_of("OrderCreated").encode())
    for other in (MCH_ID, f"{MCH_ID}:{ORDER}:x", ORDER):
        with pytest.raises(OrderMessageError) as refused:
            parse_order_created(value, other.encode())
        assert refused.value.reason == "key_mismatch"


# --- the ingress: what it publishes and audits -------------------------------------------------


class CapturingPublisher:
    """Stands in for the ingress's Kafka publisher: takes everything, keeps what it was given."""

    def __init__(self) -> None:
        self.published: list[tuple[str, CallbackEnvelope, str]] = []
        self.audits: list[tuple[str | None, dict[str, Any]]] = []

    async def publish(self, key: str, envelope: CallbackEnvelope, trace: object) -> None:
        self.published.append((key, envelope, str(trace)))

    def audit(self, record: dict[str, Any], key: str | None) -> None:
        self.audits.append((key, record))


def notification(**changes: str) -> dict[str, str]:
    fields = {
        "mch_id": MCH_ID, "service": "10", "mch_order": ORDER, "amt": "100000",
        "mch_amt": "100000", "sign_type": "md5", "amt_type": "cny", "status": "2",
        "created_at": "1795766400", "success_at": "1795766461",
    }  # fmt: skip
    return signed({**fields, **changes}, KEY)


async def post(body: bytes, method: str = "POST") -> tuple[web.Response, CapturingPublisher]:
    """`body` through the ingress's own handler, its Kafka publisher captured."""
    ingress = Ingress(
        Settings(), Verifier(MERCHANTS, DOCUMENTED_PAY_TYPES), ManualClock(NOW),
        IngressCounters(), get_logger("contracts"),
    )  # fmt: skip
    publisher = CapturingPublisher()
    ingress.publisher = publisher  # type: ignore[assignment]
    payload = streams.StreamReader(
        mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
    )
    payload.feed_data(body)
    payload.feed_eof()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    request = make_mocked_request(method, "/notify", headers=headers, payload=payload)
    return await ingress.notify(request), publisher


def form(fields: dict[str, str]) -> bytes:
    return "&".join(f"{k}={v}" for k, v in fields.items()).encode()


async def test_the_ingress_envelope_and_its_key_are_the_documented_ones() -> None:
    """A verified notification goes on the callbacks topic as a valid CallbackEnvelope, keyed as
    documented, with a `traceparent` in the documented form."""
    response, publisher = await post(form(notification()))
    assert response.status == 200
    [(key, envelope, trace)] = publisher.published
    assert key == key_of("CallbackEnvelope")
    value = orjson.loads(envelope.encode())
    assert_valid("CallbackEnvelope", value)
    assert_documented("CallbackEnvelope", value)
    assert envelope.source == SOURCE_NOTIFICATION
    headers = Draft202012Validator(message("CallbackEnvelope")["headers"])
    assert headers.is_valid({TRACE_HEADER: trace})
    assert not headers.is_valid({TRACE_HEADER: "00-forged"})


async def test_the_audit_record_and_its_key_are_the_documented_ones() -> None:
    """A refused notification's audit record validates, holds only documented members (the
    example's members, too) and is keyed as documented: by the form's mch_id."""
    response, publisher = await post(form({**notification(), "amt": "100001"}))
    assert response.status == 401
    [(key, record)] = publisher.audits
    assert record["reason"] == Refused.SIGN_MISMATCH
    assert key == key_of("RejectedNotification")
    assert_valid("RejectedNotification", record)
    assert_documented("RejectedNotification", record)
    [example] = [e for e in EXAMPLES if e.message == "RejectedNotification"]
    assert set(example.payload) == set(record)


async def test_an_audit_record_without_a_form_has_no_key() -> None:
    """A refusal before any form was read (here: not a POST) is audited without a key, which
    the document allows."""
    response, publisher = await post(b"", method="GET")
    assert response.status == 405
    [(key, record)] = publisher.audits
    assert key is None
    assert_valid("RejectedNotification", record)
    key_schema = resolve(message("RejectedNotification")["traits"][0])["bindings"]["kafka"]["key"]
    assert Draft202012Validator(key_schema).is_valid(None)


# --- the workers: events and dead letters ------------------------------------------------------


def report(**changes: Any) -> PaymentReport:
    return replace(
        PaymentReport(
            mch_id=MCH_ID, pay_type=10, mch_order=ORDER, amt=100_000, mch_amt=100_000,
            amt_type="cny", status=PaymentStatus.PAID, created_at=1_795_766_400,
            success_at=1_795_766_461, origin_order=None, call=None, sign_type="md5",
        ),
        **changes,
    )  # fmt: skip


def record(**changes: Any) -> OrderRecord:
    return replace(OrderRecord(MCH_ID, ORDER, 100_000, 10, 1_795_766_400), **changes)


def outcomes() -> list[Outcome]:
    """One outcome of every type, each decided by the worker's (or sweeper's) own rules."""
    schedule = requery_schedule(1.0)

    def decided(
        told: PaymentReport, answer: PaymentReport | None, kept: OrderRecord | None, **kw: Any
    ) -> PaymentReconciled:
        outcome = decide(
            Notice(report=told, delivery_ids=("4f1c2a9e77d04d5e9a510c1b8f3e2d10",),
                   key_id=MerchantKey.from_secret(KEY).key_id),
            QueryAnswer(report=answer, queried_at=1_795_766_463),
            kept, policy="required", schedule=schedule, **kw,
        )  # fmt: skip
        assert isinstance(outcome, PaymentReconciled)
        return outcome

    repeat = report(mch_order="U88127310042", origin_order=ORDER)
    expired = decide_expiry(record(), QueryAnswer(report=None, queried_at=1_795_852_800))
    assert expired is not None
    return [
        decided(report(), report(), record(), requeries_done=0),
        decided(repeat, repeat, record(), requeries_done=0),
        decided(report(amt=1_000_000), report(), record(), requeries_done=0),
        decided(report(), None, record(), requeries_done=len(schedule)),
        decided(report(), report(), None, requeries_done=0),
        expired,
    ]


@pytest.mark.parametrize("outcome", outcomes(), ids=lambda o: str(o.type))
def test_every_event_the_code_builds_is_its_documented_message(outcome: Outcome) -> None:
    """Each event type, as the worker and the sweeper encode it (with its trace), validates
    against the schema its AsyncAPI message points at, parses with the repair tools' reader,
    and its key (the subject) is the documented one."""
    value = encode(outcome, time=NOW, trace=start())
    event = orjson.loads(value)
    name = EVENT_MESSAGES[event["type"]]
    assert_valid(name, event)
    key = key_of(name, outcome.mch_id, outcome.mch_order)
    assert event["subject"] == key
    assert parse_event(None, key.encode(), value).subject == key


@pytest.mark.parametrize(
    "letter",
    [
        dead_letter("invalid_fields", "field 'amt'", "paynotify.callbacks/0@7", b'{"a": 1}', NOW),
        dead_letter("undecodable", "not JSON", "paynotify.callbacks/0@8", b"\xff\x00", NOW),
        dead_letter("internal_error", "boom", "sweeper", b"", NOW, omit="9 bytes, refused"),
    ],
    ids=["payload", "payload_base64", "payload_omitted"],
)
def test_every_form_of_dead_letter_is_documented(letter: bytes) -> None:
    """A dead letter with its payload as JSON, as base64, or left out: valid, every member
    documented, and read back by the repair tools."""
    document = orjson.loads(letter)
    assert_valid("DeadLetter", document)
    assert_documented("DeadLetter", document)
    parse_dead_letter(Position("paynotify.dlq", 0, 0), None, letter)


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, key: str, value: bytes) -> None:
        self.sent.append((key, value))


class CorruptStore:
    """An outcome store whose order record is corrupt: the report is read, then refused."""

    async def begin(self, *_: object) -> None:
        raise CorruptRecordError("field 'amt' is not an integer")


def reconciler(dlq: Sink) -> Reconciler:
    return Reconciler(
        store=CorruptStore(), platform=None, merchants=MERCHANTS, events=Sink(), dlq=dlq,  # type: ignore[arg-type]
        pay_types=DOCUMENTED_PAY_TYPES, policy="required", schedule=(), clock=ManualClock(NOW),
    )  # fmt: skip


def envelope(fields: dict[str, str]) -> CallbackEnvelope:
    return CallbackEnvelope(
        fields=fields, key_id="sha256:k", received_at=NOW, peer=None,
        delivery_id="4f1c2a9e77d04d5e9a510c1b8f3e2d10", source=SOURCE_NOTIFICATION,
    )  # fmt: skip


async def test_the_workers_dead_letter_keys_are_the_documented_ones() -> None:
    """A report that was read is dead-lettered under the documented mch_id:mch_order; one
    refused before it was read (its merchant unknown), under its delivery id, as documented."""
    dlq = Sink()
    work = Work(envelope=envelope(notification()), origin="paynotify.callbacks/0@7")
    assert await reconciler(dlq).handle(work) is Settlement.DEAD_LETTERED
    unknown = Work(envelope=envelope(notification(mch_id="m2other")), origin="x/0@1")
    assert await reconciler(dlq).handle(unknown) is Settlement.DEAD_LETTERED
    (read_key, read), (unread_key, unread) = dlq.sent
    assert (orjson.loads(read)["reason"], read_key) == (
        "corrupt_order_record", key_of("DeadLetter"),
    )  # fmt: skip
    assert (orjson.loads(unread)["reason"], unread_key) == (
        "unknown_merchant", "4f1c2a9e77d04d5e9a510c1b8f3e2d10",
    )  # fmt: skip
    assert "delivery_id" in resolve(message("DeadLetter")["traits"][0])["bindings"]["kafka"][
        "key"]["description"]  # fmt: skip
    for _, value in dlq.sent:
        assert_valid("DeadLetter", orjson.loads(value))


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, str, Any]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: str, headers: Any = None) -> None:
        self.sent.append((topic, value, key, headers))


async def test_the_orders_consumers_dead_letters_keep_the_messages_key() -> None:
    """An order.created that cannot be recorded is dead-lettered under its own key (the
    documented mch_id:mch_order), and a keyless one under its origin."""
    producer = Producer()
    consumer = OrdersConsumer(
        Settings(), None, producer=producer, clock=ManualClock(NOW), merchants={MCH_ID},  # type: ignore[arg-type]
        dlq_topic="dlq",
    )  # fmt: skip
    bad = orjson.dumps({**ORDER_CREATED, "amt": "100 yuan"})
    for key in (key_of("OrderCreated").encode(), None):
        consumer_record = SimpleNamespace(
            topic="paynotify.orders", partition=3, offset=1207, key=key, value=bad
        )
        origin = "paynotify.orders/3@1207"  # as the consumer runtime names it
        assert await consumer.process(consumer_record, origin, asyncio.Event())  # type: ignore[arg-type]
    [(_, keyed, keyed_key, _), (_, _, keyless_key, _)] = producer.sent
    assert keyed_key == key_of("DeadLetter")
    assert keyless_key == "paynotify.orders/3@1207"
    assert_valid("DeadLetter", orjson.loads(keyed))


# --- the sweeper: forwards, expiries, dead letters ---------------------------------------------


def sweep_order(producer: Producer, book: MemoryOrderBook, clock: ManualClock) -> SweepOrder:
    return SweepOrder(
        book, ScriptedPlatform({ORDER: report()}), producer,  # others: 103, not found
        clock=clock, schedule=SweepSchedule.scaled(time_scale=1.0, order_expiry=60.0),
        rate=10.0, callbacks_topic="callbacks", events_topic="events", dlq_topic="dlq",
    )  # fmt: skip


async def test_the_sweepers_messages_and_keys_are_the_documented_ones() -> None:
    """The sweeper's three writes, each made by sweeping a claimed order: a paid answer
    forwarded as a query-sourced envelope, an order.expired event for an order unpaid at its
    expiry, a dead letter for an order given up (its record unreadable). Each validates against
    its message and carries the documented key."""
    producer = Producer()
    clock = ManualClock(NOW)
    book = MemoryOrderBook(clock)
    paid, unpaid = record(), record(mch_order="P202611270002")
    for order in (paid, unpaid):
        await book.record(order)
    swept = sweep_order(producer, book, clock)
    for order in (paid, unpaid):
        await swept.sweep(order.order_key, await book.entry(MCH_ID, order.mch_order))
        clock.advance(1.0)  # past the pacer's next slot: no query waits for the clock
    await swept.sweep(paid.order_key, CorruptRecordError("not a hash"))  # swept again, unreadable
    forward, event, letter = producer.sent

    assert (forward[0], forward[2]) == ("callbacks", key_of("CallbackEnvelope"))
    assert_valid("CallbackEnvelope", orjson.loads(forward[1]))
    assert orjson.loads(forward[1])["source"] == SOURCE_QUERY
    assert Draft202012Validator(message("CallbackEnvelope")["headers"]).is_valid(
        {name: value.decode() for name, value in forward[3]}
    )
    # The documented key is the order's `mch_id:mch_order` (the example's order is `paid`).
    assert key_of(EVENT_MESSAGES[EventType.ORDER_EXPIRED]) == paid.order_key
    assert (event[0], event[2]) == ("events", unpaid.order_key)
    assert_valid(EVENT_MESSAGES[EventType.ORDER_EXPIRED], orjson.loads(event[1]))
    assert "traceparent" in orjson.loads(event[1])
    assert (letter[0], letter[2]) == ("dlq", key_of("DeadLetter"))
    assert_valid("DeadLetter", orjson.loads(letter[1]))


def test_the_documented_sources_are_the_ones_the_workers_take() -> None:
    """CallbackEnvelope's `source` enum is what the workers settle (others are dead-lettered as
    `unknown_source`), and both producers' sources are in it."""
    documented = set(payload_schema("CallbackEnvelope")["properties"]["source"]["enum"])
    assert documented == set(SOURCES) == {SOURCE_NOTIFICATION, SOURCE_QUERY}
    envelope_ = query_envelope(
        OrderQueryAnswer(report=report(), key_id="sha256:k", raw=notification()),
        received_at=NOW, delivery_id="0" * 32, answer_sign_includes_envelope=False,
    )  # fmt: skip
    assert_valid("CallbackEnvelope", orjson.loads(envelope_.encode()))
