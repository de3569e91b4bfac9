"""The demo's scrape of every process's /metrics: reduced to one figure per sample name, and
the check that each role shows its work."""

from __future__ import annotations

import pytest

from devtools.demo.report import Observed, checks, metric_totals

pytestmark = pytest.mark.unit

NAME = "every process's /metrics shows its work"
TEXT = """# HELP paynotify_worker_events_total What the worker did, by event.
# TYPE paynotify_worker_events_total counter
paynotify_worker_events_total{event="published"} 7.0
paynotify_worker_events_total{event="duplicate"} 2.0
paynotify_build_info{process="worker",python="3.11.7",version="0.1.0"} 1.0
process_cpu_seconds_total 1.5
"""


def test_samples_are_summed_over_their_labels_and_only_ours_kept() -> None:
    assert metric_totals(TEXT) == {
        "paynotify_worker_events_total": 9.0,
        "paynotify_build_info": 1.0,
    }


def _check(metrics: dict[str, dict[str, float]]) -> tuple[bool, str]:
    (found,) = [
        c for c in checks(Observed(run_id="r", orders=[], metrics=metrics)) if c.name == NAME
    ]
    return found.ok, found.detail


def _proc(work: str | None, amount: float = 1.0) -> dict[str, float]:
    return {"paynotify_build_info": 1.0, **({work: amount} if work else {})}


def test_each_role_must_show_work_but_not_every_worker() -> None:
    busy = {
        "ingress": _proc("paynotify_ingress_published_total"),
        "worker-0": _proc(None),  # joined late, had nothing to do: fine
        "worker-1": _proc("paynotify_worker_events_total", 40),
        "sweeper-0": _proc("paynotify_sweeper_events_total"),
    }
    assert _check(busy) == (True, "4 processes scraped")
    idle_sweeper = {**busy, "sweeper-0": _proc(None)}
    assert _check(idle_sweeper) == (False, "4 processes scraped; no work shown by sweeper")
    no_info = {**busy, "worker-0": {}}
    assert _check(no_info)[0] is False
    assert not _check({})[0]
