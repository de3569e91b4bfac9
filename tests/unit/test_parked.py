"""Parked notifications' values: what the ingress writes reads back; anything else is refused
with a reason (a Redis value is input like any other)."""

from __future__ import annotations

import orjson
import pytest

from shared.adapters.kafka import CallbackEnvelope
from shared.adapters.parked import (
    MAX_PARKED_BYTES,
    ParkedRecordError,
    decode_parked,
    encode_parked,
    fingerprint,
)

pytestmark = pytest.mark.unit

FIELDS = {"mch_id": "m1", "mch_order": "D1", "amt": "100", "status": "2", "sign": "ab" * 16}
KEY = "m1:D1"


def envelope(fields: dict[str, str] = FIELDS) -> CallbackEnvelope:
    return CallbackEnvelope(
        fields=fields,
        key_id="sha256:k",
        received_at=1700000000.5,
        peer="203.0.113.7",
        delivery_id="0" * 32,
        source="notification",
    )


def test_a_parked_notification_reads_back_byte_for_byte() -> None:
    value = encode_parked(KEY, envelope(), 1700000001.0)
    parked = decode_parked(fingerprint(FIELDS).encode(), value)
    assert parked.key == KEY
    assert parked.parked_at == 1700000001.0
    assert parked.envelope == envelope().encode()  # what the ingress would have published


def test_the_fingerprint_is_the_notification_not_the_delivery() -> None:
    reordered = dict(reversed(FIELDS.items()))
    assert fingerprint(reordered) == fingerprint(FIELDS)  # another try of the same report
    assert fingerprint({**FIELDS, "status": "1"}) != fingerprint(FIELDS)
    assert fingerprint({**FIELDS, "origin_order": "D0"}) != fingerprint(FIELDS)


def _document(**changes: object) -> bytes:
    document = orjson.loads(encode_parked(KEY, envelope(), 1.0))
    document.update(changes)
    return orjson.dumps({k: v for k, v in document.items() if v is not None})


GOOD_FIELD = fingerprint(FIELDS).encode()


@pytest.mark.parametrize(
    ("field", "raw", "reason"),
    [
        (GOOD_FIELD, b"not json", "not JSON"),
        (GOOD_FIELD, b"[1]", "not a version 1 object"),
        (GOOD_FIELD, _document(v=2), "not a version 1 object"),
        (GOOD_FIELD, _document(key=7), "key and envelope must be strings"),
        (GOOD_FIELD, _document(envelope={"fields": {}}), "key and envelope must be strings"),
        (GOOD_FIELD, _document(parked_at="soon"), "parked_at must be a number"),
        (GOOD_FIELD, _document(parked_at=True), "parked_at must be a number"),
        (GOOD_FIELD, _document(envelope='{"fields": 1}'), "parked envelope: envelope fields"),
        (GOOD_FIELD, _document(key="m1:D2"), "key does not match"),
        (b"0" * 64, _document(), "field does not match"),
        (GOOD_FIELD, b" " * (MAX_PARKED_BYTES + 1), "over"),
    ],
)
def test_anything_else_is_refused_with_its_reason(field: bytes, raw: bytes, reason: str) -> None:
    with pytest.raises(ParkedRecordError, match=reason):
        decode_parked(field, raw)


def test_an_envelope_without_an_order_is_refused() -> None:
    fields = {"mch_id": "m1", "sign": "x"}
    value = encode_parked("m1:", envelope(fields), 1.0)
    with pytest.raises(ParkedRecordError, match="does not match the envelope's order"):
        decode_parked(fingerprint(fields).encode(), value)
