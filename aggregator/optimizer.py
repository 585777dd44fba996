"""Server-side aggregation: a streaming weighted sum and the server optimizers FedAvg, FedAdam.

``RunningSum`` adds each update as it arrives into one float64 vector (O(d) memory, never
n·d): ``S = Σ_i w_i Δ_i`` and ``W = Σ_i w_i``, where ``Δ_i`` is site i's delta and ``w_i`` its
weight, so the round's mean delta is ``S / W`` (McMahan et al. 2017, FedAvg). The weight is
the site's sample count capped by the job's ``max_sample_weight``, or 1 for a uniform mean
(``aggregator.admission``), never a count a site may choose without bound. Work is done in
fixed blocks with one small float64 scratch buffer, so no update-sized temporary is ever
allocated. Robust rules that need every update at once are in ``aggregator.robust``.

Server optimizers map ``(w, Δ̄)`` to new float32 weights:

- FedAvg: ``w ← w + η_s Δ̄`` (η_s = server learning rate, default 1.0).
- FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2):
  ``m ← β1 m + (1-β1) Δ̄``, ``v ← β2 v + (1-β2) Δ̄²``, ``w ← w + η_s m / (√v + τ)`` with
  β1 = 0.9, β2 = 0.99, τ = 1e-3, η_s default 1e-2, no bias correction (as in the paper).
  ``m`` and ``v`` are held in memory as float32 and persisted with each model version (its
  ``optimizer_state`` blob), so a restarted aggregator continues with the same moments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from aggregator.robust import check_shapes
from confide.errors import ConfigError, MalformedMessage
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays

__all__ = ["FedAdam", "FedAvg", "RunningSum", "ServerOptimizer", "make_optimizer"]

_BLOCK = 1 << 16
F64 = npt.NDArray[np.float64]
Arrays = Sequence[tuple[str, npt.NDArray[Any]]]
"""Named arrays of any dtype, as inputs (read-only, so covariant)."""
Shape = tuple[int, ...]


class RunningSum:
    """The weighted float64 sum of a round's updates.

    Args:
        shapes: the model's ordered (name, shape) list; every update must match it.
    """

    def __init__(self, shapes: list[tuple[str, Shape]]) -> None:
        self.shapes = shapes
        self._sizes = [int(np.prod(s)) for _, s in shapes]
        self._acc: F64 | None = None
        self._tmp = np.empty(0, dtype=np.float64)
        self.total_weight = 0
        self.count = 0

    def reset(self) -> None:
        """Forget everything (and free the accumulator's memory)."""
        self._acc = None
        self._tmp = np.empty(0, dtype=np.float64)
        self.total_weight = 0
        self.count = 0

    def check(self, arrays: Arrays) -> None:
        """Refuse an update ``add`` would refuse.

        Raises:
            MalformedMessage: names or shapes differ from the model's.
        """
        check_shapes(arrays, self.shapes)

    def prepare(self) -> None:
        """Allocate the accumulator and its scratch block (once per round)."""
        if self._acc is None:
            self._acc = np.zeros(sum(self._sizes), dtype=np.float64)
            self._tmp = np.empty(min(_BLOCK, max(1, self._acc.size)), dtype=np.float64)

    def add(self, arrays: Arrays, *, weight: int) -> None:
        """Add ``weight * delta`` into the sum; the update can be dropped afterwards.

        After ``check`` and ``prepare`` passed for these arrays, this allocates nothing and
        cannot fail: the caller records the update first and adds it after.

        Raises:
            MalformedMessage: names or shapes differ from the model's, or weight < 1.
        """
        if weight < 1:
            raise MalformedMessage("an update's weight must be >= 1")
        self.check(arrays)
        self.prepare()
        assert self._acc is not None
        w = float(weight)
        off = 0
        for (_, arr), size in zip(arrays, self._sizes, strict=True):
            flat = arr.reshape(-1)
            for start in range(0, size, _BLOCK):
                stop = min(size, start + _BLOCK)
                tmp = self._tmp[: stop - start]
                np.multiply(flat[start:stop], w, out=tmp, dtype=np.float64)
                acc = self._acc[off + start : off + stop]
                np.add(acc, tmp, out=acc)
            off += size
        self.total_weight += weight
        self.count += 1

    def mean(self) -> NamedArrays:
        """The weighted mean delta ``S / W`` as float64 arrays (divides the sum in place).

        Raises:
            MalformedMessage: nothing was added.
        """
        if self._acc is None or self.total_weight == 0:
            raise MalformedMessage("no update in the running sum")
        self._acc /= float(self.total_weight)
        out: NamedArrays = []
        off = 0
        for (name, shape), size in zip(self.shapes, self._sizes, strict=True):
            out.append((name, self._acc[off : off + size].reshape(shape)))
            off += size
        return out


class ServerOptimizer(Protocol):
    """Turns the global weights and the round's mean delta into new weights."""

    def apply(self, global_weights: Arrays, mean_delta: Arrays) -> NamedArrays:
        """New float32 weights."""

    def state(self) -> NamedArrays:
        """Arrays to persist with the model version (empty when stateless)."""

    def load_state(self, arrays: Arrays) -> None:
        """Restore what ``state`` returned."""


class FedAvg:
    """``w ← w + η_s Δ̄``.

    Args:
        lr: the server learning rate η_s.
    """

    def __init__(self, *, lr: float = 1.0) -> None:
        self.lr = lr

    def apply(self, global_weights: Arrays, mean_delta: Arrays) -> NamedArrays:
        """New float32 weights."""
        out: NamedArrays = []
        for (name, w), (_, d) in zip(global_weights, mean_delta, strict=True):
            new = np.multiply(d, self.lr, dtype=np.float64)
            new += w
            out.append((name, new.astype(np.float32)))
        return out

    def state(self) -> NamedArrays:
        """FedAvg keeps no state."""
        return []

    def load_state(self, arrays: Arrays) -> None:
        """Nothing to restore."""


class FedAdam:
    """FedAdam (Reddi et al. 2021, Algorithm 2) with float32 moments ``m``, ``v``.

    Args:
        lr: server learning rate η_s.
        beta1, beta2: moment decay rates β1, β2.
        tau: adaptivity τ, keeps ``m / (√v + τ)`` bounded where v is tiny.
    """

    def __init__(
        self, *, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self._m: dict[str, npt.NDArray[np.float32]] = {}
        self._v: dict[str, npt.NDArray[np.float32]] = {}

    def apply(self, global_weights: Arrays, mean_delta: Arrays) -> NamedArrays:
        """New float32 weights; updates the moments."""
        out: NamedArrays = []
        for (name, w), (_, d64) in zip(global_weights, mean_delta, strict=True):
            d = np.asarray(d64, dtype=np.float64)
            m = self._m.get(name, np.zeros(w.shape, dtype=np.float32)).astype(np.float64)
            v = self._v.get(name, np.zeros(w.shape, dtype=np.float32)).astype(np.float64)
            m = self.beta1 * m + (1.0 - self.beta1) * d
            v = self.beta2 * v + (1.0 - self.beta2) * np.square(d)
            self._m[name] = m.astype(np.float32)
            self._v[name] = v.astype(np.float32)
            step = self.lr * m / (np.sqrt(v) + self.tau)
            step += np.asarray(w, dtype=np.float64)
            out.append((name, step.astype(np.float32)))
        return out

    def state(self) -> NamedArrays:
        """``m/<name>`` and ``v/<name>`` for every tensor."""
        out: NamedArrays = [(f"m/{k}", a) for k, a in self._m.items()]
        out += [(f"v/{k}", a) for k, a in self._v.items()]
        return out

    def load_state(self, arrays: Arrays) -> None:
        """Restore the moments from ``state()`` arrays."""
        for key, a in arrays:
            kind, _, name = key.partition("/")
            (self._m if kind == "m" else self._v)[name] = np.array(a, dtype=np.float32)


def make_optimizer(training: common_pb2.TrainingSpec) -> ServerOptimizer:
    """The job's server optimizer, from a normalized job's training block.

    The rules (a known optimizer, a learning rate > 0) are ``confide.jobspec.validate_job``'s
    and the FedAvg default is ``confide.jobspec.normalize``'s; this only builds.

    Raises:
        ConfigError: an optimizer this aggregator cannot build (e.g. a stored job from a newer
            version).
    """
    lr = float(training.server_learning_rate)
    kind = training.server_optimizer
    if kind == common_pb2.SERVER_OPTIMIZER_FEDAVG:
        return FedAvg(lr=lr)
    if kind == common_pb2.SERVER_OPTIMIZER_FEDADAM:
        return FedAdam(lr=lr)
    raise ConfigError("training.server_optimizer", f"unknown server optimizer {kind}")
