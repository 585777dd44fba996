"""The fault tests' kill point: read from --kill-on, fires on one task only."""

from __future__ import annotations

import pytest

from confide.errors import ConfigError
from confide.v1 import federation_pb2
from confide_dev.faulty_agent import (
    KILL_ON_OPTION,
    KillPoint,
    install_kill_point,
    kill_point_from_text,
    main,
)

from .conftest import signed_task
from .fakes import FakeTransport


class _Killed(BaseException):
    """Stands for the SIGKILL: nothing after it may run, and the runner must not catch it."""


def test_without_kill_on_the_faulty_agent_refuses_to_start(capsys):
    """The wrapper has no default kill point: without --kill-on it exits 2 naming the option."""
    with pytest.raises(SystemExit) as ended:
        main(["--config", "agent.toml"])
    assert ended.value.code == 2
    assert KILL_ON_OPTION in capsys.readouterr().err


def test_parses_kind_and_round():
    """KIND:ROUND names a task kind and a round."""
    point = kill_point_from_text("TASK_KIND_UNMASK:4")
    assert point == KillPoint(kind=federation_pb2.TASK_KIND_UNMASK, round=4)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "TASK_KIND_UNMASK",
        "UNMASK:4",
        "TASK_KIND_UNMASK:x",
        "TASK_KIND_UNMASK:0",
        "TASK_KIND_UNSPECIFIED:1",
    ],
)
def test_a_bad_value_names_the_option(raw, capsys):
    """A malformed kill point is a ConfigError naming --kill-on, and the wrapper exits 2."""
    with pytest.raises(ConfigError) as err:
        kill_point_from_text(raw)
    assert err.value.key == KILL_ON_OPTION
    assert main([f"{KILL_ON_OPTION}={raw}", "--config", "agent.toml"]) == 2
    assert KILL_ON_OPTION in capsys.readouterr().err


def test_kills_on_its_round_only_and_before_the_task_runs(pki, runner, aggregator, workers):
    """The wrapped handler kills on its round's task before acting, and passes others through."""
    kills: list[int] = []

    def kill() -> None:
        kills.append(1)
        raise _Killed

    install_kill_point(runner, KillPoint(federation_pb2.TASK_KIND_TRAIN, 2), kill=kill)
    transport = FakeTransport(aggregator)
    runner.run(signed_task(pki.alice, task_id="a", round=1), transport)
    assert kills == [] and len(aggregator.uploads) == 1
    with pytest.raises(_Killed):
        runner.run(signed_task(pki.alice, task_id="b", round=2), transport)
    assert kills == [1] and len(aggregator.uploads) == 1  # round 2 never trained or sent
