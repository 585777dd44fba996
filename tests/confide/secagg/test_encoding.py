# ruff: noqa: RUF002, RUF003
"""What a site masks: the discrete Gaussian by default, its noise intact in the decoded sum,
and the continuous mechanism only where its clip provably cannot bite."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from confide.config import parse_toml
from confide.errors import ConfigError, NonFiniteValue
from confide.jobspec import job_from_toml, validate_job
from confide.secagg.encoding import (
    CONTINUOUS_CLIP_PROBABILITY,
    Mechanism,
    _encode_from_parts,
    continuous_clip_range,
    decode,
    encode,
    max_summands,
    secure_encoding,
)
from confide.secagg.quantize import dequantize, quantization_step
from confide.secagg.rotation import rotation_seed, unrotate
from confide.v1 import common_pb2

SEED = rotation_seed(federation="fed", attempt="job-1/3/1")
CONT = common_pb2.UPDATE_MECHANISM_CONTINUOUS_GAUSSIAN


def _spec(
    *, d: int = 62, z: float | None = 0.1, m: int = 3, r: float = 2.0, bits: int = 16, mech=0
) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(
        name="enc",
        rounds=1,
        min_sites=m,
        round_timeout_s=10.0,
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_FIXED_DELTA, fixed_delta_params=d),
        dataset=common_pb2.DatasetSpec(name="tab", features=["a"], label="y", num_classes=2),
        training=common_pb2.TrainingSpec(
            local_epochs=1, batch_size=8, learning_rate=0.1, server_learning_rate=1.0
        ),
        secure_aggregation=common_pb2.SecureAggregation(
            enabled=True, threshold=0.66, clip_range=r, bits=bits
        ),
    )
    if z is not None:
        spec.update_privacy.CopyFrom(
            common_pb2.UpdatePrivacy(clip_norm=1.0, noise_multiplier=z, delta=1e-5, mechanism=mech)
        )
    return spec


def _sum(encs, length: int) -> np.ndarray:
    total = np.zeros(length, dtype=np.uint32)
    for e in encs:
        total += e.values
    return total


def test_secure_jobs_with_update_privacy_default_to_the_discrete_gaussian():
    """Update privacy + SecAgg: discrete (length d'); SecAgg alone: fixed point (length d)."""
    enc = secure_encoding(_spec())
    assert enc.mechanism is Mechanism.DISCRETE_GAUSSIAN and enc.ddg is not None
    assert enc.length == 64 and enc.dim == 62
    # σγ is each site's share z·C/√m, as the continuous mechanism's.
    assert enc.ddg.noise_std == pytest.approx(0.1 / math.sqrt(3), rel=1e-12)
    plain = secure_encoding(_spec(z=None))
    assert plain.mechanism is Mechanism.FIXED_POINT and plain.length == 62
    assert max_summands(16) == 65537


def test_the_continuous_mechanism_is_refused_where_its_clip_can_bite():
    """The issue's setting, r = C with noise s = z·C/√m, is refused naming the clip range;
    r = C + k·s is admitted, and there the clip bites with probability <= 1e-12."""
    with pytest.raises(ConfigError) as err:
        secure_encoding(_spec(z=1.0, r=1.0, mech=CONT))
    assert err.value.key == "secure_aggregation.clip_range"
    s = 1.0 / math.sqrt(3)
    least = continuous_clip_range(clip_norm=1.0, noise_std=s, dim=62)
    with pytest.raises(ConfigError):
        secure_encoding(_spec(z=1.0, r=least * (1 - 1e-6), mech=CONT))
    ok = secure_encoding(_spec(z=1.0, r=least, mech=CONT))
    assert ok.mechanism is Mechanism.CONTINUOUS_GAUSSIAN and ok.length == 62
    # Independently: a coordinate |x| <= C plus N(0, s²) leaves [-r, r] w.p. <= 2Φ(-(r-C)/s).
    assert 62 * 2 * norm.sf((least - 1.0) / s) <= CONTINUOUS_CLIP_PROBABILITY * (1 + 1e-9)
    assert 62 * 2 * norm.sf((least * 0.99 - 1.0) / s) > CONTINUOUS_CLIP_PROBABILITY


def test_submit_validation_names_the_key():
    """validate_job refuses a continuous job whose clip bites, a discrete job without SecAgg,
    and a grid too coarse for the sites a sum may hold, each naming its key."""
    with pytest.raises(ConfigError) as err:
        validate_job(_spec(z=1.0, r=1.0, mech=CONT))
    assert err.value.key == "secure_aggregation.clip_range"
    plain = _spec(mech=common_pb2.UPDATE_MECHANISM_DISCRETE_GAUSSIAN)
    plain.secure_aggregation.enabled = False
    with pytest.raises(ConfigError) as err:
        validate_job(plain)
    assert err.value.key == "privacy.update.mechanism"
    with pytest.raises(ConfigError) as err:
        validate_job(_spec(bits=8))  # up to 16.8M sites per sum: too coarse for 62 weights
    assert err.value.key == "secure_aggregation.bits"
    validate_job(_spec())  # the default is accepted


def test_the_sum_of_noiseless_encodings_decodes_to_the_sum_of_clipped_updates():
    """z = 0: the decoded sum of n sites is Σ clip(x_i) within n·γ·√d' (rounding only),
    including an update far beyond C, which is clipped to norm C."""
    enc = secure_encoding(_spec(d=1000, z=0.0))
    assert enc.ddg is not None and enc.ddg.sigma == 0
    rng = np.random.default_rng(4)
    xs = [rng.normal(size=1000) * 0.01, rng.normal(size=1000) * 0.02, np.full(1000, 3.0)]
    encs = [_encode_from_parts(x, enc, seed=SEED, rng=rng) for x in xs]
    got = decode(_sum(encs, enc.length), enc, n=3, seed=SEED)
    clipped = [x * min(1.0, 1.0 / np.linalg.norm(x)) for x in xs]
    err = np.linalg.norm(got - np.sum(clipped, axis=0))
    assert err <= 3 * enc.ddg.granularity * math.sqrt(enc.length)
    assert err > 0  # it did round


def test_every_rounded_vector_obeys_the_accounted_norm_bound():
    """Whatever the update (spike, flat, far too large), the integer vector a site masks has
    ‖x̃‖₂² <= ⌊Δ₂²⌋ exactly, the sensitivity the ledger charges."""
    enc = secure_encoding(_spec(d=300, z=0.0))
    assert enc.ddg is not None
    spike = np.zeros(300)
    spike[5] = 1.0
    cases = [spike, np.full(300, 1 / math.sqrt(300)), np.full(300, 50.0), -spike * 1e6]
    rng = np.random.default_rng(9)
    for x in cases:
        for _ in range(20):
            e = _encode_from_parts(x, enc, seed=SEED, rng=rng)
            v = e.values.astype(np.int64)
            v[v >= 1 << 31] -= 1 << 32
            assert int(np.dot(v, v)) <= enc.ddg.norm_bound_sq
            assert e.rounding_tries >= 1 and e.out_of_range == 0


def test_all_the_noise_survives_into_the_sum():
    """Three sites' noise shares decode to a sum with std √3·σγ = z·C (m = 3): no share is
    clipped on its way into the sum."""
    d = 8192
    enc = secure_encoding(_spec(d=d, z=1.0, m=3))
    assert enc.ddg is not None
    rng = np.random.default_rng(12)
    encs = [_encode_from_parts(np.zeros(d), enc, seed=SEED, rng=rng) for _ in range(3)]
    noise = decode(_sum(encs, enc.length), enc, n=3, seed=SEED)
    assert float(np.std(noise)) == pytest.approx(1.0, rel=4 * math.sqrt(1 / (2 * d)))
    assert abs(float(np.mean(noise))) < 5 / math.sqrt(d)


def test_negative_sums_and_the_lift_boundary_decode_exactly():
    """The centered lift maps 2^32 − k to −k and 2^31 − 1 to itself."""
    enc = secure_encoding(_spec(d=4))
    assert enc.ddg is not None
    gamma = enc.ddg.granularity
    words = np.array([(1 << 32) - 5, (1 << 31) - 1, 1 << 31, 7], dtype=np.uint32)
    want = unrotate(np.array([-5, (1 << 31) - 1, -(1 << 31), 7]) * gamma, seed=SEED, dim=4)
    np.testing.assert_allclose(decode(words, enc, n=2, seed=SEED), want, rtol=1e-12)


def test_fixed_point_is_the_quantizer_and_its_count_stays_local():
    """Without update privacy the words are the b-bit fixed-point levels (no extra word) and
    the count of clipped coordinates is returned for the site's log only."""
    enc = secure_encoding(_spec(d=6, z=None, r=1.0))
    x = np.array([0.5, -0.5, 2.0, -3.0, 0.0, 1.0])
    e = _encode_from_parts(x, enc, seed=SEED, rng=np.random.default_rng(0))
    assert e.values.shape == (6,) and e.out_of_range == 2
    back = dequantize(e.values, n=1, clip_range=1.0, bits=16)
    np.testing.assert_allclose(
        back, np.clip(x, -1, 1), atol=quantization_step(clip_range=1.0, bits=16)
    )
    np.testing.assert_allclose(decode(e.values, enc, n=1, seed=SEED), back)


def test_bad_updates_and_sums_are_refused():
    """A wrong length, NaN, or a sum of the wrong length raise instead of encoding garbage."""
    enc = secure_encoding(_spec())
    with pytest.raises(ValueError):
        encode(np.zeros(61), enc, seed=SEED)
    bad = np.zeros(62)
    bad[3] = np.nan
    with pytest.raises(NonFiniteValue):
        encode(bad, enc, seed=SEED)
    with pytest.raises(ValueError):
        decode(np.zeros(62, dtype=np.uint32), enc, n=1, seed=SEED)
    assert encode(np.zeros(62), enc, seed=SEED).values.dtype == np.uint32


def test_the_job_file_names_the_mechanism():
    """``[privacy.update] mechanism`` reads both names, defaults to unspecified (discrete for
    a secure job), and refuses any other word naming the key."""
    base = """
name = "bc"
rounds = 1
min_sites = 3
[model]
kind = "logreg"
[dataset]
name = "breast_cancer"
features = ["a", "b"]
label = "target"
[privacy.update]
clip_norm = 1.0
noise_multiplier = 0.5
{line}
[secure_aggregation]
enabled = true
clip_range = {r}
"""
    spec = job_from_toml(parse_toml(base.format(line="", r=1.0)))
    assert spec.update_privacy.mechanism == common_pb2.UPDATE_MECHANISM_UNSPECIFIED
    assert secure_encoding(spec).mechanism is Mechanism.DISCRETE_GAUSSIAN
    cont = 'mechanism = "continuous_gaussian"'
    spec = job_from_toml(parse_toml(base.format(line=cont, r=4.0)))
    assert secure_encoding(spec).mechanism is Mechanism.CONTINUOUS_GAUSSIAN
    with pytest.raises(ConfigError) as err:
        job_from_toml(parse_toml(base.format(line=cont, r=1.0)))
    assert err.value.key == "secure_aggregation.clip_range"
    with pytest.raises(ConfigError) as err:
        job_from_toml(parse_toml(base.format(line='mechanism = "laplace"', r=1.0)))
    assert err.value.key == "privacy.update.mechanism"
