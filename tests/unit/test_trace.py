"""W3C trace context: what is valid is continued, anything else is never trusted or echoed; the
trace travels through the retry set, the parked hash and into the outcome event."""

from __future__ import annotations

import orjson
import pytest

from shared.adapters.kafka import CallbackEnvelope, EnvelopeError
from shared.adapters.parked import ParkedRecordError, decode_parked, encode_parked, fingerprint
from shared.service.settle import Work
from shared.trace import TraceParent, continue_or_start, from_headers, parse, start

pytestmark = pytest.mark.unit

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_parsed_and_written_back_the_same() -> None:
    trace = parse(VALID)
    assert trace == TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert str(trace) == VALID
    assert parse(VALID.encode()) == trace


@pytest.mark.parametrize(
    "value",
    [
        None, "", "garbage", VALID.upper(), "01" + VALID[2:], "ff" + VALID[2:], VALID + "-00",
        " " + VALID, VALID[:-1], "00-" + "0" * 32 + "-00f067aa0ba902b7-01", 7, ["x"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", "\u0660" * 55, b"\xff" * 55,
    ],
)  # fmt: skip
def test_anything_else_is_absent(value: object) -> None:
    assert parse(value) is None


def test_the_ingress_continues_a_valid_trace_and_starts_one_otherwise() -> None:
    continued = continue_or_start(VALID)
    assert continued.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert continued.span_id != "00f067aa0ba902b7"
    assert continued.flags == "01"
    started = continue_or_start("00-bogus")
    assert parse(str(started)) == started
    assert started.trace_id != continued.trace_id
    assert start().trace_id != start().trace_id


def test_the_header_is_found_among_a_records_headers() -> None:
    headers = (("content-type", b"x"), ("traceparent", VALID.encode()))
    assert from_headers(headers) == parse(VALID)
    assert from_headers((("traceparent", b"bad"),)) is None
    assert from_headers(None) is None
    assert from_headers(()) is None


ENVELOPE = CallbackEnvelope(
    fields={"mch_id": "m1", "mch_order": "D1", "sign": "ab" * 16},
    key_id="sha256:k",
    received_at=1.0,
    peer=None,
    delivery_id="0" * 32,
    source="notification",
)


def test_deferred_work_keeps_its_trace() -> None:
    trace = parse(VALID)
    work = Work(envelope=ENVELOPE, attempts=2, origin="t/0@1", trace=trace)
    assert Work.from_retry(work.to_retry()).trace == trace
    assert Work.from_retry(Work(envelope=ENVELOPE).to_retry()).trace is None
    forged = orjson.loads(work.to_retry()) | {"traceparent": "00-nope"}
    with pytest.raises(EnvelopeError, match="traceparent"):
        Work.from_retry(orjson.dumps(forged))


def test_a_parked_notification_keeps_its_trace() -> None:
    field = fingerprint(ENVELOPE.fields).encode()
    trace = parse(VALID)
    assert decode_parked(field, encode_parked("m1:D1", ENVELOPE, 1.0, trace)).trace == trace
    assert decode_parked(field, encode_parked("m1:D1", ENVELOPE, 1.0)).trace is None
    forged = orjson.loads(encode_parked("m1:D1", ENVELOPE, 1.0)) | {"traceparent": 7}
    with pytest.raises(ParkedRecordError, match="traceparent"):
        decode_parked(field, orjson.dumps(forged))
