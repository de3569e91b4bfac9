"""deploy/Dockerfile, its lock file and .dockerignore, checked without a Docker engine: a
pinned base, a non-root user, a HEALTHCHECK that really answers from a /healthz, dependencies
from a lock that names exactly the runtime closure of pyproject.toml, and a build context
without the virtualenv, the tests or the caches."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tomllib
from importlib import metadata

import pytest
from aiohttp import web
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shared.stack.local import free_port
from tests.support.manifests import ROOT

pytestmark = pytest.mark.unit

DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
LOCK = ROOT / "deploy" / "requirements.lock"
# The image's interpreter and platform: the lock's markers are evaluated for it.
IMAGE_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.14",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"not an exact pin: {line}"
        assert re.fullmatch(r"[\w.]+", version), f"not an exact pin: {line}"
        pins[canonicalize_name(name)] = version
    return pins


def _runtime_closure(*, locked_only: bool = False) -> set[str]:
    """The distributions pyproject.toml's [project] dependencies pull in, on the image, as the
    installed metadata says. `locked_only`: descend only into packages installed at their
    locked version (a newer one may need what the locked one does not; offline, only the
    installed metadata is known)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _locked()
    todo = [(Requirement(r), "") for r in project["dependencies"]]
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate(
            {**IMAGE_ENVIRONMENT, "extra": extra}
        ):
            continue
        name = canonicalize_name(requirement.name)
        names.add(name)
        if locked_only and metadata.version(name) != pins.get(name):
            continue
        for wanted in {"", *requirement.extras}:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            todo += [(Requirement(r), wanted) for r in metadata.requires(name) or []]
    return names


def test_the_base_image_is_pinned_to_a_patch_release() -> None:
    """An exact Python patch release on a named Debian release, for both stages."""
    (arg,) = [v for k, v in _instructions() if k == "ARG" and v.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-(bookworm|trixie)", arg)
    assert arg.removeprefix("PYTHON_IMAGE=python:").startswith(
        IMAGE_ENVIRONMENT["python_full_version"] + "-"
    )
    assert [v.split()[0] for k, v in _instructions() if k == "FROM"] == ["${PYTHON_IMAGE}"] * 2


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [v for k, v in _instructions() if k == "USER"]
    assert users == ["10001:10001"]  # the manifests' runAsUser
    assert [k for k, _ in _instructions()][-1] == "ENTRYPOINT"


def test_dependencies_come_from_the_lock_and_nothing_else() -> None:
    """The lock is installed with --no-deps, and `pip check` fails the build if it misses one."""
    runs = [v for k, v in _instructions() if k == "RUN"]
    assert any("-r requirements.lock" in r and "--no-deps" in r for r in runs)
    assert any("--no-deps" in r and "pip check" in r for r in runs)


def test_the_lock_pins_the_runtime_closure_and_nothing_else() -> None:
    """Every runtime dependency of the locked versions, and nothing from the dev extra (pytest,
    ruff...). Where `make install` resolved a newer version than the lock, that version's own
    dependencies are not asked of the lock: the image installs the locked one (and its build's
    `pip check` would refuse a lock that misses any)."""
    locked = set(_locked())
    assert _runtime_closure(locked_only=True) <= locked
    assert locked <= _runtime_closure()


def _healthcheck_script() -> str:
    (healthcheck,) = [v for k, v in _instructions() if k == "HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    script: str = command[2]
    return script


async def test_the_healthcheck_passes_against_a_live_healthz() -> None:
    """The HEALTHCHECK's Python, run as Docker runs it, against a /healthz on
    PAYNOTIFY_METRICS_PORT: exit status 0."""
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _healthcheck_script(),
            env={"PAYNOTIFY_METRICS_PORT": str(port)},
        )
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        await runner.cleanup()


def test_the_healthcheck_script_compiles() -> None:
    compile(_healthcheck_script(), "HEALTHCHECK", "exec")


def test_the_build_context_leaves_out_what_the_image_does_not_need() -> None:
    """.dockerignore excludes the virtualenv, git, caches, tests, benchmarks and docs, and
    keeps every path the Dockerfile copies."""
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "tests", "benchmarks", "docs", ".pytest_cache"} <= ignored
    copied = [
        v.split()[:-1] for k, v in _instructions() if k == "COPY" and not v.startswith("--from")
    ]
    for sources in copied:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source not in ignored, source
    assert "!README.md" in ignored  # the package's readme, excluded with the other *.md
