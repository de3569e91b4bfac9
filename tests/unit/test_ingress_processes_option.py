"""`--processes N`: a whole number from 1 to MAX_PROCESSES, refused clearly otherwise."""

from __future__ import annotations

import pytest

from ingress.__main__ import parse_args
from shared.cli import MAX_PROCESSES

pytestmark = pytest.mark.unit


def test_processes_default_to_one() -> None:
    """Without the option the ingress is the single process it always was."""
    assert parse_args([]).processes == 1


@pytest.mark.parametrize("value", [1, 2, MAX_PROCESSES])
def test_processes_in_range_are_taken(value: int) -> None:
    """Any count from 1 to the bound is taken as given."""
    assert parse_args(["--processes", str(value)]).processes == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", f"must be between 1 and {MAX_PROCESSES}, got 0"),
        ("-3", f"must be between 1 and {MAX_PROCESSES}, got -3"),
        (str(MAX_PROCESSES + 1), f"got {MAX_PROCESSES + 1}"),
        ("two", "not a whole number: 'two'"),
    ],
)
def test_processes_out_of_range_are_refused_clearly(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A count out of range or not a number: argparse's exit 2 with a line that says why."""
    with pytest.raises(SystemExit) as exited:
        parse_args(["--processes", value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
