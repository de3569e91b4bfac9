"""The shortened chaos run (issue 10), `make chaos-short`: about 1,000 payments on one broker,
each kind of fault once (`python -m tests.chaos --short`, the same code as `make chaos`). Marker
`chaos`; part of `make test` (`make chaos-short` runs it alone).

It asserts the figures of the run's last line: nothing lost, nothing conflicting, no forgery or
underpayment credited, no partition stuck, no outcome of an unexpected type. Repeat payments whose
every notification try met the broker down used to be lost here (no query finds a repeat
payment); the ingress now parks what Kafka did not take and the sweeper publishes it
(docs/ingress.md), so any loss fails this test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 900  # seconds: the run stops itself by then (--timeout); this is the backstop
LAST = re.compile(
    r"^payments=(?P<payments>\d+) settled=(?P<settled>\d+) lost=(?P<lost>\d+) "
    r"conflicting=(?P<conflicting>\d+) duplicates=(?P<duplicates>\d+) "
    r"forged_accepted=(?P<forged_accepted>\d+) underpaid_accepted=(?P<underpaid_accepted>\d+) "
    r"stuck=(?P<stuck>\d+)$"
)
EXTRA = re.compile(r"^unexpected=(?P<unexpected>\d+) unreachable=(?P<unreachable>\d+)$")


def _kill_leftovers(state_dir: Path, group: int) -> None:
    """Whatever the run left behind if it died itself: its process group (the pipeline), and
    the servers the local stack started in sessions of their own (pid files)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    for pidfile in (state_dir / "stack").glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.timeout(DEADLINE + 120)
def test_the_short_chaos_run_keeps_every_promise(tmp_path: Path) -> None:
    state_dir = tmp_path / "chaos"
    process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "tests.chaos", "--short", "--state-dir", str(state_dir),
         "--timeout", str(DEADLINE)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=DEADLINE + 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _kill_leftovers(state_dir, process.pid)
    lines = [line for line in output.splitlines() if not line.startswith("ts=")]
    shown = "\n".join(lines[-60:])
    last = LAST.match(lines[-1]) if lines else None
    assert last is not None, f"no figures (exit {process.returncode}):\n{shown}"
    extra = next((m for line in lines if (m := EXTRA.match(line))), None)
    assert extra is not None, shown
    figures = {name: int(value) for name, value in last.groupdict().items()}
    figures |= {name: int(value) for name, value in extra.groupdict().items()}
    assert figures["payments"] >= 900, shown
    for name in ("conflicting", "forged_accepted", "underpaid_accepted", "stuck", "unexpected"):
        assert figures[name] == 0, f"{name}={figures[name]}\n{shown}"
    assert figures["lost"] == 0, shown
    assert figures["settled"] == figures["payments"], shown
    assert process.returncode == 0, shown
