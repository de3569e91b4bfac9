"""Writes that must reach replicas before anything is published about them: a script, then
`WAIT replicas timeout` on the same connection (docs/scaling.md, Failover semantics).

WAIT counts the replicas that acknowledged the replication offset of *the connection's* last
write, so it must follow the write on the connection that made it. One Redis: a pipeline (not a
transaction: WAIT inside MULTI does not block) of EVALSHA and WAIT, which runs in order on one
pooled connection. A Redis Cluster: redis-py's cluster client picks a connection per command and
refuses scripts in its pipelines, so the same pipeline goes to a client of the node that owns the
key's slot (from the cluster client's slot map), one small pool per node.

A write that fewer replicas acknowledged in time is still on the primary: the caller treats it
as a Redis outage (`NotReplicatedError`), publishes nothing, and tries again later; the retry
finds the written value, and `confirm` makes a write on its connection and waits again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis import exceptions
from redis.asyncio import Redis

from shared.adapters.redis_client import POOL_TIMEOUT, GatedConnectionPool, Script, is_cluster

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio.cluster import RedisCluster

# Connections per cluster node for waited writes (a waited write holds one for WAIT's timeout).
NODE_CONNECTIONS = 64

# A write that changes nothing but is replicated (HSET of a field to the value it has), so that
# WAIT after it covers everything this primary took before, the found outcome included.
_TOUCH = """
local at = redis.call('HGET', KEYS[1], 'decided_at')
if at then redis.call('HSET', KEYS[1], 'decided_at', at) return 1 end
return 0
"""


class NotReplicatedError(exceptions.RedisError):
    """The primary took the write, but fewer replicas than asked acknowledged it in time: a
    failover now could lose it. Waited out like an outage; nothing is published meanwhile."""


class ReplicatedWrites:
    """Runs scripts followed by WAIT (`replicas` > 0), or plainly (`replicas` 0)."""

    def __init__(self, redis: Redis, *, replicas: int, timeout_ms: int) -> None:
        self._redis = redis
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._nodes: dict[str, Redis] = {}
        self._touch = Script(redis, _TOUCH)
        # Readiness: the last waited write's answer (None: none yet).
        self.last_shortfall: str | None = None

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's answer, once `replicas` acknowledged it; else `NotReplicatedError`."""
        if self.replicas == 0:
            return await script(keys=keys, args=args)
        client = self._client_for(keys[0])
        pipe = client.pipeline(transaction=False)
        await script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        try:
            answer, acknowledged = await pipe.execute()
        except (exceptions.MovedError, exceptions.AskError) as exc:
            # The slot moved (a failover, resharding) and nothing ran: retried once the cluster
            # client, which meets the same answer on its next command, has the new map.
            raise exceptions.TryAgainError(f"slot moved to {exc.host}:{exc.port}") from None
        if int(acknowledged) < self.replicas:
            self.last_shortfall = f"{acknowledged} of {self.replicas} replicas acknowledged"
            raise NotReplicatedError(
                f"{acknowledged} of {self.replicas} replicas acknowledged the write "
                f"within {self.timeout_ms} ms"
            )
        self.last_shortfall = None
        return answer

    async def confirm(self, key: str) -> None:
        """Wait until `replicas` hold everything the primary of `key` took so far (an outcome
        found unpublished, written by a write whose WAIT fell short or by another worker)."""
        if self.replicas:
            await self.run(self._touch, [key], [])

    def _client_for(self, key: str) -> Redis:
        if not is_cluster(self._redis):
            return self._redis
        cluster: RedisCluster = self._redis  # type: ignore[assignment]
        node = cluster.get_node_from_key(key)
        if node is None:  # pragma: no cover - get_node_from_key raises when no node has it
            raise exceptions.SlotNotCoveredError(f"no node serves the slot of {key!r}")
        client = self._nodes.get(node.name)
        if client is None:
            pool = GatedConnectionPool(
                connection_class=node.connection_class,
                max_connections=NODE_CONNECTIONS,
                timeout=POOL_TIMEOUT,
                **node.connection_kwargs,
            )
            client = self._nodes[node.name] = Redis.from_pool(pool)
        return client

    async def aclose(self) -> None:
        """Close the node clients (the main client is its owner's to close)."""
        nodes, self._nodes = list(self._nodes.values()), {}
        for client in nodes:
            await client.aclose()
