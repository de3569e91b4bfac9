"""`paynotify stack up|status|down` as a user runs them: separate processes, the servers known only
by their pid files, and nothing left running after `down`. Also redis-server started and stopped
with /proc unreadable, as on macOS (the stack used to read /proc to tell its servers apart)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from devtools.stack.local import LocalStack, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.integration, pytest.mark.own_stack]

REPO = Path(__file__).resolve().parents[2]


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stack_command(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "shared.cli", "stack", *args, "--state-dir", str(state_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture
def no_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    read_text = Path.read_text

    def refuse(path: Path, *args: object, **kwargs: object) -> str:
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)
        return read_text(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", refuse)


@pytest.fixture
def cli_stack(tmp_path: Path) -> Iterator[Path]:
    state_dir = tmp_path / "stack"
    try:
        yield state_dir
    finally:  # whatever the test did, leave nothing running
        stack_command(state_dir, "down")


def test_up_status_down_leave_no_server_running(cli_stack: Path) -> None:
    """`up` starts Kafka and Redis and prints their addresses; `status` (another process) finds
    both by their pid files; `down` (a third) stops both: neither pid is running after it."""
    kafka_port, redis_port = free_port(), free_port()
    ports = ("--kafka-port", str(kafka_port), "--redis-port", str(redis_port))
    up = stack_command(cli_stack, "up", *ports)
    assert up.returncode == 0, up.stderr
    assert f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kafka_port}\n" in up.stdout
    assert f"export REDIS_URL=redis://127.0.0.1:{redis_port}/0\n" in up.stdout
    pids = {name: int((cli_stack / f"{name}.pid").read_text()) for name in ("kafka", "redis")}
    assert all(running(pid) for pid in pids.values())

    status = stack_command(cli_stack, "status", *ports)
    assert (status.returncode, status.stdout) == (0, "kafka: running\nredis: running\n")

    down = stack_command(cli_stack, "down", *ports)
    assert down.returncode == 0, down.stderr
    assert {name: running(pid) for name, pid in pids.items()} == {"kafka": False, "redis": False}
    assert not list(cli_stack.glob("*.pid"))
    status = stack_command(cli_stack, "status", *ports)
    assert (status.returncode, status.stdout) == (1, "kafka: stopped\nredis: stopped\n")


def test_redis_starts_and_stops_without_proc(tmp_path: Path, no_proc: None) -> None:
    """With /proc unreadable, redis-server starts (before: "redis exited while starting") and a
    `down` from another LocalStack stops it (before: "redis not running", and it stayed)."""
    stack = LocalStack(state_dir=tmp_path, kafka_port=0, redis_port=free_port())
    stack.start_redis()
    pid = int((tmp_path / "redis.pid").read_text())
    try:
        assert stack.status()["redis"]
        LocalStack(state_dir=tmp_path, kafka_port=0, redis_port=stack.redis_port).stop_redis()
        assert not running(pid)
    finally:
        stack.stop_redis()
        if running(pid):
            psutil.Process(pid).kill()
