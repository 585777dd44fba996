"""Fault injection for end-to-end tests: an agent that SIGKILLs itself on one chosen task.

``CONFIDE_TEST_KILL_ON_TASK=KIND:ROUND`` (e.g. ``TASK_KIND_UNMASK:4``) makes the daemon kill
itself with SIGKILL the moment it receives that kind of task for that round, before it acts
on it. A test can so drop a site at an exact SecAgg+ stage (TRAIN is stage 0, advertise; then
SHARE_KEYS, CHECK_SHARES, MASKED_INPUT, CONSISTENCY, UNMASK) without racing the protocol
from outside. The kill is real:
no cleanup runs, exactly as when the machine loses power. Unset, which is the only setting for
production, nothing is installed and nothing changes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from agent.link.transport import Transport
from agent.tasks.runner import TaskRunner
from confide.errors import ConfigError
from confide.v1 import federation_pb2

__all__ = ["KILL_ON_TASK_ENV", "KillPoint", "install_kill_point", "kill_point_from_env"]

KILL_ON_TASK_ENV = "CONFIDE_TEST_KILL_ON_TASK"
"""The environment variable naming the task (``KIND:ROUND``) on which the agent kills itself."""

log = structlog.get_logger("confide.agent.faults")


@dataclass(frozen=True, slots=True)
class KillPoint:
    """The task on whose arrival the agent SIGKILLs itself: a task kind and a round."""

    kind: int
    round: int


def kill_point_from_env(env: Mapping[str, str]) -> KillPoint | None:
    """The kill point the environment asks for, or None when the variable is unset.

    Raises:
        ConfigError: the value is not ``TASK_KIND_NAME:ROUND`` (names the variable).
    """
    raw = env.get(KILL_ON_TASK_ENV)
    if raw is None:
        return None
    kind_name, sep, round_text = raw.partition(":")
    try:
        kind = federation_pb2.TaskKind.Value(kind_name)
        round_no = int(round_text) if sep else -1
    except ValueError:
        kind, round_no = 0, -1
    if kind == federation_pb2.TASK_KIND_UNSPECIFIED or round_no < 1:
        raise ConfigError(
            KILL_ON_TASK_ENV, f"{raw!r} is not TASK_KIND_NAME:ROUND, e.g. TASK_KIND_UNMASK:4"
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
            log.warning("fault_injected_sigkill", env=KILL_ON_TASK_ENV, kind=kind_name)
            kill()
        inner(task, transport)

    runner.register(point.kind, handler)
