"""Fixed-point encoding: error bound, clipping count, headroom, invalid input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide.errors import ConfigError, NonFiniteValue, Reason
from confide.secagg.quantize import (
    _quantize_from_parts,
    check_headroom,
    dequantize,
    quantization_step,
    quantize,
)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 20),
    bits=st.integers(2, 20),
    r=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_error_within_bound(n: int, bits: int, r: float, seed: int) -> None:
    """Dequantizing the sum of n encodings is within n * 2r / (2^b - 1) of the clipped sum."""
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-1.5 * r, 1.5 * r, size=(n, 64))
    total = np.zeros(64, dtype=np.uint32)
    for x in xs:
        total += _quantize_from_parts(x, clip_range=r, bits=bits, rng=rng).values
    got = dequantize(total, n=n, clip_range=r, bits=bits)
    want = np.clip(xs, -r, r).sum(axis=0)
    bound = n * quantization_step(clip_range=r, bits=bits)
    assert np.all(np.abs(got - want) <= bound * (1 + 1e-9) + 1e-9 * n * r)


def test_values_in_range_and_unbiased() -> None:
    """Encodings lie in [0, 2^b - 1] and stochastic rounding is unbiased on average."""
    rng = np.random.default_rng(1)
    x = np.full(200_000, 0.123456)
    enc = _quantize_from_parts(x, clip_range=1.0, bits=4, rng=rng).values
    assert enc.dtype == np.uint32 and enc.max() <= 15
    mean = dequantize(
        np.array([enc.astype(np.uint64).sum()], dtype=np.uint32), n=1, clip_range=1.0, bits=4
    )
    assert mean.shape == (1,)
    step = quantization_step(clip_range=1.0, bits=4)
    assert abs(enc.mean() * step - 1.0 - 0.123456) < 1e-3


def test_out_of_range_is_counted_not_folded() -> None:
    """Values outside [-r, r] are counted and clipped to the ends, never wrapped."""
    x = np.array([-5.0, -1.0, 0.0, 1.0, 2.5, 0.999])
    res = quantize(x, clip_range=1.0, bits=8)
    assert res.out_of_range == 2
    assert res.values[0] == 0 and res.values[4] == 255


def test_non_finite_is_refused() -> None:
    """NaN or infinity raises NonFiniteValue."""
    for bad in (np.nan, np.inf):
        with pytest.raises(NonFiniteValue):
            quantize(np.array([0.0, bad]), clip_range=1.0, bits=8)


@pytest.mark.parametrize("r", [0.0, -1.0, float("nan")])
def test_clip_range_must_be_positive(r: float) -> None:
    """r <= 0 or NaN is a config error naming secure_aggregation.clip_range."""
    with pytest.raises(ConfigError) as exc:
        quantize(np.zeros(3), clip_range=r, bits=8)
    assert exc.value.key == "secure_aggregation.clip_range"


def test_headroom_both_sides_of_the_limit() -> None:
    """n * (2^b - 1) = 2^32 - 1 passes for b=16, n=65537; one more site is refused."""
    check_headroom(n=65537, bits=16)
    with pytest.raises(ConfigError) as exc:
        check_headroom(n=65538, bits=16)
    assert exc.value.key == "secure_aggregation.bits"
    assert exc.value.reason is Reason.INVALID_VALUE


@pytest.mark.parametrize("bits", [0, 32])
def test_bits_limits(bits: int) -> None:
    """b = 0 and b = 32 are refused."""
    with pytest.raises(ConfigError):
        check_headroom(n=1, bits=bits)


def test_dequantize_refuses_wrapping_n() -> None:
    """Dequantizing a sum of too many inputs for b raises instead of returning wrapped values."""
    with pytest.raises(ConfigError):
        dequantize(np.zeros(2, np.uint32), n=2**17, clip_range=1.0, bits=16)
