"""``lorakit serve`` flag mistakes: one line, exit 2, before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.serve.server import parse_adapter_flags


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--adapter-dir", "/no/such/dir"], "--adapter-dir /no/such/dir: no such folder"),
        (["--adapter", "a=/no/such/adapter"], "no such adapter folder"),
        (["--adapter", "a=/x", "--adapter", "a=/y"], "the name 'a' is given twice"),
        (["--max-batch", "0"], "expected a positive integer"),
    ],
)
def test_bad_flags_are_one_line_errors(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_adapter_flags() -> None:
    assert parse_adapter_flags(["x=/a/b", "runs/y"]) == {"x": Path("/a/b"), "y": Path("runs/y")}
