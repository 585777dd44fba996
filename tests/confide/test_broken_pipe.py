"""Piping a command into `head` ends it quietly: no BrokenPipeError traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

AGGREGATOR_HELP = "import sys; from aggregator.main import main; sys.exit(main(['--help']))"


@pytest.mark.parametrize(
    ("args", "codes"),
    [
        (["-m", "confide.cli.main", "init", "agent"], {141}),
        # argparse swallows a failed write of its help itself (exit 0); no traceback either way
        (["-m", "confide.cli.main", "--help"], {0, 141}),
        (["-m", "agent", "--help"], {0, 141}),
        (["-c", AGGREGATOR_HELP], {0, 141}),
    ],
    ids=["init", "confide-help", "agent-help", "aggregator-help"],
)
def test_a_reader_that_closes_early_gets_no_traceback(args, codes):
    """The command's reader closes before it writes: stderr stays empty, exit 141 (SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `head -1` exiting before the command writes
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in codes
    assert err == ""
