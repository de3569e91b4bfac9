"""Domain events as CloudEvents: every emitted event validates against its shipped JSON Schema,
ids are deterministic per merchant, order and type, and no key or signature leaks out."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from shared import topics
from shared.domain.decision import (
    Notice,
    QueryAnswer,
    decide,
    decide_expiry,
    record_order,
    requery_schedule,
)
from shared.domain.events import (
    REFUSING,
    AnswerStatus,
    EventType,
    Outcome,
    PaymentReconciled,
    Reason,
    encode,
    event_id,
    rfc3339,
    to_cloudevent,
)
from shared.domain.orders import OrderRecord, OrderState
from shared.protocol.payment import PaymentReport, PaymentStatus
from shared.trace import start

if TYPE_CHECKING:
    from shared.domain.decision import RecordsPolicy

pytestmark = pytest.mark.unit

MCH_ID = "t9awtvk6dn"
ORDER = "ORD-20261127-0001"
UPSTREAM_ORDER = "UP-8812731"
ASKED = 100_000
CREATED_AT = 1_800_000_000
NOW = 1_800_000_123.25
SCHEDULE = requery_schedule(1.0)


@cache
def validator(event_type: str) -> Draft202012Validator:
    """The schema as shipped in the package (pyproject's package data), not read by path."""
    text = resources.files("shared").joinpath("schemas", f"{event_type}.json").read_text("utf-8")
    return Draft202012Validator(json.loads(text))


def assert_valid(event: dict[str, Any]) -> None:
    errors = [error.message for error in validator(event["type"]).iter_errors(event)]
    assert errors == [], errors


def make_report(
    *,
    repeat: bool = False,
    service: int = 10,
    amt: int = ASKED,
    status: PaymentStatus = PaymentStatus.PAID,
) -> PaymentReport:
    return PaymentReport(
        mch_id=MCH_ID,
        pay_type=service,
        mch_order=UPSTREAM_ORDER if repeat else ORDER,
        amt=amt,
        mch_amt=ASKED,
        amt_type="cny",
        status=status,
        created_at=CREATED_AT,
        success_at=CREATED_AT + 42 if status is PaymentStatus.PAID else None,
        origin_order=ORDER if repeat else None,
        call="cart-7",
        sign_type="md5",
    )


def make_record(*, amt: int = ASKED, state: OrderState = OrderState.PENDING) -> OrderRecord:
    return OrderRecord(MCH_ID, ORDER, amt=amt, pay_type=10, created_at=CREATED_AT, state=state)


def decided(
    report: PaymentReport,
    answer: PaymentReport | None,
    record: OrderRecord | None,
    *,
    policy: RecordsPolicy = "required",
    requeries: int = 0,
) -> PaymentReconciled:
    decision = decide(
        Notice(report=report, delivery_ids=("d-1",), key_id="k-current"),
        QueryAnswer(report=answer, queried_at=CREATED_AT + 60),
        record,
        policy=policy,
        requeries_done=requeries,
        schedule=SCHEDULE,
    )
    assert isinstance(decision, PaymentReconciled), decision
    return decision


def one_of_each() -> dict[EventType, Outcome]:
    """One outcome of every type, each reached through the decision functions."""
    paid = make_report()
    expired = decide_expiry(make_record(), QueryAnswer(report=None, queried_at=CREATED_AT + 99))
    assert expired is not None
    outcomes: list[Outcome] = [
        decided(paid, paid, make_record()),
        decided(make_report(repeat=True), make_report(repeat=True), make_record()),
        decided(paid, paid, make_record(amt=ASKED + 1)),
        decided(paid, None, make_record(), requeries=len(SCHEDULE)),
        decided(paid, paid, None),
        expired,
    ]
    return {outcome.type: outcome for outcome in outcomes}


ALL_TYPES = sorted(EventType)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_every_type_has_a_valid_draft_2020_12_schema(event_type: EventType) -> None:
    """Each event type ships a schema that is itself valid JSON Schema 2020-12 and names it."""
    schema = validator(event_type).schema
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["type"] == {"const": str(event_type)}


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_an_event_of_every_type_validates_against_its_schema(event_type: EventType) -> None:
    """A decided outcome of each type, as a CloudEvent, passes its own schema."""
    event = to_cloudevent(one_of_each()[event_type], time=NOW)
    assert event["type"] == event_type
    assert_valid(event)


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_an_event_with_trace_context_validates_and_a_bad_one_does_not(
    event_type: EventType,
) -> None:
    """The CloudEvents `traceparent` extension: the decision's span, in the W3C format."""
    trace = start()
    event = to_cloudevent(one_of_each()[event_type], time=NOW, trace=trace)
    assert event["traceparent"] == str(trace)
    assert_valid(event)
    assert not validator(event_type).is_valid({**event, "traceparent": "00-forged"})


@pytest.mark.parametrize("event_type", ALL_TYPES)
def test_an_event_fails_every_other_types_schema(event_type: EventType) -> None:
    """Schemas are specific: an event never passes the schema of another type."""
    event = to_cloudevent(one_of_each()[event_type], time=NOW)
    for other in ALL_TYPES:
        if other != event_type:
            assert not validator(other).is_valid(event)


def test_the_cloudevent_attributes() -> None:
    """specversion 1.0, id, source, type, subject mch_id:mch_order, RFC 3339 time, JSON data."""
    outcome = one_of_each()[EventType.PAYMENT_SUCCEEDED]
    event = to_cloudevent(outcome, time=NOW)
    assert {k: v for k, v in event.items() if k != "data"} == {
        "specversion": "1.0",
        "id": event_id(EventType.PAYMENT_SUCCEEDED, MCH_ID, ORDER),
        "source": "paynotify/worker",
        "type": "paynotify.payment.succeeded",
        "subject": f"{MCH_ID}:{ORDER}",
        "time": "2027-01-15T08:02:03.250Z",
        "datacontenttype": "application/json",
    }
    assert to_cloudevent(one_of_each()[EventType.ORDER_EXPIRED], time=NOW)["source"] == (
        "paynotify/sweeper"
    )


def test_the_data_uses_the_platforms_field_names_and_integer_li() -> None:
    """data carries the payment in the platform's names, amounts as integers in li, and the
    decision's basis."""
    data = to_cloudevent(one_of_each()[EventType.PAYMENT_SUCCEEDED], time=NOW)["data"]
    assert data == {
        "mch_id": MCH_ID,
        "mch_order": ORDER,
        "origin_order": None,
        "pay_type": 10,
        "amt": ASKED,
        "mch_amt": ASKED,
        "amt_type": "cny",
        "paid_at": CREATED_AT + 42,
        "late": False,
        "source": "notification",
        "delivery_ids": ["d-1"],
        "key_id": "k-current",
        "queried_at": CREATED_AT + 60,
        "answer": "paid",
        "requeries": 0,
    }


def test_refusing_events_carry_a_machine_readable_reason() -> None:
    """amount_mismatch, unconfirmed and unknown_order carry `reason`; a mismatch also names the
    field that disagreed with the value it should have had."""
    events = {t: to_cloudevent(o, time=NOW)["data"] for t, o in one_of_each().items()}
    for event_type in REFUSING:
        assert events[event_type]["reason"] in set(Reason)
    for event_type in set(EventType) - REFUSING:
        assert "reason" not in events[event_type]
    mismatch = events[EventType.PAYMENT_AMOUNT_MISMATCHED]
    assert mismatch["reason"] == "record_amount_differs"
    assert mismatch["expected"] == {"mch_amt": ASKED + 1}


def test_a_repeat_payment_event_carries_both_order_numbers() -> None:
    """The subject is the repeat payment's own number; origin_order names the merchant's order."""
    event = to_cloudevent(one_of_each()[EventType.PAYMENT_REPEATED], time=NOW)
    assert event["subject"] == f"{MCH_ID}:{UPSTREAM_ORDER}"
    assert (event["data"]["mch_order"], event["data"]["origin_order"]) == (UPSTREAM_ORDER, ORDER)


def test_encode_gives_the_same_event_as_json_bytes() -> None:
    """encode is to_cloudevent as compact orjson bytes."""
    for outcome in one_of_each().values():
        raw = encode(outcome, time=NOW)
        assert isinstance(raw, bytes)
        assert orjson.loads(raw) == to_cloudevent(outcome, time=NOW)


def test_the_id_follows_the_documented_rule() -> None:
    """id = uuid5(uuid5(NAMESPACE_URL, "urn:paynotify:events"), type + LF + mch_id + LF +
    mch_order); pinned, since changing it would break every consumer's dedupe."""
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "urn:paynotify:events")
    name = f"paynotify.payment.succeeded\n{MCH_ID}\n{ORDER}"
    assert event_id(EventType.PAYMENT_SUCCEEDED, MCH_ID, ORDER) == str(uuid.uuid5(namespace, name))
    assert event_id(EventType.PAYMENT_SUCCEEDED, MCH_ID, ORDER) == (
        "55cfe4b2-2218-58f1-b14a-0a99cb69d19c"
    )


