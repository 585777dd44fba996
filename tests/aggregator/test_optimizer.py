"""Streaming FedAvg equals the exact weighted mean; FedAdam follows Reddi et al. 2021."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.optimizer import FedAdam, FedAvg, RunningSum

SHAPES = [("w", (3, 70_000)), ("b", (3,))]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10_000), st.integers(0, 2**31)), min_size=1, max_size=6))
def test_streaming_sum_equals_weighted_mean(updates):
    """Adding updates one at a time gives the exact sample-weighted mean (blocks cross tensors)."""
    rs = RunningSum(SHAPES)
    deltas = []
    for n, seed in updates:
        rng = np.random.default_rng(seed)
        d = [(name, rng.normal(size=shape).astype(np.float32)) for name, shape in SHAPES]
        deltas.append((n, d))
        rs.add(d, weight=n)
    mean = rs.mean()
    total = sum(n for n, _ in deltas)
    for i, (name, _) in enumerate(SHAPES):
        exact = sum(n * d[i][1].astype(np.float64) for n, d in deltas) / total
        assert mean[i][0] == name
        np.testing.assert_allclose(
            np.asarray(mean[i][1], dtype=np.float64), exact, rtol=1e-12, atol=1e-12
        )


def test_fedavg_applies_server_lr():
    """FedAvg adds lr times the mean delta, in float32."""
    w = [("x", np.ones(4, dtype=np.float32))]
    out = FedAvg(lr=0.5).apply(w, [("x", np.full(4, 2.0))])
    assert out[0][1].dtype == np.float32
    np.testing.assert_array_equal(out[0][1], np.full(4, 2.0, dtype=np.float32))


def test_fedadam_first_step_and_state_round_trip():
    """FedAdam's first step is lr·(1-β1)Δ/(sqrt((1-β2)Δ²)+τ), and its moments restore exactly."""
    opt = FedAdam(lr=0.1)
    w = [("x", np.zeros(3, dtype=np.float32))]
    d = np.array([1.0, -2.0, 0.0])
    out = opt.apply(w, [("x", d)])
    m, v = 0.1 * d, 0.01 * d**2
    np.testing.assert_allclose(
        np.asarray(out[0][1], dtype=np.float64), 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-6
    )
    again = FedAdam(lr=0.1)
    again.load_state(opt.state())
    a = opt.apply(out, [("x", d)])
    b = again.apply(out, [("x", d)])
    np.testing.assert_array_equal(a[0][1], b[0][1])
