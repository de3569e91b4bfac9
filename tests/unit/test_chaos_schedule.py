"""The chaos run's pure parts: its fault schedule, and the recovery times read from offsets."""

from __future__ import annotations

import itertools
import random

import pytest

from tests.chaos.monitor import Sample, longest_stalls, recovered_at
from tests.chaos.schedule import (
    FULL_COUNTS,
    MIN_GAP,
    STOP_SECONDS,
    Kind,
    Timing,
    build_schedule,
    planned_seconds,
)

pytestmark = pytest.mark.unit


def schedule(**changes: object):
    options: dict[str, object] = {
        "short": False, "brokers": 1, "workers": 2, "timing": Timing(), "window": None,
    }  # fmt: skip
    options.update(changes)
    return build_schedule(random.Random(7), **options)  # type: ignore[arg-type]


def test_one_seed_gives_one_schedule() -> None:
    assert schedule() == schedule()
    other = build_schedule(random.Random(8), short=False, brokers=1, workers=2, timing=Timing())
    assert other.faults != schedule().faults


def test_a_full_run_has_every_kind_several_times_and_every_pause_length() -> None:
    """Several of each kind (issue 10); leader kills only with three brokers; SIGSTOP for 5,
    10, 15, 20 and 40 s."""
    one = schedule()
    kinds = [f.kind for f in one.faults]
    assert Kind.LEADER_KILL not in kinds
    for kind, count in FULL_COUNTS.items():
        if kind is not Kind.LEADER_KILL:
            assert kinds.count(kind) == count >= 2
    stops = sorted(f.seconds for f in one.faults if f.kind is Kind.WORKER_STOP)
    assert stops == sorted(STOP_SECONDS)
    three = schedule(brokers=3)
    assert [f.kind for f in three.faults].count(Kind.LEADER_KILL) == FULL_COUNTS[Kind.LEADER_KILL]
    assert all(1 <= f.target <= 3 for f in three.faults if f.kind is Kind.KAFKA_KILL)


def test_a_short_run_has_each_kind_once() -> None:
    short = schedule(short=True)
    assert sorted(f.kind for f in short.faults) == sorted(
        k for k in Kind if k is not Kind.LEADER_KILL
    )


def test_the_broker_outage_outlasts_the_platforms_scaled_retries() -> None:
    """2940 s of tries at the time scale, plus a margin: only the sweeper can settle."""
    for scale in (0.01, 0.005):
        outage = [f for f in schedule(timing=Timing(time_scale=scale)).faults
                  if f.kind is Kind.KAFKA_OUTAGE]  # fmt: skip
        assert outage
        assert all(f.seconds > 2940 * scale for f in outage)


@pytest.mark.parametrize("window", [None, 2000.0])
def test_faults_of_one_lane_never_overlap_and_fit_the_window(window: float | None) -> None:
    one = schedule(window=window)
    assert one.window >= (window or 0)
    timing = Timing()
    for faults in one.lanes().values():
        for before, after in itertools.pairwise(faults):
            assert after.at >= before.at + planned_seconds(before, timing) + MIN_GAP - 0.1
        assert faults[-1].at + planned_seconds(faults[-1], timing) <= one.window + 0.1


def sample(at: float, committed: dict[int, int], ends: dict[int, int]) -> Sample:
    return Sample(at, committed, ends)


def test_recovery_is_when_the_backlog_at_the_fault_start_is_committed() -> None:
    """The end offsets before the fault are the bar; moving past them after the fault ended
    is recovery, however much new traffic came meanwhile."""
    samples = [
        sample(10, {0: 5, 1: 7}, {0: 8, 1: 7}),  # the last before the fault at 11
        sample(12, {0: 5, 1: 7}, {0: 20, 1: 9}),  # partition 0 short of 8
        sample(20, {0: 8, 1: 7}, {0: 30, 1: 12}),  # both reached 8 and 7
        sample(25, {0: 9, 1: 9}, {0: 31, 1: 12}),
    ]
    assert recovered_at(samples, started=11, ended=15) == 20
    assert recovered_at(samples, started=11, ended=22) == 25  # not before the fault ended
    assert recovered_at(samples, started=30, ended=31) is None  # nothing after it


