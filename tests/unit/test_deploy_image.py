"""deploy/Dockerfile, its lock file and .dockerignore, checked without a Docker engine: a
pinned base, a non-root user, a HEALTHCHECK that really answers from a /healthz, dependencies
from a lock that names exactly the runtime closure of pyproject.toml, and a build context
without the virtualenv, the tests or the caches."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import tomllib
from importlib import metadata
from typing import TYPE_CHECKING

import pytest
import setuptools
from aiohttp import web
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devtools.stack.local import free_port
from tests.support.manifests import ROOT

if TYPE_CHECKING:
    from pathlib import Path

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
    stages = _stages()
    for name, (base, _) in stages.items():
        assert base == "${PYTHON_IMAGE}" or base in list(stages)[: list(stages).index(name)], name


def _stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Each stage's name -> (what it is built FROM, its instructions), in the file's order."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for kind, value in _instructions():
        if kind == "FROM":
            base, _, name = value.partition(" AS ")
            stages[name.strip()] = (base.strip(), [])
        elif stages:
            stages[list(stages)[-1]][1].append((kind, value))
    return stages


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    """Both images (production and dev) end as the manifests' runAsUser, with the command set
    on the stage they share."""
    stages = _stages()
    for name in ("production", "dev"):
        users = [v for k, v in stages[name][1] if k == "USER"]
        assert users == ["10001:10001"], name  # the manifests' runAsUser
        assert stages[name][0] == "base"
    assert ("ENTRYPOINT", '["paynotify"]') in stages["base"][1]


def test_the_production_image_is_the_default_and_holds_no_development_tooling() -> None:
    """`docker build` without --target builds the last stage: production. It installs the wheel
    built from shared/, ingress/ and workers/ alone; only the dev image's wheel has devtools/."""
    stages = _stages()
    assert list(stages)[-1] == "production"
    copied = {
        name: [v for k, v in instructions if k == "COPY"]
        for name, (_, instructions) in stages.items()
    }
    assert copied["production"] == ["--from=build /wheels /wheels"]
    assert copied["dev"] == ["--from=build-dev /wheels /wheels"]
    sources = {v.split()[0] for v in copied["build"] if not v.startswith("--from")}
    assert "devtools" not in sources
    assert {"shared", "ingress", "workers"} <= sources
    assert [v.split()[0] for v in copied["build-dev"]] == ["devtools"]
    assert stages["build-dev"][0] == "build"


def test_the_package_finder_leaves_devtools_out_of_the_production_wheel(tmp_path: Path) -> None:
    """pyproject.toml's package list, applied to what the build stage copies, finds the three
    production packages and nothing of devtools/; applied to the dev build's sources, devtools
    too. (The wheel itself is built by `docker build`; the finder is what decides its packages.)"""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    for source in ("shared", "ingress", "workers"):
        shutil.copytree(ROOT / source, tmp_path / source)
    production = set(setuptools.find_packages(tmp_path, include=include))
    assert {"shared", "ingress", "workers", "shared.protocol"} <= production
    assert not {p for p in production if p.split(".")[0] == "devtools"}
    shutil.copytree(ROOT / "devtools", tmp_path / "devtools")
    dev = set(setuptools.find_packages(tmp_path, include=include))
    assert {"devtools", "devtools.sandbox", "devtools.stack", "devtools.demo"} <= dev


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
