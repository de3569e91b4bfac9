"""W3C trace context (https://www.w3.org/TR/trace-context/): the `traceparent` one notification
carries from the ingress through Kafka to the worker and into its outcome event.

The ingress continues a valid `traceparent` it receives (same trace, a span of its own) or
starts a trace; the value travels as the Kafka header `traceparent` of the callbacks message and
of the outcome event, and as the CloudEvents `traceparent` extension attribute of the event.
Nothing here records spans: exporting them is the optional OpenTelemetry extra's business.
Anything that is not a valid version-00 value is treated as absent, never trusted or echoed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

HEADER = "traceparent"
_FORMAT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
SAMPLED = "01"


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: str  # 32 lower-case hex digits, not all zero
    span_id: str  # 16 lower-case hex digits, not all zero
    flags: str = SAMPLED  # 2 hex digits

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def encode(self) -> bytes:
        return str(self).encode("ascii")

    def child(self, span_id: str | None = None) -> TraceParent:
        """The same trace, a new span (this process's work on it)."""
        return TraceParent(self.trace_id, span_id or new_span_id(), self.flags)


def new_span_id() -> str:
    while (span := os.urandom(8).hex()) == _NO_SPAN:
        pass  # pragma: no cover - one chance in 2**64
    return span


def start() -> TraceParent:
    """A new trace (nothing upstream gave one)."""
    while (trace := os.urandom(16).hex()) == _NO_TRACE:
        pass  # pragma: no cover - one chance in 2**128
    return TraceParent(trace, new_span_id())


def parse(value: object) -> TraceParent | None:
    """A valid version-00 `traceparent`, or None (absent, not text, malformed, all-zero ids)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    found = _FORMAT.fullmatch(value)
    if found is None:
        return None
    trace_id, span_id, flags = found.groups()
    if trace_id == _NO_TRACE or span_id == _NO_SPAN:
        return None
    return TraceParent(trace_id, span_id, flags)


def continue_or_start(value: str | bytes | None) -> TraceParent:
    """The ingress's span: a child of a valid incoming `traceparent`, else a new trace."""
    parent = parse(value)
    return start() if parent is None else parent.child()


def from_headers(headers: object) -> TraceParent | None:
    """The `traceparent` among a Kafka record's headers (a sequence of (name, bytes)), if valid;
    the first one counts."""
    if not isinstance(headers, list | tuple):
        return None
    for item in headers:
        if isinstance(item, tuple) and len(item) == 2 and item[0] == HEADER:
            return parse(item[1])
    return None
