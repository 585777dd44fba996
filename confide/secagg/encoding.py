# Math notation (σ, γ, Φ, Δ, √) in docstrings cites the formulas as written.
# ruff: noqa: RUF001, RUF002, RUF003
"""What a site hands to masking, and how the aggregator reads the unmasked sum back.

Every secure job has one encoding, a pure function of its signed spec (``secure_encoding``),
so the aggregator at submit, each site when it plans and charges a round, each site when it
encodes, and the aggregator when it decodes all derive the same one. Mechanisms
(``Mechanism``):

- ``DISCRETE_GAUSSIAN``, the default when the job sets update privacy: the distributed
  discrete Gaussian mechanism (Kairouz, Liu, Steinke 2021; ``confide.dp.ddg``). A site clips
  its update to L2 norm C, scales it by 1/γ, rotates it (``confide.secagg.rotation``),
  rounds it conditionally to integers of norm <= Δ₂, adds N_Z(0, σ²) to each of the d'
  coordinates (``confide.dp.discrete``) and reduces mod 2^32. Nothing is clipped per
  coordinate, so all the noise survives into the sum, and the sum is decoded as
  γ·Uᵀ·lift(S), lift mapping [0, 2^32) to [−2^31, 2^31). σγ = z·C/√m, as the continuous
  mechanism's share.
- ``CONTINUOUS_GAUSSIAN``: the daemon adds N(0, s²), s = z·C/√m, then the update is clipped
  to [−r, r] and quantized (``confide.secagg.quantize``). The clip is not part of the
  Gaussian-sum argument, so the job is admitted only where the clip provably does not bite:
  a clipped coordinate x_j (|x_j| <= C) plus noise leaves [−r, r] with probability at most
  2Φ(−(r − C)/s), so ``secure_encoding`` requires 2d·Φ(−(r − C)/s) <= 10⁻¹²
  (``CONTINUOUS_CLIP_PROBABILITY``, per site and round, union over the d coordinates), i.e.
  r >= C + k·s with k = −Φ⁻¹(10⁻¹²/(2d)) (k = 7.68 for d = 62, 8.84 for d = 10⁶).
  Its per-site stochastic rounding is outside the Gaussian-sum argument too; only the
  discrete mechanism's accounting covers every step.
- ``FIXED_POINT``: a job without update privacy (no update noise, no update-level claim):
  clip to [−r, r] and quantize, as above.

The vector handed to masking has ``SecureEncoding.length`` uint32 words (d' for the discrete
mechanism, d otherwise); no per-site figure travels beside it in plaintext (a site's count of
clipped coordinates stays in its own log).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from confide.dp.ddg import DdgParams, ddg_params
from confide.dp.discrete import _discrete_gaussian_from_parts
from confide.dp.update import clip, noise_std, system_rng
from confide.errors import ConfigError, InternalError
from confide.models import parameter_shapes
from confide.secagg.quantize import _quantize_from_parts, dequantize
from confide.secagg.rotation import rotate, unrotate
from confide.v1 import common_pb2

__all__ = [
    "CONTINUOUS_CLIP_PROBABILITY",
    "Encoded",
    "Mechanism",
    "SecureEncoding",
    "continuous_clip_range",
    "decode",
    "encode",
    "max_summands",
    "secure_encoding",
]

CONTINUOUS_CLIP_PROBABILITY = 1e-12
"""The most the clip to [−r, r] may bite a continuous-noise update, per site and round."""

_MODULUS = 1 << 32
_MAX_ROUNDING_TRIES = 256
"""Conditional rounding fails a try with probability <= β = e^−½: 256 fail with < 10⁻⁵⁵."""


class Mechanism(enum.Enum):
    """How a secure job's update is noised and encoded for masking."""

    DISCRETE_GAUSSIAN = "discrete_gaussian"
    CONTINUOUS_GAUSSIAN = "continuous_gaussian"
    FIXED_POINT = "fixed_point"


@dataclass(frozen=True, slots=True)
class SecureEncoding:
    """A secure job's encoding of one flat update (see the module docstring).

    Args:
        mechanism: the mechanism.
        dim: d, the update's length.
        clip_range: r (fixed point only).
        bits: b, bits per coordinate per site; caps the sites per sum (``max_summands``).
        ddg: the discrete Gaussian's parameters (discrete only).
    """

    mechanism: Mechanism
    dim: int
    clip_range: float
    bits: int
    ddg: DdgParams | None = None

    @property
    def length(self) -> int:
        """The number of uint32 words a site masks: d' (discrete) or d."""
        return self.ddg.dim if self.ddg is not None else self.dim


@dataclass(frozen=True, slots=True)
class Encoded:
    """One site's vector for masking, and what stays in its own log.

    Args:
        values: ``length`` uint32 words.
        out_of_range: coordinates clipped to [−r, r] (fixed point; 0 for the discrete one).
        rounding_tries: conditional-rounding tries (discrete; 0 otherwise).
    """

    values: NDArray[np.uint32]
    out_of_range: int
    rounding_tries: int


def max_summands(bits: int) -> int:
    """The most sites one sum of b-bit inputs may hold: ⌊(2^32 − 1)/(2^b − 1)⌋ (the headroom
    rule n·(2^b − 1) < 2^32 of ``confide.secagg.quantize``, which each round also checks)."""
    return (_MODULUS - 1) // ((1 << bits) - 1)


def continuous_clip_range(*, clip_norm: float, noise_std: float, dim: int) -> float:
    """The least r for which the continuous mechanism's clip bites with probability
    <= ``CONTINUOUS_CLIP_PROBABILITY``: C + k·s, k = −Φ⁻¹(10⁻¹²/(2d))."""
    k = -NormalDist().inv_cdf(CONTINUOUS_CLIP_PROBABILITY / (2.0 * dim))
    return clip_norm + k * noise_std


