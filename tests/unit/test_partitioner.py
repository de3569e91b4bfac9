"""The producers' partitioner places every key exactly where aiokafka's default (the Java
client's) does, and every producer started by `start_producer` uses it."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters import kafka
from shared.adapters.partitioner import key_partition, murmur2
from shared.settings import Settings

pytestmark = pytest.mark.unit

# The Java client's signed results, from Kafka's UtilsTest (testMurmur2).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
# The Java client's DefaultPartitioner over 1000 partitions (as kafka-python's tests record).
JAVA_PARTITIONS_OF_1000 = {
    b"": 681,
    b"a": 524,
    b"ab": 434,
    b"abc": 107,
    b"123456789": 566,
    b"\x00 ": 742,
}


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(("key", "expected"), JAVA_MURMUR2.items())
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    """The hash of each vector from Kafka's own test suite, read as a signed Java int."""
    assert _signed(murmur2(key)) == expected


@pytest.mark.parametrize(("key", "expected"), JAVA_PARTITIONS_OF_1000.items())
def test_partition_matches_the_java_client(key: bytes, expected: int) -> None:
    """The partition the Java client picks among 1000, for keys of every tail length."""
    partitions = list(range(1000))
    assert key_partition(key, partitions, partitions) == expected


def _random_keys(count: int) -> list[bytes]:
    rng = random.Random(14)
    keys = [b"", "\u0000".encode(), "订单:支付-ü€😀".encode(), b"x" * 100_003]
    for _ in range(count):
        size = rng.choice((rng.randrange(0, 9), rng.randrange(0, 80), rng.randrange(0, 4096)))
        keys.append(rng.randbytes(size))
        text = "".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(rng.randrange(0, 40)))
        keys.append(f"{rng.randrange(10**9)}:{text}".encode("utf-8", "surrogatepass"))
    return keys


def test_same_hash_and_partition_as_aiokafka_over_many_keys() -> None:
    """Random binary and unicode keys (empty, every tail length, long): the same hash as
    aiokafka's murmur2 and the same partition as its DefaultPartitioner for several counts."""
    default = DefaultPartitioner()
    for key in _random_keys(3000):
        assert murmur2(key) == aiokafka_murmur2(key), key
        for count in (1, 2, 3, 6, 7, 64, 1000):
            partitions = list(range(count))
            available = partitions[::2]
            assert key_partition(key, partitions, available) == default(
                key, partitions, available
            ), (key, count)


@given(st.binary(max_size=300))
def test_same_hash_as_aiokafka_for_any_bytes(key: bytes) -> None:
    """Any byte string hashes as aiokafka's murmur2 does."""
    assert murmur2(key) == aiokafka_murmur2(key)


def test_partition_ids_are_taken_from_the_list_given() -> None:
    """The result is an element of `all_partitions` at the hashed index, not the index itself."""
    partitions = [10, 20, 30, 40, 50, 60]
    assert (
        key_partition(b"foobar", partitions, [])
        == partitions[(murmur2(b"foobar") & 0x7FFFFFFF) % 6]
    )


def test_no_key_goes_to_an_available_partition_else_to_any() -> None:
    """Without a key, a random available partition; with none available, any partition."""
    random.seed(3)
    assert {key_partition(None, [0, 1, 2, 3], [2, 3]) for _ in range(200)} == {2, 3}
    assert {key_partition(None, [0, 1, 2, 3], []) for _ in range(200)} == {0, 1, 2, 3}


async def test_start_producer_builds_producers_with_this_partitioner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every process's producer comes from `start_producer`: it passes `key_partition`."""
    built: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, **options: Any) -> None:
            built.append(options)

        async def start(self) -> None:
            return None

    monkeypatch.setattr(kafka, "AIOKafkaProducer", Recorder)
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    await kafka.start_producer(settings, client_id="test")
    assert built[0]["partitioner"] is key_partition
