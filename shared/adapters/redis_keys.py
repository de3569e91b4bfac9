"""Every Redis key paynotify writes, laid out for Redis Cluster (docs/scaling.md).

- **One slot per payment.** Every key of one order carries the order's key as its hash tag,
  `pn:<kind>:{mch_id:mch_order}`, so the order's record, outcome, lock and expiry marker live in
  one slot and one Lua script may touch them together.
- **Sharded schedules.** The sweeper's pending index and the workers' retry set are each split
  over `SHARDS` sorted sets with hash tags of their own (`pn:orders:pending:{pending:3}`), so no
  single slot takes every schedule write; a member's shard follows from the member alone.
- **Singles.** The sweeper's lease and the ingress's parked hash are one key each.

A script never mixes an order's keys with a shard's: where a step used to do both in one script
(settle a record and leave the pending index), it now runs two commands in an order that is safe
when the second one is lost (docs/order-book.md).

Pure: no I/O. A shard is CRC16 (XMODEM, Redis Cluster's own slot hash) of the member.
"""

from __future__ import annotations

from binascii import crc_hqx
from typing import Final

from redis.crc import key_slot

# Fixed: a member's shard is crc16(member) % SHARDS, so changing it moves members between keys
# (a deployment must migrate; see docs/scaling.md). 16 spreads the schedules over 16 slots,
# enough for a cluster of up to 16 primaries to share their writes.
SHARDS: Final = 16

ORDER_PREFIX: Final = "pn:order:"
OUTCOME_PREFIX: Final = "pn:outcome:"
LOCK_PREFIX: Final = "pn:lock:"
EXPIRED_PREFIX: Final = "pn:expired:"
PENDING_PREFIX: Final = "pn:orders:pending:"
RETRY_PREFIX: Final = "pn:retry:"
SWEEPER_LEASE_KEY: Final = "pn:sweeper:lease"
SWEEPER_LAST_RUN_KEY: Final = "pn:sweeper:last_run"  # `SweepMark`, JSON, set by the leader


def tagged(prefix: str, order_key: str) -> str:
    """`prefix{order_key}`. Redis hashes only the text up to the tag's first `}`; an order key
    that starts with `}` would leave an empty tag (and the whole key hashed, so its keys would
    part), so such keys get a `~` first: still one slot for all of that order's keys."""
    if order_key.startswith("}"):
        order_key = "~" + order_key
    return f"{prefix}{{{order_key}}}"


def order_record_key(order_key: str) -> str:
    return tagged(ORDER_PREFIX, order_key)


def outcome_key(order_key: str) -> str:
    return tagged(OUTCOME_PREFIX, order_key)


def lock_key(order_key: str) -> str:
    return tagged(LOCK_PREFIX, order_key)


def expired_marker_key(order_key: str) -> str:
    return tagged(EXPIRED_PREFIX, order_key)


def shard_of(member: bytes | str, shards: int = SHARDS) -> int:
    """The shard a schedule member lives in: from its bytes alone, so every process agrees."""
    raw = member.encode("utf-8", "surrogateescape") if isinstance(member, str) else member
    return crc_hqx(raw, 0) % shards


def pending_keys(shards: int = SHARDS) -> tuple[str, ...]:
    return tuple(f"{PENDING_PREFIX}{{pending:{i}}}" for i in range(shards))


def retry_keys(shards: int = SHARDS) -> tuple[str, ...]:
    return tuple(f"{RETRY_PREFIX}{{retry:{i}}}" for i in range(shards))


def slot(key: str | bytes) -> int:
    """The cluster slot of a key (0 to 16383)."""
    found: int = key_slot(key.encode() if isinstance(key, str) else key)
    return found
