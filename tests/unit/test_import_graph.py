"""Production code never depends on development tooling.

The production packages (`ingress`, `workers`, `shared`) import nothing from `devtools` (the
sandbox, the local stack, the demo), the tests, the benchmarks or the examples: checked on the
source's import statements, and by importing every production module in a fresh interpreter
where those packages cannot be found, as in the production image. The one way in is by name:
`paynotify stack|sandbox` resolve their handler when they run, and say what is missing when
the development tooling is not installed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

from shared import cli
from tests.support.manifests import ROOT

pytestmark = pytest.mark.unit

PRODUCTION = ("ingress", "workers", "shared")
DEVELOPMENT = {"devtools", "tests", "benchmarks", "examples"}


def _production_sources() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(ROOT)), ast.parse(path.read_text(), str(path)))
        for package in PRODUCTION
        for path in sorted((ROOT / package).rglob("*.py"))
    ]


def _imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_production_modules_import_no_development_package() -> None:
    offending = {
        (path, name)
        for path, tree in _production_sources()
        for name in _imported(tree)
        if name.split(".")[0] in DEVELOPMENT
    }
    assert not offending


def test_layers_import_downwards_only() -> None:
    """`shared` (protocol, domain, ports, adapters, service, ops) is below the processes'
    entry points: it imports neither `ingress` nor `workers`, and those two are apart."""
    below = {"shared": {"ingress", "workers"}, "ingress": {"workers"}, "workers": {"ingress"}}
    offending = {
        (path, name)
        for path, tree in _production_sources()
        for name in _imported(tree)
        if name.split(".")[0] in below[path.split("/")[0]]
    }
    assert not offending


def test_the_command_line_is_the_only_production_code_naming_devtools() -> None:
    """A module named in a string (importlib) is an import too: only shared/cli.py's handlers
    table names devtools, and only for the development commands."""
    named = {
        (path, node.value)
        for path, tree in _production_sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(cli.DEVTOOLS + ".")
    }
    assert named == {
        ("shared/cli.py", "devtools.stack.commands:main"),
        ("shared/cli.py", "devtools.sandbox.server:main"),
    }


def test_every_production_module_imports_without_the_development_packages() -> None:
    """In a fresh interpreter whose import system cannot find devtools, tests, benchmarks or
    examples (as in the production image), every production module imports."""
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys

        HIDDEN = {sorted(DEVELOPMENT)!r}

        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HIDDEN:
                    raise ModuleNotFoundError(f"hidden: {{name}}", name=name)
                return None

        sys.meta_path.insert(0, Hide())
        count = 0
        for package in {PRODUCTION!r}:
            root = importlib.import_module(package)
            for info in pkgutil.walk_packages(root.__path__, package + "."):
                importlib.import_module(info.name)
                count += 1
        print(count)
        """
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter, a fixed script
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 50  # every module was walked, not none


@pytest.mark.parametrize("command", ["stack", "sandbox"])
def test_a_development_command_without_devtools_says_what_is_missing(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_find_spec = cli.importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == cli.DEVTOOLS else real_find_spec(name, package)

    monkeypatch.setattr(cli.importlib.util, "find_spec", find_spec)
    argv = ["stack", "status"] if command == "stack" else ["sandbox"]
    assert cli.main(argv) == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert error.startswith(f"error: `paynotify {command}` is development tooling")
    assert "make install" in error


def test_production_commands_never_ask_for_devtools() -> None:
    assert cli.devtools_missing("ingress") is None
    assert cli.devtools_missing("worker") is None
    assert cli.devtools_missing("stack") is None  # here, in a checkout, devtools is installed
