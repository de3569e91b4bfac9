"""What the ingress has done since it started, for `/metrics` and for tests."""

from __future__ import annotations

from collections import Counter

from ingress.refusals import STATUS, Reason


class IngressCounters:
    __slots__ = (
        "audit_dropped",
        "audit_failed",
        "audit_sent",
        "audit_suppressed",
        "connections_refused",
        "late_acks",
        "late_failures",
        "published",
        "refusals",
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

    def prometheus(self) -> str:
        """The counters in Prometheus' text exposition format."""
        lines = [
            "# TYPE paynotify_ingress_published_total counter",
            f"paynotify_ingress_published_total {self.published}",
            "# TYPE paynotify_ingress_refusals_total counter",
        ]
        lines.extend(
            f'paynotify_ingress_refusals_total{{reason="{reason}",status="{STATUS[reason].value}"}}'
            f" {self.refusals[reason]}"
            for reason in Reason
        )
        for name in (
            "late_acks",
            "late_failures",
            "audit_sent",
            "audit_failed",
            "audit_dropped",
            "audit_suppressed",
            "connections_refused",
        ):
            lines.append(f"# TYPE paynotify_ingress_{name}_total counter")
            lines.append(f"paynotify_ingress_{name}_total {getattr(self, name)}")
        return "\n".join(lines) + "\n"