def test_a_redelivery_that_decides_the_same_gets_the_same_id() -> None:
    """Another delivery, key, source, query time, re-query count and event time: same id."""
    paid = make_report()
    first = decided(paid, paid, make_record())
    again = decide(
        Notice(report=paid, source="query", delivery_ids=("d-9", "d-10"), key_id="k-previous"),
        QueryAnswer(report=paid, queried_at=CREATED_AT + 3000),
        make_record(),
        policy="required",
        requeries_done=4,
        schedule=SCHEDULE,
    )
    assert isinstance(again, PaymentReconciled)
    assert to_cloudevent(first, time=NOW)["id"] == to_cloudevent(again, time=NOW + 500)["id"]


def test_ids_differ_across_types_and_orders() -> None:
    """One order's six possible outcomes have six ids; another order or merchant, another id."""
    ids = {event_id(t, MCH_ID, ORDER) for t in EventType}
    assert len(ids) == len(EventType)
    other = {
        event_id(EventType.PAYMENT_SUCCEEDED, MCH_ID, "ORD-2"),
        event_id(EventType.PAYMENT_SUCCEEDED, "m2otherco", ORDER),
    }
    assert len(ids | other) == len(EventType) + 2
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert event_id(EventType.PAYMENT_SUCCEEDED, "ab", "c") != event_id(
        EventType.PAYMENT_SUCCEEDED, "a", "bc"
    )


