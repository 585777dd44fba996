# Math notation (σ, α, ρ, δ, ε, Δ, ℓ) in docstrings cites the papers' formulas as written.
# ruff: noqa: RUF002, RUF003
"""Releasing a hold-out evaluation: the Gaussian mechanism on its counts, and its cost.

Symbols:

- ``n``: hold-out records the model was evaluated on; ``c``: records it classified correctly;
- ``ℓ_i``: record i's cross-entropy; ``L`` (``loss_clip``): the bound each ℓ_i is clipped to;
  ``S = Σ_i min(ℓ_i, L)``;
- ``z`` (``noise_multiplier``): noise std divided by the L2 sensitivity Δ; ``δ``.

Mechanism: the released vector is v = (n, c, S/L). Adding or removing one hold-out record
changes n by 1, c by at most 1 and S/L by at most 1, so ‖v(D) − v(D′)‖₂ ≤ Δ = √3. The daemon
releases v + N(0, (z·Δ)²·I₃), the Gaussian mechanism (Dwork & Roth 2014, Appendix A), whose
Rényi DP is ρ(α) = α/(2z²) (Mironov 2017, "Rényi Differential Privacy", Prop. 7). What leaves
the site is post-processing of the noisy (n̂, ĉ, ŝ), which costs nothing more (Dwork & Roth
2014, Prop. 2.1)::

    num_samples = max(1, round(n̂))
    accuracy    = clamp(ĉ / max(n̂, 1), 0, 1)
    loss        = clamp(L·ŝ / max(n̂, 1), 0, L)

When the hold-out size is public (a site declares it at register), the released count is
also clamped to it: post-processing with public information. With n public the adjacency is
effectively replacing one record, under which (c, S/L) has sensitivity √2 ≤ Δ, so the cost
below still bounds the release.

The ledger holds an evaluation as the sampled Gaussian with q = 1, σ = z, T = 1 at the job's δ
(``evaluation_cost``), composed with every round on the dataset by adding RDP curves. One such
release at z = 10 costs ε ≈ 0.38 at δ = 1e-5 on its own; six compose to ε ≈ 0.99.
The noise on the reported accuracy is about z·√3 / n: 0.017 for n = 1000 at z = 10.

z = 0 is the exact release (accuracy c/n, loss S/n, num_samples n): ε = ∞. A site gives it
only where its policy says so, and then outside the ledger (README "Evaluation").

Assumptions: the counts come from Confide's built-in evaluation in the worker. The daemon
clamps c to [0, n] and S to [0, n·L] whatever the worker reports, but a worker running hostile
code could make c depend on every record, which no clamp turns back into sensitivity 1. As in
the rest of the accounting, the hold-out is a fixed split of the dataset. Noise is float64
NumPy, not hardened against Mironov 2012 (see ``confide.dp.update``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from confide.dp.budget import RecordCost, RoundCost, record_curve
from confide.dp.rdp import DEFAULT_ORDERS, epsilon_from_rdp
from confide.dp.update import system_rng

__all__ = [
    "SENSITIVITY",
    "EvalCounts",
    "ReleasedEvaluation",
    "counts_from_means",
    "evaluation_cost",
    "release_evaluation",
]

SENSITIVITY = math.sqrt(3.0)
"""Δ: the L2 sensitivity of (n, c, S/L) to one hold-out record added or removed."""


@dataclasses.dataclass(frozen=True, slots=True)
class EvalCounts:
    """The exact hold-out counts of one model: n, c and the clipped loss sum S."""

    num_samples: int
    correct: int
    loss_sum: float


@dataclasses.dataclass(frozen=True, slots=True)
class ReleasedEvaluation:
    """The figures that leave the site for one evaluated model, and the z they carry."""

    accuracy: float
    loss: float
    num_samples: int
    noise_multiplier: float


def counts_from_means(
    *, accuracy: float, loss: float, num_samples: int, loss_clip: float
) -> EvalCounts:
    """The counts behind a worker's mean figures, clamped to what one hold-out allows.

    c = round(accuracy·n) clamped to [0, n] and S = loss·n clamped to [0, n·L], so whatever a
    worker reports, no count leaves its range (and NaN becomes 0).

    Args:
        accuracy: c / n as the worker computed it.
        loss: S / n, the mean of the clipped per-record losses.
        num_samples: n >= 0.
        loss_clip: L > 0.

    Raises:
        ValueError: n < 0 or L is not a finite number > 0.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if not (math.isfinite(loss_clip) and loss_clip > 0):
        raise ValueError(f"loss_clip must be a finite number > 0, got {loss_clip}")
    n = int(num_samples)
    acc = accuracy if math.isfinite(accuracy) else 0.0
    mean = loss if math.isfinite(loss) else 0.0
    correct = min(max(round(acc * n), 0), n)
    loss_sum = min(max(mean * n, 0.0), n * loss_clip)
    return EvalCounts(num_samples=n, correct=correct, loss_sum=loss_sum)


