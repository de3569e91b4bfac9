"""The contract suites' one parameter: each case runs on the in-memory fake (a unit test) and
on the real service (an integration test: the session's Redis)."""

from __future__ import annotations

import pytest


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("redis", marks=pytest.mark.integration),
    ]
)
def redis_or_memory(request: pytest.FixtureRequest) -> str | None:
    """The session's Redis URL for the adapter's cases (the services start only for them),
    None for the fake's."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else None
