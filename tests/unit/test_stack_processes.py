"""How the local stack recognises its own servers: through psutil, never /proc (which macOS lacks).

A stand-in server here is `sleep` started under the name `redis-server` (a symlink: the kernel
and psutil name a process after the file it ran), so no service is needed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from devtools.stack.local import LocalStack

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading /proc fails, as on macOS (psutil reads it itself on Linux, not through Path)."""
    read_text = Path.read_text

    def refuse(path: Path, *args: object, **kwargs: object) -> str:
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)
        return read_text(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", refuse)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(state_dir=tmp_path / "state", kafka_port=0, redis_port=0)
    stack.state_dir.mkdir()
    try:
        yield stack
    finally:
        for child in stack._children.values():
            child.kill()
            child.wait()


def fake_redis(stack: LocalStack, tmp_path: Path) -> int:
    sleep = shutil.which("sleep")
    assert sleep is not None
    server = tmp_path / "redis-server"
    server.symlink_to(sleep)
    stack._spawn("redis", [str(server), "60"], tmp_path / "out.log")
    return int(stack._pidfile("redis").read_text())


def test_a_running_server_is_alive_without_proc(
    stack: LocalStack, tmp_path: Path, no_proc: None
) -> None:
    """With /proc unreadable (macOS) a running server is alive; before, it never was, so `up`
    said "redis exited while starting" and `down` left it running."""
    fake_redis(stack, tmp_path)
    assert stack._alive("redis")


def test_down_stops_the_server_it_recorded_without_proc(
    stack: LocalStack, tmp_path: Path, no_proc: None
) -> None:
    """`stop_redis` from another LocalStack (as `paynotify stack down` is another process) ends
    the server: no orphan left running."""
    pid = fake_redis(stack, tmp_path)
    other = LocalStack(state_dir=stack.state_dir, kafka_port=0, redis_port=0)
    other.stop_redis()
    stack._children.pop("redis").wait(timeout=5)
    assert not psutil.pid_exists(pid)
    assert not stack._pidfile("redis").exists()


def test_a_zombie_is_not_alive(stack: LocalStack, tmp_path: Path) -> None:
    """A server that exited but was not reaped yet is not running."""
    pid = fake_redis(stack, tmp_path)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not stack._alive("redis")


def test_another_program_under_the_recorded_pid_is_not_alive(stack: LocalStack) -> None:
    """A pid file naming a process that is not redis-server (here: this test) is not ours."""
    stack._pidfile("redis").write_text(str(os.getpid()))
    assert not stack._alive("redis")


def test_a_pid_reused_after_the_pid_file_was_written_is_not_alive(
    stack: LocalStack, tmp_path: Path
) -> None:
    """A pid file older than the process it names (left from before a reboot, the pid since
    given to another server) is not ours: `down` must not stop somebody else's process."""
    fake_redis(stack, tmp_path)
    pidfile = stack._pidfile("redis")
    an_hour_ago = time.time() - 3600
    os.utime(pidfile, (an_hour_ago, an_hour_ago))
    assert not stack._alive("redis")


def test_a_dead_pid_is_forgotten(stack: LocalStack, tmp_path: Path) -> None:
    """A pid file whose process is gone is not alive, and is removed."""
    pid = fake_redis(stack, tmp_path)
    child = stack._children.pop("redis")
    child.kill()
    child.wait()
    assert not psutil.pid_exists(pid)
    assert not stack._alive("redis")
    assert not stack._pidfile("redis").exists()


def test_the_stack_and_the_tests_read_no_proc() -> None:
    """Process handling of the stack and the tests goes through psutil, which works on macOS."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("shared", "tests")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path.name != Path(__file__).name
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if '"/proc' in line
    ]
    assert offenders == []
