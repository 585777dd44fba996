"""What may leave the site from a worker's answer: checks on the delta and its figures.

The worker runs job code the site does not trust, so the daemon checks what it hands back
before it protects, signs and sends anything: the delta must match the model exactly, and
only whitelisted, finite figures travel with it.
"""

from __future__ import annotations

import math

import numpy as np

from confide.dp.evaluation import ReleasedEvaluation
from confide.errors import InternalError, PeerError, Reason
from confide.wire.blob import NamedArrays, check_finite
from confide.wire.worker import TrainResult

__all__ = ["MAX_DELTA_ABS", "TRAIN_METRICS", "check_delta", "released_metrics"]

MAX_DELTA_ABS = 1e6
"""The largest change one round may make to any one weight. Far beyond what training does
(weights are O(1) to O(100)); a delta past it is a diverged run or job code trying to swamp
the aggregate (or to overflow float32 sums at the aggregator), and is refused rather than sent
even when clipping would shrink it."""

TRAIN_METRICS = ("loss", "accuracy")
"""Training figures a non-record-private job may report (as ``train_<name>``)."""


def check_delta(delta: NamedArrays, weights: NamedArrays) -> None:
    """Refuse a worker's delta unless it matches the model: names, shapes, float32, finite,
    and no value beyond ``MAX_DELTA_ABS``.

    Raises:
        InternalError: ``TRAINING_FAILED`` naming the first difference.
    """
    expected = [(n, tuple(a.shape)) for n, a in weights]
    got = [(n, tuple(a.shape)) for n, a in delta]
    if got != expected:
        raise InternalError(
            "the worker's delta does not match the model's tensors", reason=Reason.TRAINING_FAILED
        )
    for name, arr in delta:
        if arr.dtype.name != "float32":
            raise InternalError(
                f"delta tensor {name!r} is {arr.dtype}, not float32", reason=Reason.TRAINING_FAILED
            )
    try:
        check_finite(delta)
    except PeerError as exc:
        raise InternalError(str(exc), reason=Reason.TRAINING_FAILED) from exc
    for name, arr in delta:
        if arr.size and float(np.max(np.abs(arr))) > MAX_DELTA_ABS:
            raise InternalError(
                f"delta tensor {name!r} changes a weight by more than {MAX_DELTA_ABS:g}: "
                "a diverged training or job code; nothing was sent",
                reason=Reason.TRAINING_FAILED,
                public=True,
            )


def released_metrics(
    ev: ReleasedEvaluation | None, tr: TrainResult, *, record_private: bool
) -> dict[str, float]:
    """The figures that leave with an update.

    The hold-out evaluation of the round's input model when ``agent.tasks.evaluation`` released one
    (noised and charged, or exact where the policy allows; None: withheld); training figures
    only when ``record_private`` is False, i.e. the round claims no finite record-level ε
    (they are computed on the training records without noise, so no DP guarantee would cover
    them). Worker figures are whitelisted by name and must be finite.

    Raises:
        InternalError: MALFORMED: the worker returned a non-finite or out-of-range figure.
    """
    out: dict[str, float] = {}
    if ev is not None:
        out["eval_accuracy"] = float(ev.accuracy)
        out["eval_loss"] = float(ev.loss)
        out["eval_samples"] = float(ev.num_samples)
    if not record_private:
        for name in TRAIN_METRICS:
            value = tr.metrics.get(name, tr.metrics.get(f"train_{name}"))
            if value is not None:
                out[f"train_{name}"] = float(value)
    if not all(math.isfinite(v) and v >= 0 for v in out.values()) or (
        out.get("eval_accuracy", 0.0) > 1
    ):
        raise InternalError("the worker returned an invalid metric", reason=Reason.MALFORMED)
    return out
