"""Which offset of a partition may be committed: the end of the contiguous settled prefix.

Messages of one partition finish out of order (different orders run concurrently), but Kafka
commits a single position; committing past an unsettled message would lose it on a restart.
Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from collections import deque


class PartitionOffsets:
    """Offsets taken from one partition, in the order taken, and which of them are settled."""

    __slots__ = ("_committed", "_ready", "_settled", "_taken")

    def __init__(self) -> None:
        self._taken: deque[int] = deque()
        self._settled: set[int] = set()
        self._committed: int | None = None  # the position last committed (next offset to read)
        self._ready: int | None = None  # the end of the settled prefix: committable

    def take(self, offset: int) -> None:
        if self._taken and offset <= self._taken[-1]:
            raise ValueError(f"offset {offset} taken out of order (after {self._taken[-1]})")
        self._taken.append(offset)

    def settle(self, offset: int) -> None:
        self._settled.add(offset)

    @property
    def in_flight(self) -> int:
        return len(self._taken) - len(self._settled)

    def committable(self) -> int | None:
        """The position to commit now, or None when it has not moved since the last commit.
        Offered again until `committed` says it was: a cycle that could not commit (Kafka or
        Redis away) must not forget it."""
        while self._taken and self._taken[0] in self._settled:
            offset = self._taken.popleft()
            self._settled.discard(offset)
            self._ready = offset + 1
        if self._ready is None or self._ready == self._committed:
            return None
        return self._ready

    def committed(self, position: int) -> None:
        self._committed = position
