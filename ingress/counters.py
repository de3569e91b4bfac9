"""What the ingress has done since it started: plain counts for the code and the tests, and
their Prometheus form (HELP and TYPE, every name `paynotify_ingress_...`) for `/metrics`."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ingress.refusals import STATUS, Reason
from shared.probes import new_registry

if TYPE_CHECKING:
    from collections.abc import Iterable

    from prometheus_client.metrics_core import Metric

# Seconds from the start of a publish to Kafka's acknowledgement (the ack deadline is 5 s).
_PUBLISH_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_COUNTS = {
    "late_acks": "Sends answered 503 at the deadline that Kafka acknowledged later (duplicates "
    "the workers absorb, never a success).",
    "late_failures": "Sends answered 503 at the deadline that failed later.",
    "audit_sent": "Refusal records written to the audit topic.",
    "audit_failed": "Refusal records the audit topic did not take.",
    "audit_dropped": "Refusal records dropped: too many were pending.",
    "audit_suppressed": "Refusal records left out: the sender was over its audit budget.",
    "connections_refused": "Connections answered 503 at once: too many were open.",
}


class IngressCounters:
    __slots__ = (
        "audit_dropped",
        "audit_failed",
        "audit_sent",
        "audit_suppressed",
        "connections_refused",
        "in_flight",
        "late_acks",
        "late_failures",
        "parked",
        "publish_seconds",
        "published",
        "refusals",
        "registry",
    )

    def __init__(self) -> None:
        self.published = 0  # answered `success`: acknowledged by Kafka within the deadline
        self.refusals: Counter[Reason] = Counter()  # answered `fail`, by reason
        # A send still pending at the deadline was answered 503; Kafka may still take it later.
        # Such a message is a duplicate the workers absorb, never a `success` for its request.
        self.late_acks = 0
        self.late_failures = 0
        self.audit_sent = 0
        self.audit_failed = 0
        self.audit_dropped = 0  # too many audit records already pending
        self.audit_suppressed = 0  # left out: the sender was over its audit budget
        self.connections_refused = 0  # answered 503 at once: too many connections open
        self.in_flight = 0  # notifications being handed to Kafka right now
        # Notifications Kafka did not take, kept for the sweeper (shared.adapters.parked), by
        # result: parked, already (an earlier try's copy is there), full, failed (Redis away).
        self.parked: Counter[str] = Counter()
        self.registry = new_registry("ingress")
        self.registry.register(_Collector(self))
        self.publish_seconds = Histogram(
            "paynotify_ingress_publish_seconds",
            "Seconds from handing a notification to Kafka to its acknowledgement (acked ones).",
            buckets=_PUBLISH_BUCKETS,
            registry=self.registry,
        )

    def prometheus(self) -> str:
        """Every metric in Prometheus' text exposition format."""
        return generate_latest(self.registry).decode()


class _Collector(Collector):
    def __init__(self, counters: IngressCounters) -> None:
        self._counters = counters

    def collect(self) -> Iterable[Metric]:
        c = self._counters
        published = CounterMetricFamily(
            "paynotify_ingress_published",
            "Notifications answered success: acknowledged by Kafka within the deadline.",
        )
        published.add_metric([], c.published)
        yield published
        refusals = CounterMetricFamily(
            "paynotify_ingress_refusals",
            "Requests answered fail, by reason and HTTP status (every reason, zero or not).",
            labels=["reason", "status"],
        )
        for reason in Reason:
            refusals.add_metric([reason.value, str(STATUS[reason].value)], c.refusals[reason])
        yield refusals
        for name, text in _COUNTS.items():
            family = CounterMetricFamily(f"paynotify_ingress_{name}", text)
            family.add_metric([], getattr(c, name))
            yield family
        parked = CounterMetricFamily(
            "paynotify_ingress_parked",
            "Notifications answered 503 because Kafka did not take them, by what became of "
            "their copy for the sweeper: parked, already (parked by an earlier try), full, "
            "failed (Redis away too).",
            labels=["result"],
        )
        for result in ("parked", "already", "full", "failed"):
            parked.add_metric([result], c.parked[result])
        yield parked
        in_flight = GaugeMetricFamily(
            "paynotify_ingress_in_flight", "Notifications being handed to Kafka right now."
        )
        in_flight.add_metric([], c.in_flight)
        yield in_flight
