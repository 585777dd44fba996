"""How every Confide command ends on an error: one line on stderr and one exit code.

``confide``, ``confide-agent`` and ``confide-aggregator`` all run their body through
``run_command``, so an error reads the same whichever command raised it::

    confide-agent: config key 'tls.cert': file does not exist          (exit 2)
    confide: aggregator answered NOT_FOUND (unknown_job)                (exit 1)

The line is the program's name, the error's message and, in parentheses, its ``Reason``
value; a ``ConfigError`` names its key instead (its message starts ``config key '...'``).
The exit code is ``confide.errors.exit_code``: 2 for a config error, 1 for any other error,
130 for Ctrl-C. A failed gRPC call is first rebuilt into the ``ConfideError`` it stands for
(``confide.wire.status.error_from_rpc``). A closed stdout ends the command quietly
(``confide.stdout.quiet_pipe``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import grpc

from confide.errors import ConfideError, ConfigError, exit_code
from confide.stdout import quiet_pipe
from confide.wire.status import error_from_rpc

__all__ = ["error_line", "fail", "run_command"]


def error_line(exc: ConfideError, *, prog: str) -> str:
    """The one stderr line for ``exc``: ``prog: message (reason)``; a config error names its key."""
    if isinstance(exc, ConfigError):
        return f"{prog}: {exc}"
    return f"{prog}: {exc} ({exc.reason.value})"


def fail(exc: ConfideError, *, prog: str) -> int:
    """Print ``exc``'s line on stderr and return its exit code."""
    print(error_line(exc, prog=prog), file=sys.stderr)
    return exit_code(exc)


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body and return its exit code; an error prints its one line.

    Args:
        prog: the program's name that starts the line, e.g. ``confide-agent``.
        body: the command; returns its exit code on success or for a problem it reported.
    """

    def guarded() -> int:
        try:
            return body()
        except ConfideError as exc:
            return fail(exc, prog=prog)
        except grpc.RpcError as exc:
            return fail(error_from_rpc(exc), prog=prog)
        except KeyboardInterrupt as exc:
            return exit_code(exc)

    return quiet_pipe(guarded)
