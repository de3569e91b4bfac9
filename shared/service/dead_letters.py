"""Dead letters: the record every process puts on `paynotify.dlq` for a message or an order it
cannot settle (docs/asyncapi.yaml `DeadLetter`): the reason, a short detail, where it came from,
when, and the payload to understand and replay it, never a key."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.errors import KafkaError

from shared.adapters.outages import OUTAGES

if TYPE_CHECKING:
    from shared.ports import Sink


def dead_letter(
    reason: str, detail: str, origin: str, payload: bytes, at: float, *, omit: str | None = None
) -> bytes:
    """A DLQ record: enough to understand and replay the message, never a key. With `omit`, the
    payload is left out and `payload_omitted` says why (the DLQ refused the whole record)."""
    document: dict[str, Any] = {
        "reason": reason,
        "detail": detail,
        "origin": origin,
        "failed_at": at,
    }
    if omit is not None:
        document["payload_omitted"] = omit
        return orjson.dumps(document)
    try:
        document["payload"] = orjson.loads(payload)
    except orjson.JSONDecodeError:
        document["payload_base64"] = base64.b64encode(payload).decode()
    return orjson.dumps(document)


async def publish_dead_letter(
    dlq: Sink, key: str, *, reason: str, detail: str, origin: str, payload: bytes, at: float
) -> None:
    """Publish the dead letter; if the DLQ refuses it for something waiting cannot fix (too
    large), publish it without its payload. Outages raise: the caller waits them out."""
    try:
        await dlq.publish(key, dead_letter(reason, detail, origin, payload, at))
    except OUTAGES:
        raise
    except (KafkaError, ValueError) as exc:
        omitted = f"{len(payload)} bytes, refused by the DLQ ({type(exc).__name__})"
        await dlq.publish(key, dead_letter(reason, detail, origin, payload, at, omit=omitted))
