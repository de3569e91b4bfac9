"""Strict parsing of `order.created` messages (workers/orders_consumer.py), without Kafka."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shared.domain.orders import OrderRecord, OrderState
from shared.service.record_order import OrderMessageError, parse_order_created

pytestmark = pytest.mark.unit

GOOD: dict[str, Any] = {
    "type": "order.created",
    "mch_id": "m1",
    "mch_order": "o-1",
    "amt": 10_000,
    "pay_type": 10,
    "created_at": 1_700_000_000,
}
KEY = b"m1:o-1"


def _parse(document: object, key: bytes | None = KEY) -> OrderRecord:
    return parse_order_created(orjson.dumps(document), key)


def test_a_valid_message_is_a_pending_record() -> None:
    """The documented message becomes the pending OrderRecord the amount check will use."""
    assert _parse(GOOD) == OrderRecord("m1", "o-1", 10_000, 10, 1_700_000_000, OrderState.PENDING)


def test_digit_strings_and_unknown_members_are_accepted() -> None:
    """Integers as plain decimal strings work; extra members are ignored."""
    document = GOOD | {"amt": "10000", "created_at": "1700000000", "remark": "x"}
    assert _parse(document).amt == 10_000


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"type": "order.updated"}, "unknown_type"),
        ({"amt": 1.5}, "invalid_fields"),
        ({"amt": -1}, "invalid_fields"),
        ({"amt": 0}, "invalid_fields"),
        ({"amt": True}, "invalid_fields"),
        ({"amt": "1e3"}, "invalid_fields"),
        ({"amt": " 100"}, "invalid_fields"),
        ({"amt": 10**16}, "invalid_fields"),
        ({"pay_type": 99}, "invalid_fields"),
        ({"created_at": None}, "invalid_fields"),
        ({"mch_id": 5}, "invalid_fields"),
        ({"mch_id": ""}, "invalid_fields"),
        ({"mch_order": "x" * 51}, "invalid_fields"),
        ({"mch_order": "a&b=c"}, "invalid_fields"),
        ({"mch_order": "o-1\n"}, "invalid_fields"),
    ],
)
def test_invalid_messages_are_refused_with_a_reason(change: dict[str, Any], reason: str) -> None:
    """Each broken rule raises OrderMessageError with a machine-readable reason."""
    with pytest.raises(OrderMessageError) as caught:
        _parse(GOOD | change)
    assert caught.value.reason == reason


def test_a_missing_field_is_refused() -> None:
    """Without created_at there is no schedule and no expiry: refused."""
    document = {k: v for k, v in GOOD.items() if k != "created_at"}
    with pytest.raises(OrderMessageError, match="created_at"):
        _parse(document)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"order.created"', None])
def test_undecodable_messages_are_refused(raw: bytes | None) -> None:
    """Non-JSON or non-object values are `undecodable`."""
    with pytest.raises(OrderMessageError) as caught:
        parse_order_created(raw, KEY)
    assert caught.value.reason == "undecodable"


@pytest.mark.parametrize("key", [None, b"m1:o-2", b"m1"])
def test_the_key_must_name_the_order(key: bytes | None) -> None:
    """A message keyed otherwise than mch_id:mch_order would break per-order partitioning."""
    with pytest.raises(OrderMessageError) as caught:
        _parse(GOOD, key)
    assert caught.value.reason == "key_mismatch"


def test_refusals_never_quote_the_value() -> None:
    """The detail names the field and rule, not the (possibly secret or huge) value."""
    with pytest.raises(OrderMessageError) as caught:
        _parse(GOOD | {"mch_order": "secret-value&x"})
    assert "secret-value" not in str(caught.value)


def test_a_transfer_may_carry_the_sum_it_asked_the_payer_for() -> None:
    """Issue 10, hole 2: `transfer_amt` (optional) reaches the record; a bad one is refused."""
    document = GOOD | {"pay_type": 44, "transfer_amt": 10_013}
    assert _parse(document).transfer_amt == 10_013
    assert _parse(GOOD | {"pay_type": 44}).transfer_amt is None
    for bad in (0, -1, "1.5", True, 10**16):
        with pytest.raises(OrderMessageError) as caught:
            _parse(GOOD | {"transfer_amt": bad})
        assert caught.value.reason == "invalid_fields"
        assert "transfer_amt" in caught.value.detail


def test_an_order_of_a_merchant_without_a_key_is_refused() -> None:
    """Hole 11: an order of a merchant missing from the merchants file was recorded, and the
    sweeper then spent its budget failing to query it for ever. It is `unknown_merchant` now;
    a merchant with a key passes, and without a list of merchants nothing is checked."""
    value = orjson.dumps(GOOD | {"mch_id": "ghost"})
    with pytest.raises(OrderMessageError) as caught:
        parse_order_created(value, b"ghost:o-1", merchants=frozenset({"m1"}))
    assert caught.value.reason == "unknown_merchant"
    assert "ghost" not in caught.value.detail
    assert parse_order_created(orjson.dumps(GOOD), KEY, merchants=frozenset({"m1"})).mch_id == "m1"
    assert parse_order_created(value, b"ghost:o-1").mch_id == "ghost"
