"""Spans: one per notification in the ingress, one per message a worker settles, one per
payment the sweeper forwards. Their ids are the W3C trace context `shared.trace` carries.

Off by default, and then free: `Spans.off()` makes the ids with `shared.trace` and records
nothing. With `PAYNOTIFY_OTEL=1` and the optional extra installed (`pip install
'paynotify[otel]'`), `Spans.from_settings` sets up OpenTelemetry's SDK with the OTLP exporter
(configured by the standard `OTEL_EXPORTER_OTLP_*` variables and `OTEL_SERVICE_NAME`), and each
span is recorded there: a child of the `traceparent` it continues, its own span id the one sent
on. A process never fails for tracing: an exporter that cannot reach its collector drops spans
(the SDK's batch processor), and a setting without the extra installed is refused at start-up
with one line saying what to install.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol

from shared.trace import TraceParent, continue_or_start

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping


# What a process reads for tracing: `Spans.from_env` the first two, the SDK's exporter the rest
# (with PAYNOTIFY_OTEL=1). `--help` lists them.
ENVIRONMENT = ("PAYNOTIFY_OTEL", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_*")


class Span(Protocol):
    """A span being recorded: `trace` is what is sent on (its W3C trace context)."""

    trace: TraceParent

    def set(self, key: str, value: str | int) -> None: ...


class _Unrecorded:
    __slots__ = ("trace",)

    def __init__(self, trace: TraceParent) -> None:
        self.trace = trace

    def set(self, key: str, value: str | int) -> None:
        pass


class Spans:
    """Starts spans; one per process (`off()`, or `otel(tracer)` from the extra)."""

    __slots__ = ("_tracer",)

    def __init__(self, tracer: Any = None) -> None:
        self._tracer = tracer  # an opentelemetry.trace.Tracer, or None: nothing recorded

    @classmethod
    def off(cls) -> Spans:
        return cls()

    @classmethod
    def from_env(cls, environ: Mapping[str, str], service: str) -> Spans:
        """`PAYNOTIFY_OTEL=1`: export with OpenTelemetry (the extra must be installed);
        anything else: off."""
        if environ.get("PAYNOTIFY_OTEL", "").strip().lower() not in {"1", "true", "yes", "on"}:
            return cls.off()
        return cls(_otlp_tracer(environ.get("OTEL_SERVICE_NAME") or f"paynotify-{service}"))

    @property
    def recording(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def span(self, name: str, parent: TraceParent | None) -> Iterator[Span]:
        """A span named `name`, continuing `parent` (None: a new trace). Its `trace` is the
        context to send on; the span ends when the block does."""
        if self._tracer is None:
            yield _Unrecorded(parent.child() if parent else continue_or_start(None))
            return
        with _recorded(self._tracer, name, parent) as span:
            yield span


class _Recorded:
    __slots__ = ("_span", "trace")

    def __init__(self, span: Any, trace: TraceParent) -> None:
        self._span, self.trace = span, trace

    def set(self, key: str, value: str | int) -> None:
        self._span.set_attribute(key, value)


@contextlib.contextmanager
def _recorded(tracer: Any, name: str, parent: TraceParent | None) -> Iterator[Span]:
    from opentelemetry import trace  # noqa: PLC0415 - the optional extra, only when on

    context = None
    if parent is not None:
        remote = trace.SpanContext(
            trace_id=int(parent.trace_id, 16),
            span_id=int(parent.span_id, 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(int(parent.flags, 16)),
        )
        context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    with tracer.start_as_current_span(name, context=context) as span:
        own = span.get_span_context()
        sent = TraceParent(f"{own.trace_id:032x}", f"{own.span_id:016x}", f"{own.trace_flags:02x}")
        yield _Recorded(span, sent)


def _otlp_tracer(service: str) -> Any:
    try:
        from opentelemetry import trace  # noqa: PLC0415 - the optional extra
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        raise TracingUnavailableError(
            "PAYNOTIFY_OTEL=1 needs the otel extra: pip install 'paynotify[otel]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("paynotify")


class TracingUnavailableError(RuntimeError):
    """Tracing was asked for and cannot be had: said once, at start-up."""