def secure_encoding(spec: common_pb2.JobSpec) -> SecureEncoding:
    """The encoding of a secure job's updates, checked (the aggregator calls it at submit).

    Args:
        spec: a normalized secure job (``confide.jobspec.normalize``: clip range and bits
            filled in; unset ones are refused, never defaulted).

    Raises:
        ConfigError: naming ``privacy.update.mechanism`` (not a secure job),
            ``secure_aggregation.clip_range`` (the continuous mechanism's clip could bite) or
            ``secure_aggregation.bits`` (no grid keeps the sum in range), or the key of a
            model that has no shapes.
    """
    sa, up = spec.secure_aggregation, spec.update_privacy
    if not sa.enabled:
        raise ConfigError("privacy.update.mechanism", "the job does not use secure aggregation")
    dim = sum(math.prod(s) for _, s in parameter_shapes(spec.model, spec.dataset))
    r, bits = sa.clip_range, sa.bits
    if not (math.isfinite(r) and r > 0):
        raise ConfigError("secure_aggregation.clip_range", f"must be > 0, got {r}")
    if not 1 <= bits < 32:
        raise ConfigError("secure_aggregation.bits", f"must be in [1, 31], got {bits}")
    if up.clip_norm <= 0:
        return SecureEncoding(Mechanism.FIXED_POINT, dim, r, bits)
    std = noise_std(
        clip_norm=up.clip_norm,
        noise_multiplier=up.noise_multiplier,
        min_sites=max(1, int(spec.min_sites)),
        distributed=True,
    )
    if up.mechanism == common_pb2.UPDATE_MECHANISM_CONTINUOUS_GAUSSIAN:
        least = continuous_clip_range(clip_norm=up.clip_norm, noise_std=std, dim=dim)
        if r < least:
            raise ConfigError(
                "secure_aggregation.clip_range",
                f"{r:g} lets the clip to [-r, r] cut the continuous update noise; the "
                f"continuous mechanism needs r >= C + k*s = {least:.4g} (clipping probability "
                f'<= {CONTINUOUS_CLIP_PROBABILITY:g}), or use mechanism = "discrete_gaussian"',
            )
        return SecureEncoding(Mechanism.CONTINUOUS_GAUSSIAN, dim, r, bits)
    try:
        params = ddg_params(
            clip_norm=up.clip_norm, noise_std=std, dim=dim, max_summands=max_summands(bits)
        )
    except ValueError as exc:
        raise ConfigError("secure_aggregation.bits", str(exc)) from exc
    return SecureEncoding(Mechanism.DISCRETE_GAUSSIAN, dim, r, bits, params)


def encode(x: NDArray[np.floating], enc: SecureEncoding, *, seed: bytes) -> Encoded:
    """Encode a site's flat (protected) update for masking, with randomness from the OS.

    Args:
        x: the update, d floats (already clipped and, for the continuous mechanism, noised
            by the daemon; the discrete mechanism clips again and adds its own noise).
        enc: the job's encoding.
        seed: the round attempt's rotation seed (``confide.secagg.rotation.rotation_seed``).

    Raises:
        ValueError: x does not have d coordinates.
        NonFiniteValue: x holds NaN or infinity.
        InternalError: conditional rounding failed 256 times (probability < 10⁻⁵⁵).
    """
    return _encode_from_parts(x, enc, seed=seed, rng=system_rng())


def _encode_from_parts(
    x: NDArray[np.floating], enc: SecureEncoding, *, seed: bytes, rng: np.random.Generator
) -> Encoded:
    """``encode`` with the generator given (test vectors)."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    if flat.size != enc.dim:
        raise ValueError(f"the update has {flat.size} coordinates, the job's model {enc.dim}")
    if enc.ddg is None:
        q = _quantize_from_parts(flat, clip_range=enc.clip_range, bits=enc.bits, rng=rng)
        return Encoded(q.values, q.out_of_range, 0)
    p = enc.ddg
    clipped, _ = clip(flat, clip_norm=p.clip_norm)
    rotated = rotate(clipped / p.granularity, seed=seed)
    low = np.floor(rotated)
    up_probability = rotated - low
    base = low.astype(np.int64)
    for tries in range(1, _MAX_ROUNDING_TRIES + 1):
        rounded = base + (rng.random(p.dim) < up_probability)
        # Exact in int64: ‖rounded‖₂ < c/γ + √d' <= 2^31 (``confide.dp.ddg``).
        if int(np.dot(rounded, rounded)) <= p.norm_bound_sq:
            rounded += _discrete_gaussian_from_parts(sigma=p.sigma, size=p.dim, rng=rng)
            return Encoded(np.mod(rounded, _MODULUS).astype(np.uint32), 0, tries)
    raise InternalError("conditional rounding did not meet its norm bound")


def decode(
    total: NDArray[np.uint32], enc: SecureEncoding, *, n: int, seed: bytes
) -> NDArray[np.float64]:
    """The sum of the n encoded updates in ``total`` (their unmasked mod-2^32 sum), d floats.

    Raises:
        ValueError: ``total`` does not have ``length`` words.
        ConfigError: fixed point: n·(2^b − 1) >= 2^32 (the sum may have wrapped).
    """
    words = np.asarray(total).ravel()
    if words.size != enc.length:
        raise ValueError(f"the sum has {words.size} words, the encoding {enc.length}")
    if enc.ddg is None:
        return dequantize(words.astype(np.uint32), n=n, clip_range=enc.clip_range, bits=enc.bits)
    lifted = words.astype(np.int64)
    lifted[lifted >= _MODULUS // 2] -= _MODULUS
    return unrotate(lifted.astype(np.float64) * enc.ddg.granularity, seed=seed, dim=enc.dim)
