"""The site agent with a kill point, for fault tests: it SIGKILLs itself on one chosen task.

``python -m confide_dev.faulty_agent --kill-on KIND:ROUND --config agent.toml`` (e.g.
``--kill-on TASK_KIND_UNMASK:4``) runs ``confide-agent`` unchanged, except that the daemon
kills itself with SIGKILL the moment it receives that kind of task for that round, before it
acts on it. A test can so drop a site at an exact SecAgg+ stage (TRAIN is stage 0, advertise;
then SHARE_KEYS, CHECK_SHARES, MASKED_INPUT, CONSISTENCY, UNMASK) without racing the protocol
from outside. The kill is real: no cleanup runs, exactly as when the machine loses power.

The kill point lives here, outside the production packages, and reaches the agent only
through ``agent.main.main``'s ``extend_runner`` argument: the daemon a site installs reads no
kill switch from anywhere.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from agent.link.transport import Transport
from agent.main import main as agent_main
from agent.tasks.runner import TaskRunner
from confide.errors import ConfigError
from confide.v1 import federation_pb2

__all__ = ["KILL_ON_OPTION", "KillPoint", "install_kill_point", "kill_point_from_text", "main"]

KILL_ON_OPTION = "--kill-on"
"""The option naming the task (``KIND:ROUND``) on which the agent kills itself."""

log = structlog.get_logger("confide_dev.faulty_agent")


@dataclass(frozen=True, slots=True)
class KillPoint:
    """The task on whose arrival the agent SIGKILLs itself: a task kind and a round."""

    kind: int
    round: int


def kill_point_from_text(raw: str) -> KillPoint:
    """The kill point ``raw`` (``TASK_KIND_NAME:ROUND``) names.

    Raises:
        ConfigError: the value is not ``TASK_KIND_NAME:ROUND`` (names the option).
    """
    kind_name, sep, round_text = raw.partition(":")
    try:
        kind = federation_pb2.TaskKind.Value(kind_name)
        round_no = int(round_text) if sep else -1
    except ValueError:
        kind, round_no = 0, -1
    if kind == federation_pb2.TASK_KIND_UNSPECIFIED or round_no < 1:
        raise ConfigError(
            KILL_ON_OPTION, f"{raw!r} is not TASK_KIND_NAME:ROUND, e.g. TASK_KIND_UNMASK:4"
        )
    return KillPoint(kind=kind, round=round_no)


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill_point(
    runner: TaskRunner, point: KillPoint, *, kill: Callable[[], None] = _sigkill_self
) -> None:
    """Wrap the runner's handler of ``point.kind`` so that its task of ``point.round`` kills us.

    Install after every other handler (e.g. SecAgg+'s), so the wrapped one is the last word.
    """
    inner = runner.handlers[point.kind]
    kind_name = federation_pb2.TaskKind.Name(point.kind)

    def handler(task: federation_pb2.Task, transport: Transport) -> None:
        if task.round == point.round:
            log.warning("fault_injected_sigkill", option=KILL_ON_OPTION, kind=kind_name)
            kill()
        inner(task, transport)

    runner.register(point.kind, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``confide-agent`` with ``argv`` less ``--kill-on KIND:ROUND``, its kill point set.

    A bad ``--kill-on`` prints one line naming the option and exits 2, like any config error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m confide_dev.faulty_agent",
        description="confide-agent that SIGKILLs itself on one task (fault tests only)",
    )
    parser.add_argument(KILL_ON_OPTION, required=True, metavar="KIND:ROUND")
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    try:
        point = kill_point_from_text(args.kill_on)
    except ConfigError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    return agent_main(rest, extend_runner=lambda runner: install_kill_point(runner, point))


if __name__ == "__main__":
    sys.exit(main())
