"""Which errors are an outage to wait out, and which a fault of the item in hand."""

from __future__ import annotations

import pytest
from aiokafka import errors as kafka
from redis import exceptions as redis

from shared.adapters.outages import OUTAGES

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("refused"),
        redis.BusyLoadingError("loading"),
        redis.TimeoutError("paused"),
        redis.ReadOnlyError("replica"),
        redis.ClusterDownError("CLUSTERDOWN The cluster is down"),  # a cluster failing over
        redis.SlotNotCoveredError("slot 866 not covered"),
        kafka.KafkaConnectionError(),
        kafka.NotEnoughReplicasError(),
        ConnectionResetError(),
    ],
)
def test_waited_out(error: Exception) -> None:
    assert isinstance(error, OUTAGES)


@pytest.mark.parametrize(
    "error",
    [
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        redis.DataError("bad value"),
        kafka.MessageSizeTooLargeError(),
        ValueError("a bug"),
    ],
)
def test_a_fault_of_the_item_is_not(error: Exception) -> None:
    assert not isinstance(error, OUTAGES)