def test_the_longest_stall_counts_time_with_messages_waiting_and_no_commit() -> None:
    samples = [
        sample(0, {0: 1}, {0: 1}),
        sample(1, {0: 1}, {0: 4}),  # waiting from here
        sample(5, {0: 1}, {0: 6}),
        sample(9, {0: 3}, {0: 6}),  # moved: a new stall may begin
        sample(10, {0: 6}, {0: 6}),
    ]
    assert longest_stalls(samples) == {0: 4.0}


def test_the_hand_over_is_read_from_the_rebalance_the_fault_caused() -> None:
    """After a kill of worker-1: the other worker's revocation in the first rebalance (not a
    later one), and when the restarted worker-1 got partitions again."""
    from tests.chaos.harness import _handover  # noqa: PLC0415 - the harness's log reading
    from tests.chaos.injector import FaultRecord  # noqa: PLC0415
    from tests.chaos.schedule import Fault  # noqa: PLC0415

    def line(ts: float, event: str, process: str, seconds: float = 0.0) -> dict[str, object]:
        return {"ts": ts, "event": event, "process": process, "seconds": seconds}

    events = [
        line(99.0, "partitions_revoked", "worker-0", 9.0),  # before the fault
        line(111.0, "partitions_revoked", "worker-0", 0.02),
        line(111.5, "partitions_assigned", "worker-0"),
        line(111.6, "partitions_assigned", "worker-1"),
        line(150.0, "partitions_revoked", "worker-0", 7.0),  # a later rebalance
    ]
    kill = FaultRecord(Fault(0.0, Kind.WORKER_KILL, 0.0, 1), started=100.0, ended=100.5)
    assert _handover(kill, events) == {"revoke_s": 0.02, "reassigned_s": pytest.approx(11.6)}
    pause = FaultRecord(Fault(0.0, Kind.WORKER_STOP, 15.0, 1), started=100.0, ended=115.0)
    assert _handover(pause, events) == {"revoke_s": 0.02, "reassigned_s": pytest.approx(11.5)}
    # A pause shorter than the session timeout causes no rebalance: a later one is not its.
    short = FaultRecord(Fault(0.0, Kind.WORKER_STOP, 5.0, 1), started=120.0, ended=125.0)
    assert _handover(short, events) == {}


def test_a_run_can_be_limited_to_some_kinds_spread_over_its_duration() -> None:
    """`--faults worker_kill,worker_stop --duration 300`: a clean hand-over measurement."""
    only = frozenset({Kind.WORKER_KILL, Kind.WORKER_STOP})
    limited = schedule(only=only, window=300.0)
    assert {f.kind for f in limited.faults} == only
    assert limited.window == 300.0
    assert min(b.at - a.at for a, b in itertools.pairwise(limited.faults)) > 15


def test_the_stall_is_how_long_partitions_stood_still_from_the_fault_on() -> None:
    """A worker paused at 10: its partition 1 waits from 11 to 21 (reassigned), partition 0
    keeps moving; a stall beginning after the fault ended is not counted."""
    from tests.chaos.monitor import stall_after  # noqa: PLC0415

    samples = [
        sample(9, {0: 1, 1: 1}, {0: 2, 1: 1}),
        sample(11, {0: 2, 1: 1}, {0: 3, 1: 4}),
        sample(16, {0: 3, 1: 1}, {0: 4, 1: 6}),
        sample(21, {0: 4, 1: 6}, {0: 5, 1: 7}),
        sample(30, {0: 4, 1: 7}, {0: 9, 1: 7}),  # partition 0 stands from 21, after the end
        sample(40, {0: 4, 1: 7}, {0: 9, 1: 7}),
    ]
    assert stall_after(samples, started=10, ended=15) == 10
    assert stall_after(samples, started=10, ended=25) == 19  # then 0's counts: from 21 to 40
