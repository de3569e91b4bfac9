"""The callbacks envelope: what the ingress puts on `paynotify.callbacks`, byte for byte."""

from __future__ import annotations

import orjson
import pytest

from shared.adapters.kafka import (
    CallbackEnvelope,
    EnvelopeError,
    encode_key,
    encode_value,
)
from shared.domain.events import SOURCE_NOTIFICATION

pytestmark = pytest.mark.unit

ENVELOPE = CallbackEnvelope(
    fields={"mch_id": "m1", "remark": "产品", "sign": "ab" * 16},
    key_id="sha256:0123456789ab",
    received_at=1_700_000_000.25,
    peer="203.0.113.7",
    delivery_id="0" * 32,
    source=SOURCE_NOTIFICATION,
)


def test_wire_form_is_the_documented_json_object() -> None:
    """Exactly these keys, fields in the order received, UTF-8 text unescaped."""
    raw = ENVELOPE.encode()
    assert orjson.loads(raw) == {
        "fields": {"mch_id": "m1", "remark": "产品", "sign": "ab" * 16},
        "key_id": "sha256:0123456789ab",
        "received_at": 1_700_000_000.25,
        "peer": "203.0.113.7",
        "delivery_id": "0" * 32,
        "source": "notification",
    }
    assert "产品".encode() in raw
    assert list(orjson.loads(raw)["fields"]) == ["mch_id", "remark", "sign"]


def test_the_producer_serializers_encode_the_same_bytes() -> None:
    """What the ingress hands the producer is serialized like `encode`; keys are UTF-8."""
    assert encode_value(ENVELOPE) == ENVELOPE.encode()
    assert encode_value(b"raw") == b"raw"
    assert encode_key("m1:订单") == "m1:订单".encode()
    assert encode_key(None) is None


def test_decode_round_trips() -> None:
    """Workers read back exactly what the ingress wrote."""
    assert CallbackEnvelope.decode(ENVELOPE.encode()) == ENVELOPE
    no_peer = CallbackEnvelope.decode(
        orjson.dumps({**orjson.loads(ENVELOPE.encode()), "peer": None, "received_at": 5})
    )
    assert no_peer.peer is None
    assert no_peer.received_at == 5.0


@pytest.mark.parametrize(
    "change",
    [
        {"fields": {"a": 1}},
        {"fields": []},
        {"key_id": None},
        {"received_at": "now"},
        {"received_at": True},
        {"peer": 7},
        {"delivery_id": 1},
        {"source": ""},
    ],
)
def test_decode_refuses_other_shapes(change: dict[str, object]) -> None:
    """A message that is not an envelope is named as such, not half-read."""
    raw = orjson.dumps({**orjson.loads(ENVELOPE.encode()), **change})
    with pytest.raises(EnvelopeError):
        CallbackEnvelope.decode(raw)


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'"x"'])
def test_decode_refuses_non_objects(raw: bytes) -> None:
    """Garbage on the topic raises EnvelopeError, not a bare JSON or type error."""
    with pytest.raises(EnvelopeError):
        CallbackEnvelope.decode(raw)
