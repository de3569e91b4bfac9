"""What the repair tools read, parsed strictly: dead letters (`paynotify.dlq`), outcome events
(`paynotify.events`), and the filters an operator selects them by.

Pure: bytes in, frozen values out. Nothing read from Kafka is trusted: a record that does not
have the shape its writer gives it raises `RecordError`, which the tools report and skip.
Dead letters are written by `shared.service.dead_letters.dead_letter` (reason, detail, origin,
failed_at, and the original message as `payload` JSON, `payload_base64`, or `payload_omitted`
saying why it is missing); events by `shared.domain.events.encode` (CloudEvents 1.0, structured).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from shared.protocol.payment import order_key

_RELATIVE = re.compile(r"(\d{1,9})([smhd])", re.ASCII)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_PAYLOADS: Final = ("payload", "payload_base64", "payload_omitted")
_UNIX = re.compile(r"\d{1,12}(\.\d{1,6})?", re.ASCII)


class RecordError(ValueError):
    """A Kafka record that is not what its topic's writers write; the message says why."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a record is: `topic/partition@offset`, the form the workers' `origin` uses."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


def parse_origin(text: str) -> Position | None:
    """A dead letter's `origin` as a position, or None when it names no record (the sweeper's
    `sweeper`, the retry set's `retry-set`, an empty origin)."""
    rest, at, offset = text.rpartition("@")
    topic, slash, partition = rest.rpartition("/")
    if not (at and slash and topic) or not (offset.isascii() and offset.isdigit()):
        return None
    if not (partition.isascii() and partition.isdigit()):
        return None
    return Position(topic, int(partition), int(offset))


# --- time ---------------------------------------------------------------------------------


def parse_when(text: str, *, now: float) -> float:
    """An operator's time as Unix seconds: `2026-05-01T10:00:00Z` (RFC 3339 or ISO 8601; a
    time without a zone is UTC), `2026-05-01`, Unix seconds (`1777629600`), or an age: `90s`,
    `30m`, `2h`, `7d` (that long before `now`). Raises ValueError saying what is accepted."""
    raw = text.strip()
    if _UNIX.fullmatch(raw):
        return float(raw)
    relative = _RELATIVE.fullmatch(raw)
    if relative:
        return now - int(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give RFC 3339 (2026-05-01T10:00:00Z), a date, "
            "Unix seconds, or an age such as 30m, 2h, 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class Window:
    """A time range: `since` included, `until` excluded; None leaves that side open."""

    since: float | None = None
    until: float | None = None

    def __contains__(self, moment: float) -> bool:
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment < self.until

    @property
    def open(self) -> bool:
        return self.since is None and self.until is None


# --- dead letters -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One DLQ record. `payload` is the original message's bytes as the DLQ kept them (None
    when the DLQ refused them: `payload_note` then says why); the merchant and order are the
    original message's, where it names them."""

    at: Position
    key: str | None
    reason: str
    detail: str
    origin: str
    failed_at: float
    payload: bytes | None
    payload_note: str  # "json", "base64", or why the payload is missing
    mch_id: str | None = None
    mch_order: str | None = None

    @property
    def order(self) -> str | None:
        if self.mch_id is None or self.mch_order is None:
            return None
        return order_key(self.mch_id, self.mch_order)


def parse_dead_letter(at: Position, key: bytes | None, value: bytes | None) -> DeadLetter:
    """A DLQ record, checked field by field, or `RecordError`."""
    document = _json_object(value, "dead letter")
    reason, detail, origin = (document.get(name) for name in ("reason", "detail", "origin"))
    if not isinstance(reason, str) or not reason:
        raise RecordError("dead letter has no reason")
    if not isinstance(detail, str) or not isinstance(origin, str):
        raise RecordError("dead letter detail and origin must be strings")
    failed_at = _finite(document.get("failed_at"), "dead letter failed_at")
    payload, note, original = _payload(document)
    mch_id, mch_order = _order_of(original)
    return DeadLetter(
        at=at,
        key=None if key is None else key.decode("utf-8", "replace"),
        reason=reason,
        detail=detail,
        origin=origin,
        failed_at=failed_at,
        payload=payload,
        payload_note=note,
        mch_id=mch_id,
        mch_order=mch_order,
    )


