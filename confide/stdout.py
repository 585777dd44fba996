"""Command-line entry points end quietly when their reader goes away (``confide ... | head``).

Python raises ``BrokenPipeError`` at the first write after the reader closed the pipe, and
again when it flushes stdout at exit, printing a traceback to stderr. ``quiet_pipe`` runs a
command, flushes its output inside the guard, and on a broken pipe points stdout at
/dev/null (so the exit flush cannot fail again) and exits like a process killed by SIGPIPE
would report in a shell (141), as ``head`` users expect (Python docs, "Note on SIGPIPE").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["BROKEN_PIPE_EXIT", "quiet_pipe"]

BROKEN_PIPE_EXIT = 141
"""128 + SIGPIPE."""


def quiet_pipe(run: Callable[[], int]) -> int:
    """Run a command; a closed stdout ends it with ``BROKEN_PIPE_EXIT`` and no traceback."""
    try:
        try:
            code = run()
        except SystemExit:  # argparse's --help and usage errors: flush what they printed
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_EXIT
