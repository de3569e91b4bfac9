"""The worker's and sweeper's counters as Prometheus families: labeled kinds of events get a
counter of their own; platform calls a histogram by endpoint and result."""

from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client import generate_latest

from shared.probes import StatsCollector, new_registry, platform_calls

pytestmark = pytest.mark.unit


def test_outcomes_and_dead_letters_are_counters_of_their_own() -> None:
    stats = Counter(
        {
            "published": 3,
            "outcome:paynotify.payment.succeeded": 2,
            "outcome:paynotify.payment.amount_mismatch": 1,
            "dead_letter:bad_signature": 4,
            "lock_busy": 5,
        }
    )
    registry = new_registry("worker")
    registry.register(StatsCollector("worker", stats, "events"))
    text = generate_latest(registry).decode()
    assert 'paynotify_worker_events_total{event="published"} 3.0' in text
    assert 'paynotify_worker_events_total{event="lock_busy"} 5.0' in text
    assert 'paynotify_worker_outcomes_total{type="paynotify.payment.succeeded"} 2.0' in text
    assert 'paynotify_worker_dead_letters_total{reason="bad_signature"} 4.0' in text
    assert "outcome:" not in text  # never also as an event


def test_platform_calls_are_a_histogram_by_endpoint_and_result() -> None:
    registry = new_registry("sweeper")
    observe = platform_calls(registry)
    observe("query_order", "1", 0.03)
    observe("query_order", "113", 0.2)
    observe("query_order", "PlatformUnavailable", 10.0)
    text = generate_latest(registry).decode()
    assert 'paynotify_platform_call_seconds_count{endpoint="query_order",result="1"} 1.0' in text
    assert 'paynotify_platform_call_seconds_count{endpoint="query_order",result="113"} 1.0' in text
    assert (
        'paynotify_platform_call_seconds_bucket{endpoint="query_order",le="0.05",result="1"} 1.0'
        in text
    )
