# Math notation (σ, Δ) in docstrings cites the formulas as written.
# ruff: noqa: RUF002, RUF003
"""What one site's plaintext update may weigh: its weight, its norm, its claimed figures.

Every check here runs before anything about the update is stored or summed
(``Job.admit``), so a refused update changes nothing (issue 9.4).

Weight (issue 9.3). FedAvg weighs site i by ``w_i = min(n_i, W)``, n_i its claimed sample
count and W the job's ``aggregation.max_sample_weight``; every other rule, and a job that
states no W, weighs each site 1. A site may also not claim more records than it declared for
the dataset when it registered (``RegisterRequest.dataset_sizes``), nor more than
``confide.wire.bounds.MAX_RECORDS``.

Norm. The trusted daemon releases ``clip(Δ, C) + N(0, σ²I)`` with σ = z·C (plaintext:
``confide.dp.update``). ‖N(0, σ²I_d)‖ is 1-Lipschitz in the noise with mean at most σ√d, so
by Gaussian concentration P(‖noise‖ >= σ(√d + t)) <= exp(-t²/2) (Boucheron, Lugosi, Massart
2013, Theorem 5.6). The aggregator bounds every update by

    B = C + z·C·(√d + t),  t = 8  (an honest update passes with probability >= 1 - 1.3e-14),

and scales an update with ‖Δ‖ > B down to norm B, recording its norm and that it was
clipped. z is the job's; a site whose policy adds more noise than the job asks may be scaled
down (post-processing: its privacy is unchanged). A job without ``privacy.update.clip_norm``
has no norm bound here.

Bound on one hostile site (uniform or capped FedAvg): with honest weights w_j, the hostile
weight w_h <= W (1 when uniform) and every update of norm <= B, the aggregate moves from the
honest sites' own weighted mean by at most ``2·B·w_h / (w_h + Σ_j w_j)`` in L2 norm.

Figures. Reported accuracy is a weighted mean of sites' hold-out accuracy with weights
``min(eval_samples, max_eval_samples)``, or 1 per site when the job states no cap; an
accuracy outside [0, 1] is refused, so one hostile site among n moves the reported accuracy
by at most ``v_h / (v_h + Σ_j v_j)`` (v: those weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from aggregator.robust import Arrays, Rule
from confide.errors import MalformedMessage, NonFiniteValue, OversizedMessage
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays

__all__ = [
    "NOISE_TAIL",
    "Admitted",
    "Bounds",
    "Declared",
    "admit_update",
    "bounds_for",
    "check_claims",
    "eval_weight",
    "norm_bound",
    "rule_of",
]

NOISE_TAIL = 8.0
"""t in the norm bound B = C + z·C·(√d + t)."""

_BLOCK = 1 << 16
_ACCURACY = ("eval_accuracy", "accuracy")

_RULES = {
    common_pb2.AGGREGATION_RULE_FEDAVG: Rule.FEDAVG,
    common_pb2.AGGREGATION_RULE_MEAN: Rule.MEAN,
    common_pb2.AGGREGATION_RULE_TRIMMED_MEAN: Rule.TRIMMED_MEAN,
    common_pb2.AGGREGATION_RULE_MEDIAN: Rule.MEDIAN,
}


@dataclass(frozen=True)
class Declared:
    """The record counts a site declared for one dataset when it registered."""

    train: int
    holdout: int


@dataclass(frozen=True)
class Bounds:
    """What one site's update and figures may weigh in a job.

    Args:
        rule: how the round's updates are combined.
        max_sample_weight: W for FedAvg (0: every weight is 1).
        max_eval_samples: the cap on a site's hold-out weight (0: every weight is 1).
        norm_bound: B, or None when the job sets no update clip norm.
    """

    rule: Rule
    max_sample_weight: int
    max_eval_samples: int
    norm_bound: float | None


@dataclass(frozen=True)
class Admitted:
    """A checked update, ready to be recorded and then added.

    Args:
        arrays: the update, scaled down to ``B`` when it was longer.
        weight: its weight in the aggregate.
        norm: its L2 norm as received.
        clipped: whether it was scaled down.
    """

    arrays: NamedArrays
    weight: int
    norm: float
    clipped: bool

    def describe(self) -> str:
        """The audit detail: weight, norm and whether it was clipped."""
        return f"weight={self.weight} norm={self.norm:.6g}" + (" clipped" if self.clipped else "")


def rule_of(spec: common_pb2.JobSpec) -> Rule:
    """The job's aggregation rule; unspecified is FedAvg with a weight cap, else the mean."""
    agg = spec.aggregation
    if agg.rule == common_pb2.AGGREGATION_RULE_UNSPECIFIED:
        return Rule.FEDAVG if agg.max_sample_weight > 0 else Rule.MEAN
    return _RULES[agg.rule]


