"""Waited writes (shared.adapters.replication) on a stand-in client: the script and WAIT go down
one pipeline (one connection) in that order, a short count is an outage, and nothing is waited
for when no replicas are asked. On a real primary and replica:
tests/integration/test_wait_replicas.py."""

from __future__ import annotations

from typing import Any

import pytest
from redis import exceptions

from shared.adapters.outages import REDIS_OUTAGES
from shared.adapters.replication import NotReplicatedError, ReplicatedWrites

pytestmark = pytest.mark.unit


class _Pipeline:
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.queued: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> _Pipeline:
        self.queued.append(args)
        return self

    async def execute(self) -> list[Any]:
        self.client.sent.append(self.queued)
        if self.client.moved:
            raise exceptions.MovedError("1234 127.0.0.1:7001")
        return ["answer", self.client.acknowledged]


class _Client:
    """Stands in for redis.asyncio.Redis: scripts record how they were called."""

    def __init__(self, acknowledged: int = 1, *, moved: bool = False) -> None:
        self.acknowledged = acknowledged
        self.moved = moved
        self.sent: list[list[tuple[Any, ...]]] = []  # each pipeline's commands, in order
        self.direct: list[list[str]] = []  # scripts run without a pipeline

    def pipeline(self, *, transaction: bool) -> _Pipeline:
        assert transaction is False  # WAIT inside MULTI does not block: it must not be one
        return _Pipeline(self)

    def register_script(self, source: str) -> Any:
        client = self

        async def call(keys: list[str], args: list[Any], client_: Any = None, **kw: Any) -> Any:
            target = kw.get("client", client_)
            if target is None:
                client.direct.append(list(keys))
                return "direct"
            return target.execute_command("EVALSHA", source[:10], len(keys), *keys, *args)

        return call


async def test_nothing_is_waited_for_when_no_replicas_are_asked() -> None:
    """The default: the script runs as before, no pipeline, no WAIT."""
    client = _Client()
    writes = ReplicatedWrites(client, replicas=0, timeout_ms=100)  # type: ignore[arg-type]
    assert await writes.run(client.register_script("return 1"), ["k"], []) == "direct"
    await writes.confirm("k")
    assert client.sent == []
    assert client.direct == [["k"]]


async def test_the_script_and_wait_share_one_pipeline_in_that_order() -> None:
    """WAIT follows the write on its own connection, with the asked count and timeout."""
    client = _Client(acknowledged=2)
    writes = ReplicatedWrites(client, replicas=2, timeout_ms=150)  # type: ignore[arg-type]
    assert await writes.run(client.register_script("return 1"), ["k"], ["a"]) == "answer"
    ((evalsha, wait),) = client.sent
    assert evalsha[0] == "EVALSHA"
    assert evalsha[2:] == (1, "k", "a")
    assert wait == ("WAIT", 2, 150)
    assert writes.last_shortfall is None


async def test_too_few_replicas_is_an_outage_and_marks_the_process_unready() -> None:
    """A short count raises NotReplicatedError (waited out like any Redis outage) and is kept
    for readiness until a waited write succeeds."""
    client = _Client(acknowledged=0)
    writes = ReplicatedWrites(client, replicas=1, timeout_ms=100)  # type: ignore[arg-type]
    with pytest.raises(NotReplicatedError, match="0 of 1 replicas acknowledged the write"):
        await writes.run(client.register_script("return 1"), ["k"], [])
    assert writes.last_shortfall == "0 of 1 replicas acknowledged"
    assert NotReplicatedError in REDIS_OUTAGES
    client.acknowledged = 1
    await writes.confirm("k")  # the touch-and-wait of an outcome found unpublished
    assert writes.last_shortfall is None
    assert client.sent[-1][-1] == ("WAIT", 1, 100)


async def test_a_moved_slot_is_retried_not_dead_lettered() -> None:
    """MOVED (a failover under way) from the node's own client: try again, an outage."""
    client = _Client(moved=True)
    writes = ReplicatedWrites(client, replicas=1, timeout_ms=100)  # type: ignore[arg-type]
    with pytest.raises(exceptions.TryAgainError, match=r"slot moved to 127\.0\.0\.1:7001"):
        await writes.run(client.register_script("return 1"), ["k"], [])
    assert exceptions.TryAgainError in REDIS_OUTAGES
