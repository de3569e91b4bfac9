"""Decoding order-book hashes (shared/adapters/order_book.py), without Redis."""

from __future__ import annotations

import pytest

from shared.adapters.order_book import (
    decode_entry,
    decode_record,
    expired_marker_key,
    order_record_key,
    record_key_of,
)
from shared.domain.orders import CorruptRecordError, OrderRecord, OrderState

pytestmark = pytest.mark.unit

FULL = {
    b"mch_id": b"m1",
    b"mch_order": b"o-1",
    b"amt": b"10000",
    b"pay_type": b"10",
    b"created_at": b"1700000000",
    b"state": b"pending",
}


def test_keys_follow_the_documented_layout() -> None:
    """Record, index, marker keys are the ones docs/order-book.md and the workers use."""
    assert order_record_key("m1", "o-1") == "pn:order:{m1:o-1}"
    assert record_key_of(b"m1:o-1") == "pn:order:{m1:o-1}"
    assert expired_marker_key("m1", "o-1") == "pn:expired:{m1:o-1}"


def test_a_full_hash_decodes_to_the_record() -> None:
    """HGETALL's bytes become the frozen OrderRecord the decision function takes."""
    assert decode_record(FULL) == OrderRecord("m1", "o-1", 10_000, 10, 1_700_000_000)


def test_text_keys_and_book_keeping_fields_decode_too() -> None:
    """str mappings work as well, and the optional fields land in the entry."""
    mapping: dict[bytes | str, bytes | str] = {k.decode(): v.decode() for k, v in FULL.items()}
    mapping |= {
        "state": "settled",
        "outcome": "paynotify.payment.succeeded",
        "settled_at": "1700000100.250",
        "sweep_attempts": "3",
    }
    entry = decode_entry(mapping)
    assert entry is not None
    assert entry.record.state is OrderState.SETTLED
    assert entry.outcome == "paynotify.payment.succeeded"
    assert entry.settled_at == 1_700_000_100.25
    assert (entry.sweep_attempts, entry.sweep_failures) == (3, 0)


def test_empty_or_outcome_only_hashes_are_no_record() -> None:
    """No hash, or one holding only what an outcome write left, means no merchant record."""
    assert decode_record({}) is None
    assert decode_record({b"state": b"settled", b"outcome": b"x"}) is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({b"amt": b"-5"}, "amt"),
        ({b"amt": b"1.5"}, "amt"),
        ({b"state": b"paid"}, "state"),
        ({b"created_at": b""}, "created_at"),
        ({b"settled_at": b"soon"}, "settled_at"),
        ({b"mch_order": b"a&b=c"}, "mch_order"),
    ],
)
def test_malformed_records_raise_naming_the_field(change: dict[bytes, bytes], field: str) -> None:
    """A broken record is loud (CorruptRecordError names the field), never a silent None."""
    with pytest.raises(CorruptRecordError, match=field):
        decode_record(FULL | change)


def test_a_record_missing_a_field_is_corrupt() -> None:
    """A half-written record (say, no amount) cannot be used for the amount check."""
    partial = {k: v for k, v in FULL.items() if k != b"amt"}
    with pytest.raises(CorruptRecordError, match="amt"):
        decode_record(partial)


@pytest.mark.parametrize("change", [{b"amt": b"\xff"}, {b"sweep_stopped": b"\xfe"}])
def test_a_field_that_is_not_utf8_is_corrupt_not_a_crash(change: dict[bytes, bytes]) -> None:
    """Bytes that are not UTF-8 raised UnicodeDecodeError, which no caller expected (it ended
    the sweeper at every start); they are a CorruptRecordError like any other broken field."""
    with pytest.raises(CorruptRecordError, match="UTF-8"):
        decode_entry(FULL | change)


def test_the_sweepers_give_up_fields_decode() -> None:
    """Hopeless failures in a row and the reason the sweeper stopped polling land in the entry."""
    entry = decode_entry(FULL | {b"sweep_hopeless": b"2", b"sweep_stopped": b"platform_101"})
    assert entry is not None
    assert (entry.sweep_hopeless, entry.sweep_stopped) == (2, "platform_101")
    plain = decode_entry(FULL)
    assert plain is not None
    assert (plain.sweep_hopeless, plain.sweep_stopped) == (0, None)
