"""The round engine's timer thread: it sleeps until the next deadline, then asks the engine to fire.

It shares no lock or state with the engine. Each turn it calls ``fire`` (the engine feeds
``DeadlinePassed`` to each job whose deadline passed and closes the streams of silent sites),
then ``next_deadline`` (unix seconds of the earliest round deadline or site timeout; None:
none), and waits on its own condition until then, or until the engine ``poke``s it because a
deadline may have moved earlier. Without a deadline it sleeps until poked: no polling.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

__all__ = ["DeadlineTimer"]

log = structlog.get_logger("aggregator.coordinator")

_TIMER_RETRY_S = 1.0
"""After an unexpected error in the timer loop, look again this much later (no busy loop)."""


class DeadlineTimer:
    """One daemon thread that wakes the engine at its deadlines.

    Args:
        fire: fires what is due (``Coordinator.fire_due``).
        next_deadline: unix seconds of the engine's next deadline, or None
            (``Coordinator.next_deadline``).
        clock: unix seconds (the engine's clock).
    """

    def __init__(
        self,
        *,
        fire: Callable[[], None],
        next_deadline: Callable[[], float | None],
        clock: Callable[[], float],
    ) -> None:
        self._fire, self._next_deadline, self._clock = fire, next_deadline, clock
        self._cond = threading.Condition(threading.Lock())
        self._poked = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="round-timer", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, *, timeout: float = 5.0) -> None:
        """End the thread (waiting up to ``timeout`` seconds for it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def is_alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def poke(self) -> None:
        """A deadline may have moved earlier: ask the engine again before sleeping on.

        Called by the engine under its own lock; takes only the timer's, which the timer
        never holds while it calls the engine, so the two cannot deadlock.
        """
        with self._cond:
            self._poked = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            try:
                self._fire()
                nxt = self._next_deadline()
                wait = None if nxt is None else max(0.0, nxt - self._clock())
            except Exception as exc:
                # The timer must outlive any one failure, or no deadline fires again.
                log.error("timer_failed", exc_info=exc)
                wait = _TIMER_RETRY_S
            with self._cond:
                if not self._poked and not self._stopping:
                    self._cond.wait(wait)
                if self._stopping:
                    return
                self._poked = False
