"""Fixed-point encoding of float updates into Z_{2^32} for secure aggregation, and back.

Secure aggregation sums integers mod M = 2^32 (Bonawitz et al., CCS 2017, Sec. 4; Bell et al.,
CCS 2020, Sec. 2). Symbols:

* r: clip range; each coordinate x is clipped to [-r, r]. Values outside are counted
  (``out_of_range``) for the site's own log, never folded silently; the count is not sent
  (beside a masked input it would reveal a per-site figure).
* b: bits per coordinate; the encoded value q is an integer in [0, 2^b - 1].
* Delta = 2r / (2^b - 1): the quantization step.
* q = floor((clip(x) + r) / Delta + U), U ~ Uniform[0, 1): stochastic rounding, so
  E[q * Delta - r] = clip(x) (unbiased) and |q * Delta - r - clip(x)| < Delta.
* n: number of summed inputs. Headroom: n * (2^b - 1) < 2^32, so the sum of n encodings never
  wraps mod 2^32 and the modular sum equals the integer sum. ``check_headroom`` enforces it.

Dequantizing a sum S of n encodings gives S * Delta - n * r. Error bound, per coordinate:
|dequantize(S) - sum_i clip(x_i)| < n * Delta = n * 2r / (2^b - 1).

Defaults: b = 16 admits n <= 65537 sites with headroom (16 + 17 bits < 32) and a step of
3.05e-5 * r; r = 1.0 matches the L2 clip norm C = 1.0 that the DP defaults use, since no
coordinate of a C-clipped delta exceeds C. This fixed-point path serves secure jobs without
update noise, and the continuous mechanism only where its clip provably cannot bite; a job
with update noise uses the discrete Gaussian encoding (``confide.secagg.encoding``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from confide.errors import ConfigError, NonFiniteValue

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_CLIP_RANGE",
    "Quantized",
    "check_headroom",
    "dequantize",
    "quantization_step",
    "quantize",
]

DEFAULT_BITS = 16
"""Bits per coordinate: headroom for up to 65537 summed inputs mod 2^32."""

DEFAULT_CLIP_RANGE = 1.0
"""Clip range r: equal to the default L2 clip norm, so a clipped delta is never cut further."""

_MODULUS_BITS = 32


@dataclass(frozen=True, slots=True)
class Quantized:
    """A quantized update.

    Args:
        values: uint32 array with entries in [0, 2^b - 1].
        out_of_range: how many coordinates were outside [-r, r] and clipped.
    """

    values: NDArray[np.uint32]
    out_of_range: int


def check_headroom(*, n: int, bits: int) -> None:
    """Check that n inputs of ``bits`` bits sum without wrapping mod 2^32.

    Args:
        n: number of inputs summed.
        bits: b.

    Raises:
        ConfigError: key ``secure_aggregation.bits``, when b is outside [1, 31] or
            n * (2^b - 1) >= 2^32.
    """
    if not 1 <= bits < _MODULUS_BITS:
        raise ConfigError("secure_aggregation.bits", f"must be in [1, 31], got {bits}")
    if n < 1:
        raise ConfigError("secure_aggregation.bits", f"number of inputs must be >= 1, got {n}")
    if n * ((1 << bits) - 1) >= 1 << _MODULUS_BITS:
        raise ConfigError(
            "secure_aggregation.bits",
            f"{bits} bits for {n} sites would wrap mod 2^32; need n * (2^b - 1) < 2^32",
        )


def quantization_step(*, clip_range: float, bits: int) -> float:
    """Return Delta = 2r / (2^b - 1), the width of one quantization level."""
    return 2.0 * clip_range / ((1 << bits) - 1)


def _validate(clip_range: float, bits: int) -> None:
    """Reject r <= 0 (or non-finite) and b outside [1, 31]."""
    if not (np.isfinite(clip_range) and clip_range > 0):
        raise ConfigError("secure_aggregation.clip_range", f"must be > 0, got {clip_range}")
    if not 1 <= bits < _MODULUS_BITS:
        raise ConfigError("secure_aggregation.bits", f"must be in [1, 31], got {bits}")


def _quantize_from_parts(
    x: NDArray[np.floating], *, clip_range: float, bits: int, rng: np.random.Generator
) -> Quantized:
    """Quantize with rounding noise drawn from ``rng``; see ``quantize``."""
    _validate(clip_range, bits)
    xf = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(xf)):
        raise NonFiniteValue("update holds NaN or infinity")
    out_of_range = int(np.count_nonzero(np.abs(xf) > clip_range))
    levels = (1 << bits) - 1
    scaled = (np.clip(xf, -clip_range, clip_range) + clip_range) * (levels / (2.0 * clip_range))
    scaled += rng.random(scaled.shape[0])
    np.floor(scaled, out=scaled)
    np.clip(scaled, 0, levels, out=scaled)
    return Quantized(values=scaled.astype(np.uint32), out_of_range=out_of_range)


def quantize(x: NDArray[np.floating], *, clip_range: float, bits: int) -> Quantized:
    """Clip to [-r, r] and stochastically round to b-bit integers in [0, 2^b - 1].

    The rounding noise only needs to be unbiased, not secret, so NumPy's PCG64 seeded from
    ``os.urandom`` suffices.

    Args:
        x: float array (flattened).
        clip_range: r > 0.
        bits: b in [1, 31].

    Raises:
        ConfigError: r <= 0 or b out of range.
        NonFiniteValue: ``x`` holds NaN or infinity.
    """
    rng = np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
    return _quantize_from_parts(x, clip_range=clip_range, bits=bits, rng=rng)


def dequantize(
    total: NDArray[np.uint32], *, n: int, clip_range: float, bits: int
) -> NDArray[np.float64]:
    """Decode the mod-2^32 sum of n quantized inputs to floats: S * Delta - n * r.

    Args:
        total: the unmasked modular sum.
        n: how many inputs were summed (the survivors).
        clip_range: r used to quantize.
        bits: b used to quantize.

    Raises:
        ConfigError: bad r or b, or n * (2^b - 1) >= 2^32 (the sum may have wrapped).
    """
    _validate(clip_range, bits)
    check_headroom(n=n, bits=bits)
    step = quantization_step(clip_range=clip_range, bits=bits)
    return np.asarray(total, dtype=np.float64) * step - n * clip_range
