"""Built-in models: sizes from shapes alone, and initial weights drawn without a float64 copy."""

from __future__ import annotations

import math

import numpy as np

from confide.models import initial_weights, parameter_bytes, parameter_shapes
from confide.v1 import common_pb2


def _mlp(features: int, hidden: list[int]) -> tuple[common_pb2.ModelSpec, common_pb2.DatasetSpec]:
    model = common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_MLP, hidden=hidden)
    ds = common_pb2.DatasetSpec(
        name="d", features=[f"f{i}" for i in range(features)], label="y", num_classes=2
    )
    return model, ds


def test_parameter_bytes_of_a_huge_model_is_computed_not_allocated():
    """A 10^12-parameter model's size is 4e12 bytes, computed from its shape alone."""
    model = common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_FIXED_DELTA, fixed_delta_params=10**12)
    assert parameter_bytes(model, common_pb2.DatasetSpec()) == 4 * 10**12


def test_chunked_draws_equal_one_draw_per_tensor():
    """Weights drawn chunk by chunk equal torch-style uniform draws of each whole tensor."""
    model, ds = _mlp(1100, [1000])  # net.0.weight has 1.1M values: more than one chunk
    got = initial_weights(model, ds, seed=3)
    rng = np.random.default_rng(3)
    for (name, arr), (name2, shape) in zip(got, parameter_shapes(model, ds), strict=True):
        fan_in = 1100 if name.startswith("net.0") else 1000
        bound = 1.0 / math.sqrt(fan_in)
        want = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        assert name == name2 and arr.dtype == np.float32
        np.testing.assert_array_equal(arr, want)
