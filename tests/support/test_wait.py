"""wait_for returns as soon as its condition holds and fails loudly when it never does."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.support.wait import wait_for


def test_returns_the_first_value_that_satisfies_the_condition():
    """The observation that meets ``until`` is returned, and no later one is taken."""
    counter = itertools.count()
    assert wait_for(lambda: next(counter), timeout=5, what="three", until=lambda n: n == 3) == 3
    assert next(counter) == 4


def test_a_timeout_names_what_it_waited_for_and_the_last_value():
    """Past the deadline it raises AssertionError with ``what`` and the last observation."""
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as err:
        wait_for(lambda: "pending", timeout=0.2, what="the job to finish", until=lambda s: False)
    assert time.monotonic() - t0 >= 0.2
    assert str(err.value) == (
        "timed out after 0.2s waiting for the job to finish; last observed: 'pending'"
    )


def test_an_error_while_observing_fails_at_once():
    """An exception from the observation propagates without waiting out the deadline."""
    t0 = time.monotonic()

    def dead() -> bool:
        raise AssertionError("the process exited")

    with pytest.raises(AssertionError, match="the process exited"):
        wait_for(dead, timeout=30, what="a process that died")
    assert time.monotonic() - t0 < 5


def test_a_costly_observation_is_not_repeated_back_to_back():
    """The pause is at least as long as the observation took, so it runs half the time at most."""
    calls: list[float] = []

    def costly() -> bool:
        calls.append(time.monotonic())
        time.sleep(0.05)  # stands for a command the observation runs
        return False

    with pytest.raises(AssertionError):
        wait_for(costly, timeout=0.5, what="never")
    assert 2 <= len(calls) <= 6  # back to back, 0.5 s holds 10 of them
