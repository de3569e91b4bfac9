"""The producers' key partitioner: the Java client's placement, computed with less Python.

aiokafka's `DefaultPartitioner` hashes every key with a byte-at-a-time pure-Python murmur2
(a dozen masks per 4-byte word). `key_partition` places each key on the same partition - the
Java client's `Utils.toPositive(Utils.murmur2(key)) % numPartitions` - but reads the words with
one `struct` call and masks only where a product can exceed 32 bits. Keys that are None go to
a random available partition (any partition when none is available), as aiokafka's do.
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF
_WORDS = struct.Struct("<I").iter_unpack  # little-endian words, as the Java client reads them


def murmur2(data: bytes) -> int:
    """The Java client's `Utils.murmur2(data)` as an unsigned 32-bit integer."""
    length = len(data)
    h = _SEED ^ length
    body = length & ~3
    for (word,) in _WORDS(data[:body]) if body else ():
        k = (word * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        if extra == 3:
            h ^= data[body + 2] << 16
        if extra >= 2:
            h ^= data[body + 1] << 8
        h = ((h ^ data[body]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def key_partition(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """aiokafka's `partitioner(key_bytes, all_partitions, available_partitions)` contract."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]