def _payload(document: dict[str, Any]) -> tuple[bytes | None, str, Any]:
    """(the original bytes, how they were kept, the original as JSON if it was JSON)."""
    present = [name for name in _PAYLOADS if name in document]
    if len(present) != 1:
        raise RecordError("dead letter must hold exactly one of payload, payload_base64, "
                        "payload_omitted")  # fmt: skip
    if present[0] == "payload":
        # The writer parsed the original with orjson and wrote it back with orjson: dumping it
        # again gives the original bytes of every message our producers wrote (orjson's form).
        return orjson.dumps(document["payload"]), "json", document["payload"]
    if present[0] == "payload_base64":
        text = document["payload_base64"]
        if not isinstance(text, str):
            raise RecordError("dead letter payload_base64 must be a string")
        try:
            return base64.b64decode(text, validate=True), "base64", None
        except (binascii.Error, ValueError):
            raise RecordError("dead letter payload_base64 is not base64") from None
    why = document["payload_omitted"]
    if not isinstance(why, str):
        raise RecordError("dead letter payload_omitted must be a string")
    return None, f"omitted: {why}", None


def _order_of(original: Any) -> tuple[str | None, str | None]:
    """The merchant and order an original message names: a callbacks envelope's `fields`, a
    retry entry's envelope, or the top-level fields of an order message or the sweeper's
    description of an order."""
    if not isinstance(original, dict):
        return None, None
    if isinstance(original.get("envelope"), dict):
        original = original["envelope"]
    order = original.get("order")  # the sweeper's description of an order it gave up on
    if "mch_id" not in original and isinstance(order, str) and ":" in order:
        mch_id, _, mch_order = order.partition(":")
        return mch_id or None, mch_order or None
    source = original.get("fields") if isinstance(original.get("fields"), dict) else original
    mch_id, mch_order = source.get("mch_id"), source.get("mch_order")
    return (
        mch_id if isinstance(mch_id, str) and mch_id else None,
        mch_order if isinstance(mch_order, str) and mch_order else None,
    )


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which dead letters an operator means: every given criterion must hold (an empty set
    or an open window selects all)."""

    reasons: frozenset[str] = frozenset()
    merchants: frozenset[str] = frozenset()
    orders: frozenset[str] = frozenset()  # order keys, `mch_id:mch_order`
    window: Window = field(default_factory=Window)

    def matches(self, letter: DeadLetter) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.merchants and letter.mch_id not in self.merchants:
            return False
        if self.orders and letter.order not in self.orders:
            return False
        return letter.failed_at in self.window


# --- redrive --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redrive:
    """A dead letter that can go back: its original record is at `source`."""

    letter: DeadLetter
    source: Position
    payload: bytes  # the original bytes as the DLQ kept them


@dataclass(frozen=True, slots=True)
class Unredrivable:
    letter: DeadLetter
    why: str


def plan_redrive(letter: DeadLetter, topics: frozenset[str]) -> Redrive | Unredrivable:
    """Whether a dead letter can be redriven to its source topic, one of `topics` (the
    deployment's callbacks and orders topics: never the DLQ itself, nor a topic of another
    deployment)."""
    source = parse_origin(letter.origin)
    if source is None:
        hint = " (use `paynotify requery` for an order)" if letter.origin == "sweeper" else ""
        return Unredrivable(letter, f"origin {letter.origin!r} names no topic record{hint}")
    if source.topic not in topics:
        return Unredrivable(letter, f"source topic {source.topic} is not one to redrive to")
    if letter.payload is None:
        return Unredrivable(letter, f"the original message is not kept ({letter.payload_note})")
    return Redrive(letter, source, letter.payload)


def same_message(kept: bytes, found: bytes) -> bool:
    """Whether the source record still at the origin is the message the DLQ kept: the same
    bytes, or the same JSON (the DLQ keeps a JSON original as parsed JSON)."""
    if kept == found:
        return True
    try:
        return bool(orjson.loads(kept) == orjson.loads(found))
    except orjson.JSONDecodeError:
        return False


def fallback_key(plan: Redrive, callbacks_topic: str) -> str | None:
    """The Kafka key to redrive with when the original record is no longer on its topic: for
    a callbacks message, the order key of its fields (the ingress's key); otherwise the dead
    letter's own key (the orders consumer keeps the original's)."""
    if plan.source.topic == callbacks_topic:
        return plan.letter.order
    return plan.letter.key


# --- outcome events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One outcome event as it is on the events topic (`at`; None: as Redis recorded it): the
    record's exact key, value and headers (what a replay republishes), and the attributes it
    is selected by."""

    at: Position | None
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    id: str
    type: str
    subject: str
    mch_id: str
    mch_order: str
    time: float


