"""The sweeper's last-run mark in Redis reads back, and anything else is refused with a reason."""

from __future__ import annotations

import orjson
import pytest

from shared.domain.orders import CorruptRecordError
from shared.domain.sweep import SweepMark

pytestmark = pytest.mark.unit


def test_a_mark_reads_back() -> None:
    mark = SweepMark("pod-7:42", 1_800_000_000.5, 3)
    assert SweepMark.decode(mark.encode()) == mark


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"nope", "not JSON"),
        (b"[]", "not an object"),
        (orjson.dumps({"instance": 1, "at": 1, "claimed": 0}), "instance"),
        (orjson.dumps({"instance": "x" * 201, "at": 1, "claimed": 0}), "instance"),
        (orjson.dumps({"instance": "a", "at": "now", "claimed": 0}), "at must be"),
        (orjson.dumps({"instance": "a", "at": True, "claimed": 0}), "at must be"),
        (orjson.dumps({"instance": "a", "at": 1, "claimed": -1}), "claimed"),
        (orjson.dumps({"instance": "a", "at": 1, "claimed": 1.5}), "claimed"),
    ],
)
def test_anything_else_is_refused(raw: bytes, says: str) -> None:
    with pytest.raises(CorruptRecordError, match=says):
        SweepMark.decode(raw)
