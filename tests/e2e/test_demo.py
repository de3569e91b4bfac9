"""`make run`'s demo at a small size, through its command line (`python -m devtools.demo`): the same
code path as `make run`, only fewer orders. Kafka is the module's own broker (tests/e2e/conftest.py:
other tests read the project's topics from their start), Redis the session's, where the demo claims
an empty database of its own.

- A whole run: every created and paid order has exactly one outcome of the expected type, no
  forged notification got through, the orders whose notifications were all dropped were settled
  by the sweeper, and afterwards every process it started is gone and its Redis database empty.
- A Ctrl-C in the middle (SIGINT to the whole process group, as a terminal sends it): the demo
  prints what it saw, exits 130, and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psutil
import pytest
from redis import Redis

from devtools.demo.isolation import with_database
from shared.adapters.redis_client import is_cluster_url
from tests.support.redis_db import empty_db, open_redis

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def demo(module_kafka: str, redis_url: str, merchants_file: Path, tmp_path: Path) -> Iterator[Any]:
    """Starts the demo in its own process group; stops what is left of it at the end. On a
    Redis Cluster the demo needs the cluster empty (it has only database 0): emptied first."""
    if is_cluster_url(redis_url):
        asyncio.run(empty_db(redis_url))
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [
                sys.executable, "-m", "devtools.demo", "--merchants", str(merchants_file),
                "--state-dir", str(tmp_path / "state"), "--json", str(tmp_path / "summary.json"),
                *args,
            ],
            cwd=REPO,
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": module_kafka, "REDIS_URL": redis_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: a SIGINT to it is what a Ctrl-C sends
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def summary_of(tmp_path: Path) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads((tmp_path / "summary.json").read_bytes())
    return document


def test_a_small_run_settles_every_order_once(demo: Any, redis_url: str, tmp_path: Path) -> None:
    """40 orders with every kind of mess: the summary's checks all hold."""
    process = demo("--orders", "40", "--rate", "20", "--expiry", "6", "--settle-timeout", "40")
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    summary = summary_of(tmp_path)

    failed = [c for c in summary["checks"] if not c["ok"]]
    assert not failed, output
    names = {c["name"] for c in summary["checks"]}
    assert {
        "every order has exactly one outcome",
        "no forged notification accepted",
        "dropped notifications settled by the sweeper",
    } <= names
    assert summary["created"] == 40

    # The numbers agree with each other: one outcome per order and per repeat payment.
    mix = summary["mix"]
    outcomes = summary["outcomes"]
    assert sum(outcomes.values()) == 40 + mix["repeat_payment"]
    assert outcomes["paynotify.order.expired"] == mix["unpaid"]
    assert outcomes["paynotify.payment.repeated"] == mix["repeat_payment"]
    assert outcomes["paynotify.payment.amount_mismatch"] == mix["underpaid"]
    assert summary["settled_by"]["query"] >= mix["dropped"]
    # Every forged notification reached the ingress and was refused for its signature.
    refused = summary["ingress"]["refused"]
    assert refused.get("sign_mismatch (401)", 0) >= mix["forged"]
    assert summary["ingress"]["published"] > 0
    # Every process's /metrics was scraped at the end of the run and shows real work.
    metrics = summary["metrics"]
    assert set(metrics) == {"ingress", "worker-0", "worker-1", "sweeper-0"}
    published = summary["ingress"]["published"]
    assert metrics["ingress"]["paynotify_ingress_published_total"] == published
    workers = [metrics[f"worker-{i}"].get("paynotify_worker_events_total", 0) for i in (0, 1)]
    assert sum(workers) >= sum(outcomes.values())
    assert metrics["sweeper-0"]["paynotify_sweeper_events_total"] >= mix["dropped"]
    assert all(m["paynotify_build_info"] == 1 for m in metrics.values())
    decided = sum(metrics[f"worker-{i}"].get("paynotify_worker_outcomes_total", 0) for i in (0, 1))
    assert decided >= sum(v for k, v in outcomes.items() if k != "paynotify.order.expired")
    calls = "paynotify_platform_call_seconds_count"
    assert sum(metrics[f"worker-{i}"].get(calls, 0) for i in (0, 1)) > 0
    assert metrics["sweeper-0"][calls] > 0
    assert "End-to-end latency" in output
    assert "result: ok" in output

    # Everything it started is stopped, and its Redis database is empty again.
    assert set(summary["processes"]) == {"sandbox", "ingress", "worker-0", "worker-1", "sweeper-0"}
    assert not [name for name, pid in summary["processes"].items() if alive(pid)]
    if is_cluster_url(redis_url):  # the demo had the whole cluster (database 0), and emptied it
        assert summary["redis_db"] == 0
        assert asyncio.run(_cluster_keys(redis_url)) == 0
        return
    client = Redis.from_url(with_database(redis_url, summary["redis_db"]))
    try:
        assert summary["redis_db"] != 0
        assert client.dbsize() == 0
    finally:
        client.close()


async def _cluster_keys(url: str) -> int:
    client = open_redis(url)
    try:
        return int(await client.dbsize())
    finally:
        await client.aclose()


def test_ctrl_c_stops_everything(demo: Any, tmp_path: Path) -> None:
    """SIGINT to the process group mid-run: a partial summary, exit 130, no process left."""
    process = demo("--orders", "2000", "--rate", "20")
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    for line in process.stdout:  # wait until orders are being created
        seen.append(line)
        if line.startswith("[") and "orders" in line and not line.startswith("[    0s]"):
            break
        assert time.monotonic() < deadline, "".join(seen)
    os.killpg(process.pid, signal.SIGINT)
    rest, _ = process.communicate(timeout=90)
    output = "".join(seen) + rest
    assert process.returncode == 130, output
    assert "result: interrupted" in output
    summary = summary_of(tmp_path)
    assert summary["interrupted"] is True
    assert not [name for name, pid in summary["processes"].items() if alive(pid)], output