def release_evaluation(
    counts: EvalCounts,
    *,
    noise_multiplier: float,
    loss_clip: float,
    max_count: int | None = None,
) -> ReleasedEvaluation:
    """Release ``counts`` with Gaussian noise of multiplier z (exactly when z = 0).

    Args:
        counts: the exact, clamped counts.
        noise_multiplier: z >= 0, finite.
        loss_clip: L > 0, the clip the loss sum was computed with.
        max_count: the hold-out size when it is public: the released count is clamped to it.

    Raises:
        ValueError: z or L out of range.
    """
    draws = system_rng().standard_normal(3) if noise_multiplier > 0 else np.zeros(3)
    return _release_from_parts(
        counts,
        noise_multiplier=noise_multiplier,
        loss_clip=loss_clip,
        draws=(float(draws[0]), float(draws[1]), float(draws[2])),
        max_count=max_count,
    )


def _release_from_parts(
    counts: EvalCounts,
    *,
    noise_multiplier: float,
    loss_clip: float,
    draws: tuple[float, float, float],
    max_count: int | None = None,
) -> ReleasedEvaluation:
    """``release_evaluation`` with the three standard normal draws given (test vectors)."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    if not (math.isfinite(loss_clip) and loss_clip > 0):
        raise ValueError(f"loss_clip must be a finite number > 0, got {loss_clip}")
    n, c, s = counts.num_samples, counts.correct, counts.loss_sum / loss_clip
    cap = max_count
    if noise_multiplier == 0:
        if n == 0:
            return ReleasedEvaluation(0.0, 0.0, 0, 0.0)
        return ReleasedEvaluation(c / n, loss_clip * s / n, n if cap is None else min(n, cap), 0.0)
    std = noise_multiplier * SENSITIVITY
    n_hat = n + std * draws[0]
    c_hat = c + std * draws[1]
    s_hat = s + std * draws[2]
    denominator = max(n_hat, 1.0)
    return ReleasedEvaluation(
        accuracy=min(max(c_hat / denominator, 0.0), 1.0),
        loss=min(max(loss_clip * s_hat / denominator, 0.0), loss_clip),
        num_samples=max(1, round(n_hat) if cap is None else min(round(n_hat), cap)),
        noise_multiplier=noise_multiplier,
    )


def evaluation_cost(*, noise_multiplier: float, delta: float) -> RoundCost:
    """The ledger entry of one release at z > 0: record-level Gaussian (q = 1, σ = z, T = 1).

    Raises:
        ValueError: z is not a finite number > 0, or δ is not in (0, 1).
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"an evaluation cost needs z > 0, got {noise_multiplier}")
    record = RecordCost(sample_rate=1.0, noise_multiplier=noise_multiplier, steps=1, delta=delta)
    eps = epsilon_from_rdp(orders=DEFAULT_ORDERS, rdp=record_curve(record, None), delta=delta)[0]
    return RoundCost(
        record=record,
        update=None,
        epsilon=eps,
        update_epsilon=0.0,
        delta=delta,
        evaluation=True,
    )
