"""Robust aggregation for plaintext jobs: coordinate-wise trimmed mean and median.

FedAvg's mean lets one site move the model as far as its update reaches; a robust rule
bounds that by the honest sites' own values. Both rules here need every update of the round
at once, so ``HeldUpdates`` keeps them until the round closes: memory O(n·d) (n updates of d
float32 values, 4·n·d bytes), against O(d) for FedAvg's streaming ``RunningSum``. That memory
is bounded: a round holds at most ``max_bytes`` of updates (``HELD_UPDATES_MAX_BYTES`` by
default, checked for ``min_sites`` updates when the job is submitted); an update that would
pass it is refused with reason ``unavailable`` and the round goes on without it.

For each coordinate j, with the n values x_1j <= ... <= x_nj sorted (Yin et al. 2018,
"Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", Section 3):

- trimmed mean with fraction β: k = floor(β·n) values are cut from each end and the mean of
  x_(k+1)j .. x_(n-k)j is taken (β < 1/2, so at least one value stays);
- median: x_((n+1)/2)j, or the mean of the two middle values when n is even.

Bound: if at most f sites are hostile and f <= k (trimmed mean) or f < n/2 (median), every
coordinate of the result lies between the smallest and the largest honest value of that
coordinate, whatever the hostile sites send. Both rules weigh every site equally: a claimed
sample count cannot buy influence.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from confide.errors import InternalError, MalformedMessage, Reason
from confide.jobspec import HELD_UPDATES_MAX_BYTES
from confide.wire.blob import NamedArrays

__all__ = ["HELD_UPDATES_MAX_BYTES", "Accumulator", "HeldUpdates", "Rule", "check_shapes"]

"""Updates a robust round may hold at once (1 GiB: 8 sites of a 32M-parameter model)."""

_BLOCK = 1 << 14
Arrays = Sequence[tuple[str, npt.NDArray[Any]]]
Shape = tuple[int, ...]


class Rule(enum.Enum):
    """How a plaintext round's updates are combined (``common.proto`` AggregationRule)."""

    FEDAVG = "fedavg"
    MEAN = "mean"
    TRIMMED_MEAN = "trimmed_mean"
    MEDIAN = "median"


class Accumulator(Protocol):
    """What a round's updates go into: checked first, then added once they are on record."""

    @property
    def count(self) -> int:
        """Updates taken so far."""

    def check(self, arrays: Arrays) -> None:
        """Raise if ``add`` would refuse these arrays (so ``add`` cannot fail later)."""

    def prepare(self) -> None:
        """Allocate what ``add`` needs, so that ``add`` itself allocates nothing large."""

    def add(self, arrays: Arrays, *, weight: int) -> None:
        """Take one checked update with its weight."""

    def mean(self) -> NamedArrays:
        """The round's combined delta as float64 arrays."""

    def reset(self) -> None:
        """Forget every update."""


def check_shapes(arrays: Arrays, shapes: list[tuple[str, Shape]]) -> None:
    """Refuse arrays whose names or shapes differ from the model's.

    Raises:
        MalformedMessage: they differ.
    """
    if [(n, tuple(a.shape)) for n, a in arrays] != shapes:
        raise MalformedMessage("update tensors differ from the model's names and shapes")


class HeldUpdates:
    """A round's updates held until it closes, combined by a trimmed mean or a median.

    Args:
        shapes: the model's ordered (name, shape) list.
        rule: ``Rule.TRIMMED_MEAN`` or ``Rule.MEDIAN``.
        trim_fraction: β in (0, 1/2) for the trimmed mean.
        max_bytes: the most update bytes held at once (4 bytes per value).

    Raises:
        ValueError: another rule, or β outside (0, 1/2) for the trimmed mean.
    """

    def __init__(
        self,
        shapes: list[tuple[str, Shape]],
        *,
        rule: Rule,
        trim_fraction: float = 0.0,
        max_bytes: int = HELD_UPDATES_MAX_BYTES,
    ) -> None:
        if rule not in (Rule.TRIMMED_MEAN, Rule.MEDIAN):
            raise ValueError(f"HeldUpdates combines by trimmed mean or median, not {rule}")
        if rule is Rule.TRIMMED_MEAN and not 0.0 < trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in (0, 0.5), got {trim_fraction}")
        self.shapes, self.rule, self.trim_fraction = shapes, rule, trim_fraction
        self.dim = sum(math.prod(s) for _, s in shapes)
        self.capacity = max(0, max_bytes // max(1, 4 * self.dim))
        self._held: list[list[npt.NDArray[np.float32]]] = []

    @property
    def count(self) -> int:
        """Updates held."""
        return len(self._held)

    def check(self, arrays: Arrays) -> None:
        """Refuse wrong shapes, or an update beyond the round's memory bound.

        Raises:
            MalformedMessage: names or shapes differ from the model's.
            InternalError: ``capacity`` updates are held already (reason UNAVAILABLE): the
                server's memory bound for the round, not the sender's fault, and not
                ``server_busy`` either, since it does not free up before the round ends.
        """
        check_shapes(arrays, self.shapes)
        if self.count >= self.capacity:
            raise InternalError(
                f"the round already holds {self.count} updates, its memory bound",
                reason=Reason.UNAVAILABLE,
            )

    def prepare(self) -> None:
        """Nothing to allocate: the update's own arrays are kept."""

    def add(self, arrays: Arrays, *, weight: int) -> None:
        """Keep a checked update as float32 (robust rules ignore ``weight``)."""
        del weight
        self._held.append([np.asarray(a, dtype=np.float32) for _, a in arrays])

    def reset(self) -> None:
        """Forget every update (and free their memory)."""
        self._held = []

    def mean(self) -> NamedArrays:
        """The coordinate-wise trimmed mean or median of the held updates, as float64.

        Works on blocks of ``_BLOCK`` coordinates: the scratch memory is O(n·block).

        Raises:
            MalformedMessage: nothing is held.
        """
        n = self.count
        if n == 0:
            raise MalformedMessage("no update held")
        k = math.floor(self.trim_fraction * n) if self.rule is Rule.TRIMMED_MEAN else 0
        out: NamedArrays = []
        for t, (name, shape) in enumerate(self.shapes):
            size = math.prod(shape)
            res = np.empty(size, dtype=np.float64)
            for start in range(0, size, _BLOCK):
                stop = min(size, start + _BLOCK)
                cols = np.stack([u[t].reshape(-1)[start:stop] for u in self._held]).astype(
                    np.float64
                )
                if self.rule is Rule.MEDIAN:
                    res[start:stop] = np.median(cols, axis=0)
                else:
                    cols.sort(axis=0)
                    res[start:stop] = cols[k : n - k].mean(axis=0)
            out.append((name, res.reshape(shape)))
        return out
