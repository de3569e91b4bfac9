"""deploy/monitoring: the alert rules are well-formed Prometheus rules whose every metric is one
paynotify (or kube-state-metrics) really exports, each documented in docs/operations.md; the
Grafana dashboard draws only exported metrics. The exported names are read from the processes'
own registries, built as the processes build them."""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from redis.asyncio import Redis

from ingress.counters import IngressCounters
from shared.clock import SystemClock
from shared.service.settle import Settlement
from shared.settings import Settings
from tests.support.manifests import ROOT
from workers.__main__ import WorkerProbes
from workers.sweeper_main import SweeperProbes

pytestmark = pytest.mark.unit

ALERTS = ROOT / "deploy" / "monitoring" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "monitoring" / "dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
# kube-state-metrics' names the crash-loop alert reads (not paynotify's).
KUBE_STATE_METRICS = {
    "kube_pod_container_status_restarts_total",
    "kube_pod_container_status_waiting_reason",
}
# PromQL's functions and aggregation operators (prometheus.io/docs/prometheus/latest/querying).
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes",
    "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "day_of_month",
    "day_of_week", "delta", "deriv", "exp", "floor", "group", "histogram_quantile", "holt_winters",
    "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log2", "log10", "max", "max_over_time", "min", "min_over_time", "minute", "month",
    "predict_linear", "quantile", "quantile_over_time", "rate", "resets", "round", "scalar",
    "sort", "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar", "sum", "sum_over_time",
    "time", "timestamp", "topk", "vector", "year", "by", "without", "on", "ignoring",
    "group_left", "group_right",
}  # fmt: skip
_METRIC = re.compile(r"\b((?:paynotify|kube)_[a-z0-9_]+)\b")
_DURATION = r"\d+(?:ms|[smhdwy])"
_RANGE = re.compile(r"\[([^\]]*)\]")


class _Runner:
    held = 0


@cache
def exported() -> frozenset[str]:
    """Every series name the ingress, a worker and the sweeper expose on /metrics."""
    # A client that never connects: the probes only prepare their scripts with it.
    redis = Redis(host="127.0.0.1", port=1)
    registries = (
        IngressCounters().registry,
        WorkerProbes(Settings(), SystemClock(), redis, None, _Runner(), Counter()).registry,  # type: ignore[arg-type]
        SweeperProbes(SystemClock(), redis).registry,
    )
    names: set[str] = set()
    for registry in registries:
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                names.add(name)
                if kind == "histogram":
                    names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return frozenset(names)


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    return [rule for group in document["groups"] for rule in group["rules"]]


def _promql_problems(expr: str, known: frozenset[str]) -> list[str]:
    """What a reader of Prometheus' grammar would object to, short of a full parser: unknown
    metrics, unknown functions, unbalanced brackets, malformed ranges."""
    problems = [f"unknown metric {m}" for m in _METRIC.findall(expr) if m not in known]
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    problems += [
        f"unknown function {word}"
        for word in re.findall(r"\b([a-z_][a-z0-9_]*)\s*\(", without_strings)
        if word not in PROMQL_FUNCTIONS
    ]
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for char in without_strings:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                problems.append(f"unbalanced {char}")
    problems += [f"unclosed {c}" for c, n in depth.items() if n > 0]
    for window in _RANGE.findall(without_strings):
        if not re.fullmatch(rf"{_DURATION}(?::{_DURATION})?", window.strip()):
            problems.append(f"bad range [{window}]")
    return problems


def test_the_exported_names_are_read_from_the_code() -> None:
    """The control for the checks below: the registries show names the tests know."""
    names = exported()
    assert {
        "paynotify_ingress_published_total",
        "paynotify_ingress_publish_seconds_bucket",
        "paynotify_worker_consumer_lag",
        "paynotify_sweeper_leading",
        "paynotify_process_start_time_seconds",
        "paynotify_build_info",
    } <= names
    assert "paynotify_ingress_no_such_thing_total" not in names