def parse_event(
    at: Position | None,
    key: bytes | None,
    value: bytes | None,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> RecordedEvent:
    """A CloudEvent of ours, checked, or `RecordError`."""
    document = _json_object(value, "event")
    if document.get("specversion") != "1.0":
        raise RecordError("event specversion is not 1.0")
    attributes = {name: document.get(name) for name in ("id", "type", "subject", "time")}
    for name, text in attributes.items():
        if not isinstance(text, str) or not text:
            raise RecordError(f"event {name} must be a non-empty string")
    data = document.get("data")
    if not isinstance(data, dict):
        raise RecordError("event data must be an object")
    mch_id, mch_order = data.get("mch_id"), data.get("mch_order")
    if not isinstance(mch_id, str) or not isinstance(mch_order, str):
        raise RecordError("event data must name mch_id and mch_order")
    if attributes["subject"] != order_key(mch_id, mch_order):
        raise RecordError("event subject is not its data's mch_id:mch_order")
    try:
        moment = datetime.fromisoformat(str(attributes["time"]))
    except ValueError:
        raise RecordError("event time is not RFC 3339") from None
    if moment.tzinfo is None:
        raise RecordError("event time has no zone")
    return RecordedEvent(
        at=at,
        key=key,
        value=value or b"",
        headers=headers,
        id=str(attributes["id"]),
        type=str(attributes["type"]),
        subject=str(attributes["subject"]),
        mch_id=mch_id,
        mch_order=mch_order,
        time=moment.timestamp(),
    )


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to replay: every given criterion must hold."""

    orders: frozenset[str] = frozenset()  # order keys (the events' subjects)
    merchants: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    window: Window = field(default_factory=Window)

    @property
    def selects_all(self) -> bool:
        return not (self.orders or self.merchants or self.types) and self.window.open

    def matches(self, event: RecordedEvent) -> bool:
        if self.orders and event.subject not in self.orders:
            return False
        if self.merchants and event.mch_id not in self.merchants:
            return False
        if self.types and event.type not in self.types:
            return False
        return event.time in self.window


@dataclass
class FirstOfEach:
    """Keeps the first event of each id: a redelivery publishes an event again with the same
    id (docs/events.md), and a consumer needs it once. Counts the repeats it drops."""

    seen: set[str] = field(default_factory=set)
    repeats: int = 0

    def first(self, event: RecordedEvent) -> bool:
        if event.id in self.seen:
            self.repeats += 1
            return False
        self.seen.add(event.id)
        return True


# --- helpers ------------------------------------------------------------------------------


def _json_object(value: bytes | None, what: str) -> dict[str, Any]:
    if not value:
        raise RecordError(f"{what} is empty")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise RecordError(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise RecordError(f"{what} is not a JSON object")
    return document


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{what} must be a number")
    if not math.isfinite(value):
        raise RecordError(f"{what} must be finite")
    return float(value)
