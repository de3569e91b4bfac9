"""Readiness judgement and counters of the ingress, without a broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from ingress.counters import IngressCounters
from ingress.refusals import Reason
from shared.adapters.kafka_readiness import KafkaReadiness, TopicSpec, topic_state
from shared.clock import ManualClock

pytestmark = pytest.mark.unit

TOPIC = "paynotify.callbacks"


def described(*partitions: int, error_code: int = 0, topic: str = TOPIC) -> list[dict[str, Any]]:
    return [
        {"topic": "other", "error_code": 0, "partitions": [{"partition": 0, "leader": 1}]},
        {
            "topic": topic,
            "error_code": error_code,
            "partitions": [
                {"partition": i, "leader": leader} for i, leader in enumerate(partitions)
            ],
        },
    ]


def test_topic_with_leaders_everywhere_is_ready() -> None:
    """Every partition has a leader: a produce can be acknowledged."""
    assert topic_state(described(1, 1, 2), TOPIC) == (True, "ok")


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (described(1, -1), "without a leader"),
        (described(1, error_code=5), "not available"),
        (described(), "not available"),
        (described(1, topic="elsewhere"), "does not exist"),
        ([], "does not exist"),
    ],
)
def test_topic_not_ready_says_why(answer: list[dict[str, Any]], words: str) -> None:
    """Missing topic, errors, partitions without leader: not ready, with a reason to read."""
    ready, why = topic_state(answer, TOPIC)
    assert not ready
    assert words in why


def test_a_topic_with_fewer_partitions_or_replicas_than_configured_is_not_ready() -> None:
    """Issue 11: a callbacks topic auto-created with one partition (the broker's default) is
    refused, so only `topics ensure --fix` makes the deployment ready; more is fine."""
    answer = described(1)
    assert topic_state(answer, TOPIC, partitions=6) == (
        False,
        (
            f"topic {TOPIC} has 1 partitions, fewer than the 6 configured "
            "(`paynotify topics ensure --fix` adds them)"
        ),
    )
    assert topic_state(described(1, 1, 1), TOPIC, partitions=2) == (True, "ok")
    replicated = [
        {"topic": TOPIC, "error_code": 0,
         "partitions": [{"partition": 0, "leader": 1, "replicas": [1, 2]}]},
    ]  # fmt: skip
    ready, why = topic_state(replicated, TOPIC, replication=3)
    assert not ready
    assert "2 replicas, fewer than the 3 configured" in why
    assert topic_state(replicated, TOPIC, replication=2) == (True, "ok")


class ScriptedAdmin:
    """Answers describe_topics from a script; counts calls."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def describe_topics(self) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if answer == "hang":
            await asyncio.Event().wait()
        return answer


async def test_readiness_is_cached_briefly_and_then_asked_again() -> None:
    """Probes within the TTL share one metadata request; after it, the broker is asked again."""
    clock = ManualClock()
    admin = ScriptedAdmin(described(1), KafkaConnectionError())
    readiness = KafkaReadiness(admin, TopicSpec((TOPIC,)), clock, timeout=1.0, ttl=1.0)
    assert await readiness.check() == (True, "ok")
    assert await readiness.check() == (True, "ok")
    assert admin.calls == 1
    clock.advance(1.0)
    ready, why = await readiness.check()
    assert not ready
    assert "unreachable" in why
    assert admin.calls == 2


async def test_concurrent_probes_share_one_request() -> None:
    """A burst of /readyz calls costs one metadata request."""
    admin = ScriptedAdmin(described(1))
    readiness = KafkaReadiness(admin, TopicSpec((TOPIC,)), ManualClock(), timeout=1.0)
    results = await asyncio.gather(*(readiness.check() for _ in range(10)))
    assert set(results) == {(True, "ok")}
    assert admin.calls == 1


async def test_a_hanging_broker_is_not_ready_within_the_bound() -> None:
    """The probe gives up after its timeout instead of hanging the health check."""
    readiness = KafkaReadiness(
        ScriptedAdmin("hang"), TopicSpec((TOPIC,)), ManualClock(), timeout=0.05
    )
    async with asyncio.timeout(5):
        ready, why = await readiness.check()
    assert not ready
    assert "timed out" in why


def test_counters_render_every_reason_in_prometheus_text() -> None:
    """/metrics lists every refusal reason with its status, zero or not."""
    counters = IngressCounters()
    counters.published = 3
    counters.refusals[Reason.SIGN_MISMATCH] += 2
    counters.publish_seconds.observe(0.004)
    text = counters.prometheus()
    assert "paynotify_ingress_published_total 3.0\n" in text
    assert 'paynotify_ingress_refusals_total{reason="sign_mismatch",status="401"} 2.0\n' in text
    assert 'paynotify_ingress_refusals_total{reason="kafka_timeout",status="503"} 0.0\n' in text
    assert all(f'reason="{reason}"' in text for reason in Reason)
    # Issue 11: HELP and TYPE for every metric, a publish latency histogram, the process's own.
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert names == helped
    assert all(name.startswith("paynotify_") for name in names)
    assert 'paynotify_ingress_publish_seconds_bucket{le="0.005"} 1.0\n' in text
    assert "paynotify_ingress_in_flight 0.0\n" in text
    assert 'paynotify_build_info{process="ingress"' in text