def test_every_rule_is_complete_and_documented() -> None:
    """alert, expr, for, labels.severity, annotations (summary, description, runbook), unique
    names; each runbook anchor is a heading of docs/operations.md."""
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(_DURATION, rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in headings, rule["alert"]


def test_every_expression_reads_only_metrics_that_exist() -> None:
    known = exported() | KUBE_STATE_METRICS
    problems = {r["alert"]: p for r in _rules() if (p := _promql_problems(r["expr"], known))}
    assert problems == {}


def test_the_rules_cover_what_the_issue_asks_for() -> None:
    """Lag growing, dead letters, refusal-rate spike, no notifications, sweeper stalled, crash
    loop."""
    assert {
        "PaynotifyConsumerLagGrowing",
        "PaynotifyDeadLetters",
        "PaynotifyRefusalRateSpike",
        "PaynotifyNoNotifications",
        "PaynotifySweeperStalled",
        "PaynotifySweeperNoLeader",
        "PaynotifyCrashLooping",
    } <= {r["alert"] for r in _rules()}


def test_the_label_values_the_rules_match_are_ones_the_code_counts() -> None:
    """`event="dead_lettered"` and `event="queries"` are events the worker and the sweeper
    count; the states and statuses matched are ones the gauges and refusals carry."""
    text = ALERTS.read_text() + DASHBOARD.read_text()
    # The sweeper's process and its use case (one order's sweep) count into one set of stats.
    sweeper_source = (ROOT / "workers" / "sweeper.py").read_text() + (
        ROOT / "shared" / "service" / "sweep.py"
    ).read_text()
    assert Settlement.DEAD_LETTERED.value == "dead_lettered"
    for event in ("dead_lettered", "queries"):
        assert f'self.stats["{event}"]' in sweeper_source, event
    for state in ("overdue", "due"):
        assert f'state="{state}"' in text
    for source, state in (
        ("workers/sweeper_main.py", 'labels("overdue")'),
        ("workers/__main__.py", 'labels("due")'),
    ):
        assert state in (ROOT / source).read_text()
    ingress = IngressCounters()
    refusals = generate_latest(ingress.registry).decode()
    assert 'status="503"' in refusals
    assert re.search(
        r'paynotify_ingress_refusals_total\{reason="[a-z_]+",status="4\d\d"\}', refusals
    )


def test_a_broken_expression_is_refused() -> None:
    """The checker's own control: each flaw is named."""
    known = exported()
    assert _promql_problems("sum(rate(paynotify_ingress_published_total[5m]))", known) == []
    assert _promql_problems("rate(paynotify_ingress_publishes_total[5m])", known) == [
        "unknown metric paynotify_ingress_publishes_total"
    ]
    assert _promql_problems("sum(rates(paynotify_ingress_published_total[5m]))", known) == [
        "unknown function rates"
    ]
    assert _promql_problems("sum(rate(paynotify_ingress_published_total[5m])", known) == [
        "unclosed ("
    ]
    assert _promql_problems("rate(paynotify_ingress_published_total[5 minutes])", known) == [
        "bad range [5 minutes]"
    ]


def test_the_dashboard_draws_only_exported_metrics() -> None:
    """Valid JSON with a Prometheus datasource variable; every panel has a unique id, a place
    on the 24-column grid that overlaps no other, and queries that read exported metrics."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "paynotify"
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    known = exported()
    drawn: set[str] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, panel["title"]
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert _promql_problems(target["expr"], known) == [], panel["title"]
            drawn |= set(_METRIC.findall(target["expr"]))
    # Each process has a panel: the ingress, the workers, the sweeper.
    assert {"paynotify_ingress_published_total", "paynotify_worker_consumer_lag"} <= drawn
    assert {"paynotify_sweeper_leading", "paynotify_sweeper_pending_orders"} <= drawn
