"""PAYNOTIFY_EVENT_LOOP: `asyncio` by default, `uvloop` when asked, a clear error otherwise; and
the collector settled by every process's `run`."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import TYPE_CHECKING, Any

import pytest

from shared.event_loop import GEN0_THRESHOLD, EventLoopUnavailableError, loop_factory, run
from shared.settings import Settings, SettingsError

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    """`run` settles this (the test) process's collector: put it back for the other tests."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_default_is_asyncio() -> None:
    """Nothing set: asyncio's own loop, the pure-asyncio path."""
    assert Settings.from_env({}).event_loop == "asyncio"
    assert loop_factory("asyncio") is None


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_each_choice_is_read(choice: str) -> None:
    """Both names are taken as given."""
    assert Settings.from_env({"PAYNOTIFY_EVENT_LOOP": choice}).event_loop == choice


def test_an_unknown_loop_is_refused() -> None:
    """A typo is a settings error at start-up, not a silent fallback."""
    with pytest.raises(SettingsError, match="PAYNOTIFY_EVENT_LOOP"):
        Settings.from_env({"PAYNOTIFY_EVENT_LOOP": "trio"})


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_run_runs_on_the_chosen_loop(choice: Any) -> None:
    """`run` returns the coroutine's result, on uvloop's loop when that is chosen."""

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    module = run(loop_module(), choice)
    assert module.startswith("uvloop") == (choice == "uvloop")


def test_uvloop_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop chosen but not installed: an error that names the extra to install."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # None in sys.modules: ImportError

    async def never() -> None:
        raise AssertionError

    with pytest.raises(EventLoopUnavailableError, match=r"paynotify\[fast\]"):
        run(never(), "uvloop")


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_run_settles_the_collector_before_the_loop_starts(choice: Any) -> None:
    """Every process's objects from start-up are frozen out of later collections, and the young
    generation is collected every GEN0_THRESHOLD allocations; the older generations keep
    Python's thresholds."""
    gc.set_threshold(700, 10, 10)

    async def collector() -> tuple[tuple[int, int, int], int]:
        return gc.get_threshold(), gc.get_freeze_count()

    threshold, frozen = run(collector(), choice)
    assert threshold == (GEN0_THRESHOLD, 10, 10)
    assert frozen > 10_000  # this process's modules, classes and functions at least
