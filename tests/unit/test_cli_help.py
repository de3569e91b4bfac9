"""What `paynotify ... --help` says agrees with the code and the README: the stack's defaults, and
the environment variables the worker and the sweeper read (issue 13)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from devtools.stack.local import LocalStack, default_state_dir
from shared import tracing
from shared.cli import _parser
from shared.settings import environment_variables

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


PACKAGES = ("shared", "workers")
LOADED_FILES = (
    "import sys, workers.__main__, workers.sweeper_main\n"
    "for m in list(sys.modules.values()):\n"
    "    print(getattr(m, '__file__', None) or '')"
)


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        _parser().parse_args([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


class Asked(Mapping[str, str]):
    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.names = values, set[str]()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        return self.values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_the_settings_variables_are_found_by_reading() -> None:
    """The list comes from what Settings.from_env asks for, the same names the README tables."""
    names = environment_variables()
    assert names[:2] == ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")
    assert {"PAYNOTIFY_WORKER_CONCURRENCY", "PAYNOTIFY_SWEEP_RATE"} <= set(names)
    table = set(re.findall(r"^\| `([A-Z_]+)`", README, re.MULTILINE))
    table |= set(re.findall(r"^\| `[A-Z_]+`, `([A-Z_]+)`", README, re.MULTILINE))
    assert set(names) <= table


def test_tracing_reads_only_what_it_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans.from_env, on and off, asks for no variable outside tracing.ENVIRONMENT."""
    monkeypatch.setattr(tracing, "_otlp_tracer", lambda _service: object())
    for value in ("0", "1"):
        env = Asked({"PAYNOTIFY_OTEL": value})
        tracing.Spans.from_env(env, "worker")
        assert env.names <= set(tracing.ENVIRONMENT)
    assert env.names == {"PAYNOTIFY_OTEL", "OTEL_SERVICE_NAME"}


@pytest.mark.parametrize("command", ["worker", "sweeper"])
def test_worker_and_sweeper_help_list_every_variable_they_read(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every name the settings and tracing read is in `--help` (it listed none before)."""
    text = help_of(command, capsys)
    missing = [n for n in (*environment_variables(), *tracing.ENVIRONMENT) if n not in text]
    assert missing == []


def test_the_processes_read_the_environment_only_through_settings_and_tracing() -> None:
    """No module the worker or the sweeper loads reads a variable of its own, which the help
    would then not list: the environment is read in shared/settings.py and shared/tracing.py,
    and handed to Spans.from_env."""
    loaded = subprocess.run(  # noqa: S603 - our own modules, fixed arguments
        [
            sys.executable, "-c",
            LOADED_FILES,
        ],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    ours = sorted(
        {Path(f) for f in loaded if any(Path(f).is_relative_to(REPO / p) for p in PACKAGES)}
    )
    assert REPO / "workers" / "__main__.py" in ours
    allowed = {REPO / "shared" / "settings.py", REPO / "shared" / "tracing.py"}
    reads = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for path in ours
        if path not in allowed
        for line in path.read_text().splitlines()
        if re.search(r"\benviron\b|getenv", line) and "Spans.from_env(os.environ" not in line
    ]
    assert reads == []


def test_stack_help_states_the_defaults_the_code_and_readme_use(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--state-dir, --kafka-port and --redis-port: the help, the README and LocalStack agree
    (the help said ~/.cache/paynotify, where the stack never was)."""
    monkeypatch.delenv("PAYNOTIFY_CACHE_DIR", raising=False)
    text = help_of("stack", capsys).partition("options:")[2]
    state = re.search(r"--state-dir .*?else (\S+?)\)", text)
    assert state is not None
    assert Path(state.group(1)).expanduser() == default_state_dir()
    assert f"`{state.group(1)}` (`--state-dir` to change it" in README
    monkeypatch.setenv("PAYNOTIFY_CACHE_DIR", "/elsewhere")
    assert default_state_dir() == Path("/elsewhere/stack")
    assert "$PAYNOTIFY_CACHE_DIR/stack" in text

    kafka = re.search(r"--kafka-port .*?\(default: (\d+)\)", text)
    redis = re.search(r"--redis-port REDIS_PORT default: (\d+)", text)
    assert kafka is not None
    assert redis is not None
    fields = LocalStack.__dataclass_fields__
    assert int(kafka.group(1)) == fields["kafka_port"].default
    assert int(redis.group(1)) == fields["redis_port"].default
    assert f"Kafka 4.1.1 (KRaft) on {kafka.group(1)}, Redis on {redis.group(1)}" in README