def test_a_newline_in_an_id_part_is_refused() -> None:
    """Field rules forbid control characters; event_id refuses rather than risk ambiguity."""
    with pytest.raises(ValueError, match="newline"):
        event_id(EventType.PAYMENT_SUCCEEDED, MCH_ID, "a\nb")


def test_no_key_or_signature_leaves_in_an_event() -> None:
    """Fields outside the event's names (a signature, a stray key, the merchant's `call`) never
    appear in the event, even when the report carried them."""
    secret = "25e72d96d0ffe0bb74373344d986df3c"
    leaky = replace(make_report(), extra=(("mch_key", secret), ("sign", "5883eb7db6fc2828")))
    for outcome in (decided(leaky, leaky, make_record()), decided(leaky, None, None, requeries=9)):
        raw = encode(outcome, time=NOW)
        assert secret.encode() not in raw
        assert b"5883eb7db6fc2828" not in raw
        assert b"cart-7" not in raw
        assert {"sign", "sign_type", "mch_key", "call"}.isdisjoint(orjson.loads(raw)["data"])


def test_rfc3339_times() -> None:
    """Times are UTC with milliseconds and a Z; non-finite times are refused."""
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_800_000_000.5) == "2027-01-15T08:00:00.500Z"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            rfc3339(bad)


def test_outcome_invariants_are_enforced() -> None:
    """A refusing outcome needs a reason of its own type; others take none; only a mismatch
    carries expected values; order.expired is not a payment outcome."""
    base = one_of_each()[EventType.PAYMENT_SUCCEEDED]
    assert isinstance(base, PaymentReconciled)
    with pytest.raises(ValueError, match="needs a reason"):
        replace(base, type=EventType.PAYMENT_UNCONFIRMED)
    with pytest.raises(ValueError, match="needs a reason"):
        replace(base, type=EventType.PAYMENT_UNCONFIRMED, reason=Reason.NO_ORDER_RECORD)
    with pytest.raises(ValueError, match="takes no reason"):
        replace(base, reason=Reason.PLATFORM_UNPAID)
    with pytest.raises(ValueError, match="expected"):
        replace(base, expected=(("amt", 1),))
    with pytest.raises(ValueError, match="not a payment outcome"):
        replace(base, type=EventType.ORDER_EXPIRED)


