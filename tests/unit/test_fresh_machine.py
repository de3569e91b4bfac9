"""What a fresh machine runs: CI's script calls nothing but the make targets the README gives a
newcomer, and `make test` alone depends on everything it needs (issue 13)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def prerequisites(target: str) -> list[str]:
    makefile = (REPO / "Makefile").read_text()
    found = re.search(rf"^{re.escape(target)}:([^=\n]*)$", makefile, re.MULTILINE)
    assert found is not None, target
    return found.group(1).split()


def test_ci_runs_only_what_the_readme_tells_a_newcomer() -> None:
    """.ci/run installs nothing itself: each command is `make <target>` the README names."""
    lines = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    commands = [line for line in lines if not line.startswith(("set ", "cd "))]
    readme = (REPO / "README.md").read_text()
    assert commands
    for command in commands:
        assert re.fullmatch(r"make [a-z-]+", command), command
        assert f"`{command}`" in readme or f"\n{command} " in readme, command


def test_make_test_obtains_what_it_needs() -> None:
    """`make test` builds the venv and obtains the services' programs (and Kafka's jars) first."""
    assert prerequisites("test") == ["install", "services-deps"]
    assert prerequisites("services-deps") == ["install"]
    script = (REPO / "deploy" / "services-deps.sh").read_text()
    assert "ensure_kafka_jars" in script
    assert "apt-get install" in script
    for system in ("Debian/Ubuntu", "Fedora", "macOS"):
        assert script.count(system) >= 2, system  # redis-server, and Java with Maven
