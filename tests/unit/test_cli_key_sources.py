"""Where `paynotify sign` and `paynotify verify` take the merchant key from: `--key-file`, the
`PAYNOTIFY_KEY` variable, or (discouraged, with a warning on a terminal) `--key`."""

from __future__ import annotations

import io
import sys
from typing import TYPE_CHECKING

import pytest

from shared.cli import KEY_ENV, main

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.unit

KEY = "25e72d96d0ffe0bb74373344d986df3c"
DOC_PAIRS = [
    "mch_order=20171206142839049", "amt=1", "client_ip=192.168.1.176", "remark=产品备注",
    "notify_url=https://app.zlsky.me/notify.php", "call={user:1}", "mch_id=t9awtvk6dn",
    "sign_type=md5", "created_at=1512541824",
]  # fmt: skip
DOC_SIGN = "5883eb7db6fc28286f440b291c4bc24a"


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def key_file(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "mch_key"
    path.write_bytes(content)
    return str(path)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("content", [KEY.encode(), f"{KEY}\n".encode(), f"{KEY}\r\n".encode()])
def test_key_file_signs_and_verifies(
    content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--key-file reads the key, one trailing newline stripped, for sign and verify alike."""
    path = key_file(tmp_path, content)
    assert main(["sign", "--key-file", path, *DOC_PAIRS]) == 0
    assert capsys.readouterr().out == DOC_SIGN + "\n"
    assert main(["verify", "--key-file", path, *DOC_PAIRS, f"sign={DOC_SIGN}"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ok:")
    assert captured.err == ""


def test_environment_variable_signs_and_verifies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PAYNOTIFY_KEY is used when no flag names a key; nothing is printed on stderr."""
    monkeypatch.setenv(KEY_ENV, KEY)
    assert main(["sign", *DOC_PAIRS]) == 0
    assert capsys.readouterr() == (DOC_SIGN + "\n", "")
    assert main(["verify", *DOC_PAIRS, f"sign={DOC_SIGN}"]) == 0
    assert capsys.readouterr().out.startswith("ok:")


@pytest.mark.parametrize("flag", ["--key-file", "--key"])
def test_a_flag_wins_over_the_environment(
    flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key named on the command line is used rather than PAYNOTIFY_KEY."""
    monkeypatch.setenv(KEY_ENV, "some-other-key")
    value = key_file(tmp_path, KEY.encode()) if flag == "--key-file" else KEY
    assert main(["sign", flag, value, *DOC_PAIRS]) == 0
    assert capsys.readouterr().out == DOC_SIGN + "\n"


def test_key_and_key_file_together_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--key and --key-file exclude each other."""
    with pytest.raises(SystemExit) as caught:
        main(["sign", "--key", KEY, "--key-file", key_file(tmp_path, b"x"), "amt=1"])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty or only whitespace"),
        (b"\n", "is empty or only whitespace"),
        (b"  \t \n", "is empty or only whitespace"),
        (f"{KEY}\n\n".encode(), "holds a line break"),
        (f"{KEY}\nsecond line\n".encode(), "holds a line break"),
        (f"{KEY}\x00".encode(), "unprintable character"),
        (b"\xff" + KEY.encode(), "is not UTF-8 text"),
        (KEY.encode() * 200, "is over 4096 bytes"),
    ],
)
@pytest.mark.parametrize("command", ["sign", "verify"])
def test_unusable_key_files_are_refused(
    command: str, content: bytes, message: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """An empty, blank, multi-line, binary or oversized key file is a usage error (exit 2) whose
    one line names the file and the rule, never the content."""
    path = key_file(tmp_path, content)
    assert main([command, "--key-file", path, *DOC_PAIRS, f"sign={DOC_SIGN}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert captured.err.count("\n") == 1
    assert message in captured.err
    assert repr(path) in captured.err
    assert KEY not in captured.err
    assert "second line" not in captured.err


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_unreadable_key_file_is_a_usage_error(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key file that cannot be read is named with the system's reason, and no traceback."""
    path = str(tmp_path / "nope") if where == "missing" else str(tmp_path)
    assert main(["sign", "--key-file", path, "amt=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read the key file {path!r}: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("value", ["", " \t"])
def test_blank_environment_key_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PAYNOTIFY_KEY set but blank is a mistake, not a key."""
    monkeypatch.setenv(KEY_ENV, value)
    assert main(["sign", "amt=1"]) == 2
    assert capsys.readouterr().err == (
        f"error: the key from {KEY_ENV} is empty or only whitespace\n"
    )


def test_no_key_at_all_names_the_ways_to_give_one(capsys: pytest.CaptureFixture[str]) -> None:
    """Without any key source the error says how to give one."""
    assert main(["verify", *DOC_PAIRS, f"sign={DOC_SIGN}"]) == 2
    assert capsys.readouterr().err == (
        f"error: no merchant key: give --key-file PATH or set {KEY_ENV}\n"
    )


def test_key_in_argv_warns_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """--key still works; on a terminal one line warns that argv is readable by other users,
    without repeating the key."""
    stderr, stdout = Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["sign", "--key", KEY, *DOC_PAIRS]) == 0
    assert stdout.getvalue() == DOC_SIGN + "\n"
    warning = stderr.getvalue()
    assert warning.startswith("warning: --key puts the key in the command line")
    assert "other users" in warning
    assert "--key-file" in warning
    assert KEY_ENV in warning
    assert warning.count("\n") == 1
    assert KEY not in warning


def test_key_in_argv_keeps_script_output_to_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal (a script reading stderr), verify's mismatch stays one line."""
    assert main(["verify", "--key", KEY, *DOC_PAIRS[1:], f"sign={DOC_SIGN}"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("command", ["sign", "verify"])
def test_help_documents_every_key_source(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each subcommand's --help names --key-file, PAYNOTIFY_KEY, and why --key is discouraged."""
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--key-file PATH" in text
    assert "one trailing newline is stripped" in text
    assert KEY_ENV in text
    assert "other users can read a command line" in text
