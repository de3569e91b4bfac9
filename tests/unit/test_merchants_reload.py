"""The merchants file reloaded while a process runs: new content serves at once, a file that
does not load changes nothing, SIGHUP and a changed file both trigger it."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING

import pytest

from shared.clock import SystemClock
from shared.merchants import LiveMerchants, MerchantsFileError
from shared.merchants_reload import reload, watching

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.unit

OLD, NEW = "1" * 32, "2" * 32


def write(path: Path, *keys: str, mch_id: str = "m1") -> None:
    quoted = ", ".join(f'"{key}"' for key in keys)
    path.write_text(f"[merchants.{mch_id}]\nkeys = [{quoted}]\n")


def key_texts(live: LiveMerchants, mch_id: str = "m1") -> list[str]:
    return [key.secret for key in live[mch_id].keys]


def test_new_content_serves_at_once_and_the_same_content_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "merchants.toml"
    write(path, OLD)
    live = LiveMerchants(path)
    held = live  # what the verifier, the client and the reconciler hold
    assert live.reload() is False
    write(path, NEW, OLD)
    assert live.reload() is True
    assert key_texts(held) == [NEW, OLD]
    write(path, NEW, mch_id="m2")
    assert live.reload() is True
    assert "m1" not in held
    assert list(held) == ["m2"]
    assert len(held) == 1


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"[merchants.m1]\nkeys = [", "not valid TOML"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[merchants.m1]\nkeys = []\n", "m1"),
        (b"", "at least one"),
    ],
)
def test_a_file_that_does_not_load_changes_nothing(
    tmp_path: Path, content: bytes, says: str
) -> None:
    path = tmp_path / "merchants.toml"
    write(path, OLD)
    live = LiveMerchants(path)
    path.write_bytes(content)
    with pytest.raises(MerchantsFileError, match=says):
        live.reload()
    assert key_texts(live) == [OLD]
    assert reload(live, asked=True) is False
    assert live.reload_failures == 1


def test_a_missing_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "merchants.toml"
    write(path, OLD)
    live = LiveMerchants(path)
    path.unlink()
    assert reload(live, asked=False) is False
    assert key_texts(live) == [OLD]


def test_no_key_in_the_refusal(tmp_path: Path) -> None:
    path = tmp_path / "merchants.toml"
    write(path, OLD)
    live = LiveMerchants(path)
    path.write_text(f'[merchants.m1]\nkeys = ["{NEW}", " {NEW}"]\n')
    with pytest.raises(MerchantsFileError) as refused:
        live.reload()
    assert NEW not in str(refused.value)


async def _until(check: Callable[[], bool], bound: float = 5.0) -> None:
    async with asyncio.timeout(bound):
        while not check():
            await asyncio.sleep(0.01)


async def test_sighup_reloads(tmp_path: Path) -> None:
    path = tmp_path / "merchants.toml"
    write(path, OLD)
    live = LiveMerchants(path)
    async with watching(live, every=0, clock=SystemClock()):
        await asyncio.sleep(0)  # the watcher takes the signal
        write(path, NEW, OLD)
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: live.reloads == 1)
    assert key_texts(live) == [NEW, OLD]
    # The handler is gone with the watcher: the default SIGHUP would end this process, so only
    # look that no handler of ours is left on the loop.
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


async def test_a_changed_file_is_seen_without_a_signal(tmp_path: Path) -> None:
    path = tmp_path / "merchants.toml"
    write(path, OLD)
    live = LiveMerchants(path)
    async with watching(live, every=0.05, clock=SystemClock(), signals=False):
        write(path, NEW)
        await _until(lambda: key_texts(live) == [NEW])
        path.write_text("broken [")
        await _until(lambda: live.reload_failures >= 1)
        assert key_texts(live) == [NEW]
