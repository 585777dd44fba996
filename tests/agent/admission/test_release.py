"""The daemon's check of a worker's delta: anything but a plausible update is never sent."""

from __future__ import annotations

import numpy as np
import pytest

from agent.admission.release import MAX_DELTA_ABS, check_delta
from confide.errors import InternalError, Reason

WEIGHTS = [("w", np.zeros((3, 2), np.float32)), ("b", np.zeros(2, np.float32))]


def _delta(**override: np.ndarray) -> list[tuple[str, np.ndarray]]:
    return [(n, override.get(n, np.full_like(a, 0.5))) for n, a in WEIGHTS]


def test_a_delta_like_the_model_passes():
    """Same names, shapes and dtype, finite, modest: accepted."""
    check_delta(_delta(), WEIGHTS)


@pytest.mark.parametrize(
    "delta",
    [
        _delta(w=np.zeros((2, 3), np.float32)),  # wrong shape
        _delta(b=np.zeros(2, np.float64)),  # wrong dtype
        _delta(b=np.array([0.0, np.nan], np.float32)),  # NaN
        _delta(w=np.full((3, 2), np.inf, np.float32)),  # infinite
        _delta(b=np.array([0.0, MAX_DELTA_ABS * 2], np.float32)),  # huge
        _delta(b=np.array([0.0, -3e38], np.float32)),  # near float32's edge
        [("b", np.zeros(2, np.float32)), ("w", np.zeros((3, 2), np.float32))],  # reordered
        _delta()[:1],  # a tensor short
    ],
    ids=["shape", "dtype", "nan", "inf", "huge", "edge", "order", "short"],
)
def test_every_implausible_delta_is_refused(delta):
    """Each kind of bad delta is a training failure: nothing leaves the site."""
    with pytest.raises(InternalError) as info:
        check_delta(delta, WEIGHTS)
    assert info.value.reason is Reason.TRAINING_FAILED
