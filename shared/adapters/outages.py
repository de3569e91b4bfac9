"""Which errors mean Redis or Kafka is away, as opposed to a fault of the item in hand.

An outage is waited out (`shared.platform.retry.wait_out`): the same call succeeds once the
service is back. Anything else is a fault of the one order or message being handled (a record of
the wrong type, a value too large for the topic): waiting on it would stop the process's work for
good, so it is dead-lettered instead. `RedisError` and `KafkaError` as a whole are therefore too
wide: `WRONGTYPE` or `MessageSizeTooLargeError` never go away by waiting.
"""

from __future__ import annotations

from typing import Final

from aiokafka import errors as kafka
from redis import exceptions as redis

from shared.adapters.replication import NotReplicatedError

REDIS_OUTAGES: Final[tuple[type[Exception], ...]] = (
    redis.ConnectionError,  # refused or reset; also BusyLoadingError (a restart loading its AOF)
    redis.TimeoutError,  # no answer within the client's socket timeout (a paused server)
    redis.ReadOnlyError,  # a replica during a Sentinel failover
    redis.MasterDownError,  # a replica that lost its primary
    redis.TryAgainError,
    redis.OutOfMemoryError,  # maxmemory reached: keys expire and writes are taken again
    redis.ClusterDownError,  # a Redis Cluster without a majority or with slots unserved
    redis.SlotNotCoveredError,  # a slot with no node yet (a failover in progress)
    NotReplicatedError,  # a write fewer replicas took in time than PAYNOTIFY_REDIS_WAIT_REPLICAS
)

# The broker's retriable errors, and the client's own timeouts (a broker that is away shows up
# as these: metadata never arrives, requests time out).
KAFKA_OUTAGES: Final[tuple[type[Exception], ...]] = (
    kafka.KafkaConnectionError,
    kafka.KafkaTimeoutError,
    kafka.KafkaUnavailableError,
    kafka.NoBrokersAvailable,
    kafka.NodeNotReadyError,
    kafka.RequestTimedOutError,
    kafka.LeaderNotAvailableError,
    kafka.NotLeaderForPartitionError,
    kafka.NotEnoughReplicasError,
    kafka.NotEnoughReplicasAfterAppendError,
    kafka.CoordinatorNotAvailableError,
    kafka.CoordinatorLoadInProgressError,
    kafka.NotCoordinatorError,
    kafka.UnknownTopicOrPartitionError,  # a topic being created, or metadata not yet updated
    kafka.KafkaStorageError,
    kafka.StaleMetadata,
)

# OSError: sockets refused or reset below either client.
OUTAGES: Final[tuple[type[Exception], ...]] = (*REDIS_OUTAGES, *KAFKA_OUTAGES, OSError)
