"""Robust rules match a slow reference and stay in the honest range; admission bounds a site."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.admission import Bounds, admit_update, eval_weight, norm_bound
from aggregator.robust import HeldUpdates, Rule
from confide.errors import InternalError, Reason
from confide.v1 import common_pb2

SHAPES = [("w", (3, 7000)), ("b", (5,))]  # 21005 values: blocks cross the first tensor


def _updates(n: int, seed: int) -> list[list[tuple[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    return [
        [(name, rng.normal(size=shape).astype(np.float32)) for name, shape in SHAPES]
        for _ in range(n)
    ]


def _reference(values: list[float], rule: Rule, beta: float) -> float:
    """The rule on one coordinate, by sorting a Python list."""
    v, n = sorted(values), len(values)
    if rule is Rule.MEDIAN:
        return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    k = math.floor(beta * n)
    kept = v[k : n - k]
    return sum(kept) / len(kept)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 9),
    seed=st.integers(0, 2**31),
    rule=st.sampled_from([Rule.MEDIAN, Rule.TRIMMED_MEAN]),
    beta=st.floats(0.01, 0.49),
)
def test_trimmed_mean_and_median_match_a_slow_reference(n, seed, rule, beta):
    """The blocked coordinate-wise rule equals sorting each coordinate's values."""
    held = HeldUpdates(SHAPES, rule=rule, trim_fraction=beta)
    ups = _updates(n, seed)
    for u in ups:
        held.check(u)
        held.add(u, weight=1)
    got = held.mean()
    rng = np.random.default_rng(seed + 1)
    for t, (name, shape) in enumerate(SHAPES):
        assert got[t][0] == name and got[t][1].shape == shape
        for j in rng.integers(0, math.prod(shape), size=20):
            values = [float(u[t][1].reshape(-1)[j]) for u in ups]
            assert got[t][1].reshape(-1)[j] == pytest.approx(_reference(values, rule, beta))


@settings(max_examples=20, deadline=None)
@given(
    honest=st.integers(3, 8),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([-1e30, -1e6, 1e6, 1e30]),
)
def test_one_hostile_update_cannot_leave_the_honest_range(honest, seed, scale):
    """With one hostile site and k >= 1 (or the median), each coordinate stays in honest bounds."""
    n = honest + 1
    ups = _updates(honest, seed)
    hostile = [(name, np.full(shape, scale, dtype=np.float32)) for name, shape in SHAPES]
    for rule, beta in ((Rule.MEDIAN, 0.0), (Rule.TRIMMED_MEAN, 1.0 / n + 1e-9)):
        held = HeldUpdates(SHAPES, rule=rule, trim_fraction=beta)
        for u in [*ups, hostile]:
            held.add(u, weight=1)
        for t, (_, a) in enumerate(held.mean()):
            lo = np.min([u[t][1] for u in ups], axis=0)
            hi = np.max([u[t][1] for u in ups], axis=0)
            assert np.all(a >= lo - 1e-6) and np.all(a <= hi + 1e-6)


def test_held_updates_refuse_past_their_memory_bound():
    """A robust round holds at most max_bytes of updates; one more is refused as UNAVAILABLE."""
    d = 21005
    held = HeldUpdates(SHAPES, rule=Rule.MEDIAN, max_bytes=2 * 4 * d)
    for u in _updates(2, 0):
        held.check(u)
        held.add(u, weight=1)
    with pytest.raises(InternalError) as err:  # the server's bound: not the sender's fault
        held.check(_updates(1, 1)[0])
    assert err.value.reason is Reason.UNAVAILABLE
    held.reset()
    held.check(_updates(1, 1)[0])


def test_admission_caps_the_weight_and_scales_a_long_update_to_the_bound():
    """Weight = min(n, W); an update longer than B is scaled to exactly B and marked clipped."""
    spec = common_pb2.JobSpec(
        update_privacy=common_pb2.UpdatePrivacy(clip_norm=2.0, noise_multiplier=0.5)
    )
    b = norm_bound(spec, dim=100)
    assert b == pytest.approx(2.0 + 0.5 * 2.0 * (10.0 + 8.0))
    bounds = Bounds(Rule.FEDAVG, 50, 0, b)
    long = [("w", np.full((100,), 10.0, dtype=np.float32))]
    a = admit_update(bounds, long, num_samples=2**40)
    assert a.weight == 50 and a.clipped and a.norm == pytest.approx(100.0)
    assert np.linalg.norm(a.arrays[0][1].astype(np.float64)) == pytest.approx(b, rel=1e-6)
    short = [("w", np.full((100,), 0.1, dtype=np.float32))]
    a = admit_update(bounds, short, num_samples=7)
    assert a.weight == 7 and not a.clipped and a.arrays[0][1] is short[0][1]
    uniform = Bounds(Rule.MEAN, 0, 0, None)
    assert admit_update(uniform, long, num_samples=2**40).weight == 1
    assert eval_weight(uniform, 2.0**40) == 1.0 and eval_weight(uniform, 0.0) == 0.0
    assert eval_weight(Bounds(Rule.MEAN, 0, 100, None), 2.0**40) == 100.0


def test_secure_and_unclipped_jobs_have_no_aggregator_norm_bound():
    """Only a plaintext job with an update clip norm gets the aggregator's norm bound."""
    clip = common_pb2.UpdatePrivacy(clip_norm=1.0)
    assert norm_bound(common_pb2.JobSpec(), dim=10) is None
    secure = common_pb2.JobSpec(
        update_privacy=clip, secure_aggregation=common_pb2.SecureAggregation(enabled=True)
    )
    assert norm_bound(secure, dim=10) is None
    assert norm_bound(common_pb2.JobSpec(update_privacy=clip), dim=10) == 1.0
