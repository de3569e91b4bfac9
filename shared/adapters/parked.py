"""Parked notifications: verified notifications the ingress could not hand to Kafka, kept in
Redis until the sweeper publishes them.

The ingress still answers such a notification `503` (`success` only after Kafka's
acknowledgement), and the platform tries again. But when every try of its schedule meets Kafka
away, a repeat payment would be lost: the platform reports it only by notifications, and no
order query finds it afterwards. So the ingress also keeps a copy here, and the sweeper, once
Kafka is back, publishes each parked notification to `paynotify.callbacks` exactly as the
ingress would have, then removes it. A copy that also came through a later try is a duplicate
the workers absorb (their dedupe is by payment, not by message).

Layout: one hash, `pn:parked`. Field: the SHA-256 of the notification's fields, so the tries of
one notification make one entry however many of them fail; a different notification of the same
order (another status, a repeat payment) is another entry. Value: JSON
`{"v": 1, "key": order key, "parked_at": Unix seconds, "envelope": the callbacks message as
text, "traceparent": the ingress's W3C trace context}` (`traceparent` may be absent). The
hash is bounded (`PAYNOTIFY_INGRESS_PARK_MAX`): when full, nothing more is parked (counted);
the platform's tries go on as before.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson

from shared.adapters.kafka import CallbackEnvelope, EnvelopeError
from shared.protocol.payment import order_key
from shared.trace import parse as trace_parse

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.trace import TraceParent

PARKED_KEY = "pn:parked"
# Kafka's default largest message: a larger value could not be published anyway, and no
# ingress body (PAYNOTIFY_MAX_BODY_BYTES, 8 KiB by default) comes near it.
MAX_PARKED_BYTES = 1 << 20
_VERSION = 1

# KEYS[1] the hash; ARGV: field, value, bound. 1 parked, 0 parked already, -1 full.
_PARK = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

ParkResult = Literal["parked", "already", "full"]
_RESULTS: dict[int, ParkResult] = {1: "parked", 0: "already", -1: "full"}


class ParkedRecordError(ValueError):
    """A `pn:parked` value that is not a parked notification this version wrote."""


@dataclass(frozen=True, slots=True)
class Parked:
    """One parked notification, checked: `envelope` decodes as a callbacks message whose
    fields give `key`."""

    field: bytes  # the hash field, to remove it once published
    key: str  # the Kafka key (`mch_id:mch_order`)
    parked_at: float
    envelope: bytes  # the callbacks message, byte for byte as the ingress encoded it
    trace: TraceParent | None  # the ingress's span, for the message's `traceparent` header


def fingerprint(fields: dict[str, str]) -> str:
    """One notification's identity in the hash: the same fields give the same entry."""
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def encode_parked(
    key: str, envelope: CallbackEnvelope, parked_at: float, trace: TraceParent | None = None
) -> bytes:
    document = {
        "v": _VERSION,
        "key": key,
        "parked_at": parked_at,
        "envelope": envelope.encode().decode(),
    }
    if trace is not None:
        document["traceparent"] = str(trace)
    return orjson.dumps(document)


def decode_parked(field: bytes, raw: bytes) -> Parked:
    """A parked value, strictly: anything else raises `ParkedRecordError` saying what."""
    if len(raw) > MAX_PARKED_BYTES:
        raise ParkedRecordError(f"parked value is over {MAX_PARKED_BYTES} bytes")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ParkedRecordError("parked value is not JSON") from None
    if not isinstance(document, dict) or document.get("v") != _VERSION:
        raise ParkedRecordError(f"parked value is not a version {_VERSION} object")
    key, parked_at, text = document.get("key"), document.get("parked_at"), document.get("envelope")
    if not isinstance(key, str) or not isinstance(text, str):
        raise ParkedRecordError("parked key and envelope must be strings")
    if isinstance(parked_at, bool) or not isinstance(parked_at, int | float):
        raise ParkedRecordError("parked_at must be a number")
    traceparent = document.get("traceparent")
    trace = trace_parse(traceparent)
    if traceparent is not None and trace is None:
        raise ParkedRecordError("parked traceparent is not a W3C trace context")
    envelope = text.encode()
    try:
        fields = CallbackEnvelope.decode(envelope).fields
    except EnvelopeError as exc:
        raise ParkedRecordError(f"parked envelope: {exc}") from None
    mch_id, mch_order = fields.get("mch_id"), fields.get("mch_order")
    if mch_id is None or mch_order is None or order_key(mch_id, mch_order) != key:
        raise ParkedRecordError("parked key does not match the envelope's order")
    if field.decode("ascii", "replace") != fingerprint(fields):
        raise ParkedRecordError("parked field does not match the envelope's fields")
    return Parked(field=field, key=key, parked_at=float(parked_at), envelope=envelope, trace=trace)


class ParkedNotifications:
    """The `pn:parked` hash: the ingress parks, the sweeper takes and removes."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._park = redis.register_script(_PARK)

    async def park(
        self,
        key: str,
        envelope: CallbackEnvelope,
        parked_at: float,
        trace: TraceParent | None,
        *,
        bound: int,
    ) -> ParkResult:
        """Keep one copy of the notification, unless one is kept already or `bound` entries
        are (PAYNOTIFY_INGRESS_PARK_MAX)."""
        value = encode_parked(key, envelope, parked_at, trace)
        result = await self._park(
            keys=[PARKED_KEY], args=[fingerprint(envelope.fields), value, bound]
        )
        return _RESULTS[int(result)]

    async def batch(self, cursor: int, count: int) -> tuple[int, list[tuple[bytes, bytes]]]:
        """One step of a scan over the parked entries: the next cursor (0: done) and raw
        (field, value) pairs, to be checked with `decode_parked`."""
        cursor, found = await self._redis.hscan(PARKED_KEY, cursor, count=count)
        if not isinstance(found, dict):
            raise TypeError(f"HSCAN answered {type(found).__name__}, not pairs")
        pairs = []
        for field, value in found.items():
            if not (isinstance(field, bytes) and isinstance(value, bytes)):
                raise TypeError("parked entries come as text: open Redis without decoding")
            pairs.append((field, value))
        return int(cursor), pairs

    async def remove(self, field: bytes) -> None:
        await self._redis.hdel(PARKED_KEY, field)

    async def size(self) -> int:
        return int(await self._redis.hlen(PARKED_KEY))
