"""Spans: off by default (ids only, nothing recorded); with OpenTelemetry, recorded as children
of the trace they continue, their own ids the ones sent on."""

from __future__ import annotations

import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.trace import parse
from shared.tracing import Spans, TracingUnavailableError

pytestmark = pytest.mark.unit

PARENT = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def recording() -> tuple[Spans, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Spans(provider.get_tracer("test")), exporter


def test_off_makes_ids_and_records_nothing() -> None:
    spans = Spans.from_env({}, "ingress")
    assert not spans.recording
    with spans.span("x", PARENT) as span:
        span.set("ignored", 1)
    assert PARENT is not None
    assert span.trace.trace_id == PARENT.trace_id
    assert span.trace.span_id != PARENT.span_id
    with spans.span("x", None) as fresh:
        pass
    assert fresh.trace.trace_id != PARENT.trace_id


def test_a_recorded_span_continues_its_parent_and_sends_its_own_id() -> None:
    spans, exporter = recording()
    with spans.span("ingress.notify", PARENT) as span:
        span.set("paynotify.result", "published")
    (done,) = exporter.get_finished_spans()
    assert PARENT is not None
    assert done.name == "ingress.notify"
    assert f"{done.context.trace_id:032x}" == PARENT.trace_id
    assert done.parent is not None
    assert f"{done.parent.span_id:016x}" == PARENT.span_id
    assert f"{done.context.span_id:016x}" == span.trace.span_id  # what goes on the header
    assert done.attributes == {"paynotify.result": "published"}


def test_a_recorded_span_without_parent_starts_a_trace() -> None:
    spans, exporter = recording()
    with spans.span("sweeper.forward", None) as span:
        pass
    (done,) = exporter.get_finished_spans()
    assert done.parent is None
    assert f"{done.context.trace_id:032x}" == span.trace.trace_id


def test_asked_for_without_the_extra_is_one_clear_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(TracingUnavailableError, match=r"paynotify\[otel\]"):
        Spans.from_env({"PAYNOTIFY_OTEL": "1"}, "worker")
