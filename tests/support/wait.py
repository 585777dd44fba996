"""Wait for a condition a test can observe, and fail loudly when it never holds.

A test that sleeps "long enough" for something to happen is slow when the machine is idle and
flaky when it is loaded. ``wait_for`` polls an observation instead: it returns as soon as the
condition holds, and when the deadline passes it fails naming what it waited for and the last
value it saw, so a timeout reads as a finding, not as "condition never held".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_FIRST_PAUSE_S = 0.005
_LONGEST_PAUSE_S = 0.1


def wait_for(
    observe: Callable[[], T],
    *,
    timeout: float,
    what: str,
    until: Callable[[T], bool] = bool,
) -> T:
    """Call ``observe`` until ``until`` holds for its value (by default: the value is truthy).

    Returns the value that satisfied the condition. An exception from ``observe`` propagates at
    once (use it to fail fast, e.g. when the process being watched has died). The pause between
    observations starts at 5 ms and doubles up to 100 ms, and is never shorter than the last
    observation took: a quick condition costs little wall time, a slow one little CPU, and a
    costly observation (one that runs a command) at most half of the machine's time.

    Raises:
        AssertionError: ``timeout`` seconds passed; the message names ``what`` and the last
            observed value.
    """
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE_S
    while True:
        began = time.monotonic()
        value = observe()
        if until(value):
            return value
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last observed: {value!r}"
            )
        time.sleep(min(max(pause, now - began), deadline - now))
        pause = min(pause * 2, _LONGEST_PAUSE_S)