def norm_bound(spec: common_pb2.JobSpec, *, dim: int) -> float | None:
    """B = C + z·C·(√d + t) for a plaintext job with an update clip norm C, else None."""
    up = spec.update_privacy
    if up.clip_norm <= 0 or spec.secure_aggregation.enabled:
        return None
    c, z = float(up.clip_norm), float(up.noise_multiplier)
    return c + z * c * (math.sqrt(dim) + NOISE_TAIL)


def bounds_for(spec: common_pb2.JobSpec, *, dim: int) -> Bounds:
    """The job's bounds on one site, for a model of ``dim`` parameters."""
    rule = rule_of(spec)
    return Bounds(
        rule,
        int(spec.aggregation.max_sample_weight) if rule is Rule.FEDAVG else 0,
        int(spec.aggregation.max_eval_samples),
        norm_bound(spec, dim=dim),
    )


def check_claims(
    *, num_samples: int, metrics: Mapping[str, float], declared: Declared | None, eval_key: str
) -> None:
    """Refuse counts beyond the site's declared dataset, or an accuracy outside [0, 1].

    Args:
        num_samples: the records the site says it used (training, or hold-out for a final
            evaluation report, whose ``eval_key`` is then "").
        metrics: the figures it sent.
        declared: what it declared at register for the job's dataset (None: nothing).
        eval_key: the metrics key holding its hold-out count ("" when ``num_samples`` is it).

    Raises:
        OversizedMessage: a count above the declared one.
        MalformedMessage: an accuracy outside [0, 1].
    """
    if declared is not None:
        train, holdout = (num_samples, metrics.get(eval_key, 0.0)) if eval_key else (0, num_samples)
        if train > declared.train:
            raise OversizedMessage(
                f"num_samples {train} exceeds the {declared.train} training records declared"
            )
        if holdout > declared.holdout:
            raise OversizedMessage(
                f"{int(holdout)} hold-out records exceed the {declared.holdout} declared"
            )
    for key in _ACCURACY:
        if not 0.0 <= metrics.get(key, 0.0) <= 1.0:
            raise MalformedMessage(f"{key} must be in [0, 1]")


def admit_update(bounds: Bounds, arrays: Arrays, *, num_samples: int) -> Admitted:
    """The update's weight, and the update itself scaled down to the norm bound if longer.

    Raises:
        MalformedMessage: num_samples < 1.
        NonFiniteValue: its norm is not finite.
    """
    if num_samples < 1:
        raise MalformedMessage("num_samples must be >= 1")
    weight = min(num_samples, bounds.max_sample_weight) if bounds.max_sample_weight else 1
    norm = _l2(arrays)
    if not math.isfinite(norm):
        raise NonFiniteValue("the update's norm is not finite")
    b = bounds.norm_bound
    if b is None or norm <= b:
        return Admitted([(n, a) for n, a in arrays], weight, norm, False)
    scale = b / norm
    scaled: NamedArrays = [(n, (a * scale).astype(np.float32)) for n, a in arrays]
    return Admitted(scaled, weight, norm, True)


def eval_weight(bounds: Bounds, claimed: float) -> float:
    """A site's weight in the reported accuracy: its capped hold-out count, or 1 (0 if none)."""
    if claimed <= 0:
        return 0.0
    cap = bounds.max_eval_samples
    return min(float(claimed), float(cap)) if cap else 1.0


def _l2(arrays: Arrays) -> float:
    """‖Δ‖₂ over every tensor, summed in float64 in blocks."""
    total = 0.0
    for _, a in arrays:
        flat = a.reshape(-1)
        for start in range(0, flat.size, _BLOCK):
            blk = flat[start : start + _BLOCK].astype(np.float64)
            total += float(np.dot(blk, blk))
    return math.sqrt(total)
