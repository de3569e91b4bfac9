"""One owner per Redis key family: the order book's records and pending index are written by
shared/adapters/order_book.py alone. The outcome store settles a record in its own one-slot
script, but through the order book's `SETTLE_RECORD` fragment and `leave_pending`; a second
module spelling out a record's fields or the index's shards would let the two drift apart.
"""

from __future__ import annotations

import ast

import pytest

from shared.adapters import order_book, outcomes
from tests.support.manifests import ROOT

pytestmark = pytest.mark.unit

OWNER = "shared/adapters/order_book.py"
# Field names only the order book writes into a record (`state` and what comes with it).
RECORD_WRITES = ("'state'", "'settled_at'", "'sweep_stopped'", "'expired_at'")


def _strings(path: str) -> list[str]:
    tree = ast.parse((ROOT / path).read_text(), path)
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _production_modules() -> list[str]:
    return [
        str(path.relative_to(ROOT))
        for package in ("ingress", "workers", "shared")
        for path in sorted((ROOT / package).rglob("*.py"))
    ]


def test_only_the_order_book_writes_record_fields_in_lua() -> None:
    writers = {
        path
        for path in _production_modules()
        for text in _strings(path)
        if "redis.call(" in text and any(field in text for field in RECORD_WRITES)
    }
    assert writers == {OWNER}


def test_only_the_order_book_names_the_pending_index_shards() -> None:
    naming = {
        path
        for path in _production_modules()
        if path != "shared/adapters/redis_keys.py"  # where every key's spelling lives
        and "pending_keys" in (ROOT / path).read_text()
    }
    assert naming == {OWNER}


def test_the_outcome_store_settles_through_the_order_books_fragment() -> None:
    assert order_book.SETTLE_RECORD in outcomes._DECIDE
