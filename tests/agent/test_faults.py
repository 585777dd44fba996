"""The end-to-end tests' kill point: parsed from the environment, fires on one task only."""

from __future__ import annotations

import pytest

from agent.faults import KILL_ON_TASK_ENV, KillPoint, install_kill_point, kill_point_from_env
from confide.errors import ConfigError
from confide.v1 import federation_pb2

from .conftest import signed_task
from .fakes import FakeTransport


class _Killed(BaseException):
    """Stands for the SIGKILL: nothing after it may run, and the runner must not catch it."""


def test_unset_means_no_kill_point():
    assert kill_point_from_env({}) is None


def test_parses_kind_and_round():
    point = kill_point_from_env({KILL_ON_TASK_ENV: "TASK_KIND_UNMASK:4"})
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
def test_a_bad_value_names_the_variable(raw):
    with pytest.raises(ConfigError) as err:
        kill_point_from_env({KILL_ON_TASK_ENV: raw})
    assert err.value.key == KILL_ON_TASK_ENV


def test_kills_on_its_round_only_and_before_the_task_runs(pki, runner, aggregator, workers):
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
