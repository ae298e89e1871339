"""Helpers shared by the command-line tests: a tiny run and the error check."""

import pytest

from keras_unetpp import cli

# The smallest training the CLI tests run: depth 2, widths 4-16, 32x32.
TINY = [
    "--image-size",
    "32",
    "32",
    "--depth",
    "2",
    "--filters",
    "4",
    "--batch-size",
    "4",
    "--verbose",
    "0",
]


def run(argv):
    """Runs the CLI, expecting success."""
    assert cli.main(argv) == 0


def error_line(capsys, argv):
    """Runs the CLI expecting an input error; returns its one stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]
