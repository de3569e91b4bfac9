"""The one percentile of the demo's report and the benchmarks (devtools.stats)."""

from __future__ import annotations

import pytest

from devtools.stats import percentile

pytestmark = pytest.mark.unit


def test_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 0.999) == 100
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.001) == 1
    assert percentile([7.0], 0.5) == 7


def test_the_value_has_at_least_its_share_at_or_below_it() -> None:
    values = [0.1, 0.2, 0.2, 0.4, 5.0]
    for share in (0.2, 0.4, 0.6, 0.8, 0.95, 1.0):
        p = percentile(values, share)
        assert sum(v <= p for v in values) >= share * len(values)
        assert sum(v < p for v in values) < share * len(values)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.01])
def test_a_share_outside_0_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        percentile([1.0], share)


def test_no_values_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
