"""The test suite's own settings for CI."""

from __future__ import annotations

import pytest
from hypothesis import settings

pytestmark = pytest.mark.unit


def test_ci_replays_the_same_hypothesis_examples_and_prints_how_to_replay() -> None:
    """CI's profile (loaded in tests/conftest.py when CI is set) is derandomized, with blobs."""
    ci = settings.get_profile("ci")
    assert ci.derandomize
    assert ci.print_blob
