"""Statistics of the development tools (the demo's report, the benchmarks): one definition each,
so their figures compare."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence: the smallest value with at
    least `share` (0 < share <= 1) of the values at or below it."""
    if not ordered:
        raise ValueError("no values")
    if not 0 < share <= 1:
        raise ValueError("share must be in (0, 1]")
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]
