"""Waiting before trying again: exponential backoff with full jitter.

The session waits so between connections, and a task waits so between transfers the
aggregator was too busy to take (``server_busy``). The randomness is a parameter (STYLE
rule 3), so tests check the delays without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with full jitter: try k waits ``U(0,1) * min(cap, base * factor**k)``.

    Full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015) spreads the
    reconnects of many sites after an aggregator restart instead of synchronising them.

    Args:
        rng: returns a uniform number in [0, 1) (``random.random`` in the daemon).
        base: the first ceiling, seconds.
        factor: growth of the ceiling per attempt.
        cap: the largest ceiling, seconds.
    """

    def __init__(
        self,
        rng: Callable[[], float],
        *,
        base: float = 0.5,
        factor: float = 2.0,
        cap: float = 30.0,
    ) -> None:
        self._rng = rng
        self.base = base
        self.factor = factor
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = min(self.cap, self.base * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return self._rng() * ceiling

    def reset(self) -> None:
        """Start again from ``base`` (after a successful register)."""
        self.attempt = 0
