"""Which offset may be committed when messages of a partition settle out of order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.offsets import PartitionOffsets

pytestmark = pytest.mark.unit


def test_nothing_is_committable_before_the_first_message_settles() -> None:
    """A later message settling first does not move the position past an earlier one."""
    offsets = PartitionOffsets()
    for offset in (10, 11, 12):
        offsets.take(offset)
    offsets.settle(12)
    offsets.settle(11)
    assert offsets.committable() is None
    offsets.settle(10)
    assert offsets.committable() == 13


def test_position_is_reported_once_until_it_moves() -> None:
    """After a commit, the same position is not offered again."""
    offsets = PartitionOffsets()
    offsets.take(0)
    offsets.take(1)
    offsets.settle(0)
    assert offsets.committable() == 1
    offsets.committed(1)
    assert offsets.committable() is None
    offsets.settle(1)
    assert offsets.committable() == 2


def test_gaps_in_offsets_are_fine() -> None:
    """Compacted or transactional topics skip offsets; the position follows the taken ones."""
    offsets = PartitionOffsets()
    offsets.take(5)
    offsets.take(9)
    offsets.settle(5)
    offsets.settle(9)
    assert offsets.committable() == 10
    assert offsets.in_flight == 0


def test_offsets_must_be_taken_in_order() -> None:
    """Taking an offset at or below the last one is a bug in the caller."""
    offsets = PartitionOffsets()
    offsets.take(3)
    with pytest.raises(ValueError, match="out of order"):
        offsets.take(3)


@given(st.permutations(list(range(30))), st.integers(min_value=0, max_value=30))
def test_committed_position_never_passes_an_unsettled_offset(order: list[int], done: int) -> None:
    """Whatever order messages settle in, the position is the end of the settled prefix."""
    offsets = PartitionOffsets()
    for offset in range(30):
        offsets.take(offset)
    settled = set(order[:done])
    for offset in order[:done]:
        offsets.settle(offset)
    expected_prefix = 0
    while expected_prefix in settled:
        expected_prefix += 1
    position = offsets.committable()
    assert position == (expected_prefix if expected_prefix > 0 else None)


def test_a_position_not_committed_is_offered_again() -> None:
    """A commit cycle skipped (Kafka or Redis away) used to lose the position it had computed:
    the partition's last messages then stayed uncommitted until another one settled."""
    offsets = PartitionOffsets()
    offsets.take(0)
    offsets.take(1)
    offsets.settle(0)
    offsets.settle(1)
    assert offsets.committable() == 2  # this cycle's commit fails...
    assert offsets.committable() == 2  # ...so the next cycle offers it again
    offsets.committed(2)
    assert offsets.committable() is None
    offsets.take(2)
    assert offsets.committable() is None  # taken, not settled
    offsets.settle(2)
    assert offsets.committable() == 3