# --- every emitted event, for any input --------------------------------------------------------

AMOUNTS = st.sampled_from([ASKED, ASKED + 1, 1, 10**15])


@st.composite
def outcomes(draw: st.DrawFn) -> Outcome:
    repeat = draw(st.booleans())
    report = replace(
        make_report(repeat=repeat, service=draw(st.sampled_from([10, 22, 42, 44]))),
        amt=draw(AMOUNTS),
        mch_amt=draw(AMOUNTS),
        success_at=draw(st.none() | st.integers(0, 2**40)),
        origin_order=draw(st.sampled_from([ORDER, "o" * 50])) if repeat else None,
    )
    answer = draw(
        st.none()
        | st.just(report)
        | st.builds(replace, st.just(report), status=st.sampled_from(PaymentStatus))
        | st.builds(replace, st.just(report), amt=AMOUNTS, pay_type=st.sampled_from([10, 43]))
    )
    record = draw(
        st.none()
        | st.builds(
            OrderRecord,
            mch_id=st.just(MCH_ID),
            mch_order=st.just(record_order(report)),
            amt=AMOUNTS,
            pay_type=st.just(10),
            created_at=st.integers(0, 2**40),
            state=st.sampled_from(OrderState),
        )
    )
    queried_at = draw(st.integers(0, 2**40))
    if draw(st.booleans()) and record is not None:
        expired = decide_expiry(
            record, QueryAnswer(report=None, queried_at=queried_at)
        )  # 103 at expiry
        assert expired is not None
        return expired
    decision = decide(
        Notice(
            report=report,
            source=draw(st.sampled_from(["notification", "query"])),
            delivery_ids=tuple(draw(st.lists(st.uuids().map(str), max_size=3))),
            key_id=draw(st.none() | st.text(min_size=1, max_size=16)),
        ),
        QueryAnswer(report=answer, queried_at=queried_at),
        record,
        policy=draw(st.sampled_from(["required", "optional"])),
        requeries_done=len(SCHEDULE),  # past the schedule, so every case reaches an outcome
        schedule=SCHEDULE,
    )
    assert isinstance(decision, PaymentReconciled)
    return decision


@given(outcomes(), st.floats(0, 4_102_444_800))
def test_every_emitted_event_validates_against_its_schema(outcome: Outcome, time: float) -> None:
    """Whatever is decided, the event passes its type's schema and round-trips through JSON."""
    event = orjson.loads(encode(outcome, time=time))
    assert_valid(event)
    assert event["id"] == event_id(outcome.type, outcome.mch_id, outcome.mch_order)
    assert event["data"]["answer"] in set(AnswerStatus)


# --- the documents -----------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_examples() -> list[dict[str, Any]]:
    text = (DOCS / "events.md").read_text("utf-8")
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", text, re.DOTALL)]


def test_every_event_type_has_one_valid_example_in_the_docs() -> None:
    """docs/events.md shows one example per type; each passes its schema and has the id the
    rule gives, so the documentation cannot drift from the code."""
    examples = documented_examples()
    assert sorted(example["type"] for example in examples) == sorted(map(str, EventType))
    for example in examples:
        assert_valid(example)
        data = example["data"]
        assert example["id"] == event_id(
            EventType(example["type"]), data["mch_id"], data["mch_order"]
        )
        assert example["subject"] == f"{data['mch_id']}:{data['mch_order']}"


def test_the_asyncapi_document_names_every_topic_and_event_schema() -> None:
    """docs/asyncapi.yaml describes each project topic and points at each shipped event schema."""
    text = (DOCS / "asyncapi.yaml").read_text("utf-8")
    assert text.startswith("asyncapi: 3.0.0\n")
    for topic in (topics.CALLBACKS, topics.EVENTS, topics.ORDERS, topics.DLQ, topics.REJECTED):
        assert f"address: {topic}\n" in text
    for event_type in EventType:
        assert f"$ref: '../shared/schemas/{event_type}.json'" in text
