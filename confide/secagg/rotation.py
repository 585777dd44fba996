# Math notation (ξ, √, ⌈⌉) in docstrings cites the paper's formulas as written.
# ruff: noqa: RUF002
"""The random rotation U = H·D that flattens a vector before it is rounded to integers.

Kairouz, Liu, Steinke 2021 ("The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", Section 4.2, "flattening") rotate each site's clipped,
scaled update x with a random orthogonal U shared by all sites before rounding. U keeps
‖Ux‖₂ = ‖x‖₂ (so the sensitivity of the sum), and makes every coordinate of Ux subgaussian
with variance proxy ‖x‖₂²/d' whatever x is, so the modular sum of n such vectors stays in
range with high probability (``confide.dp.ddg``); the server applies Uᵀ to the sum.

Here U = H·D, the randomized Walsh–Hadamard transform: d' = 2^⌈log₂ d⌉ (x is padded with
zeros), D = diag(ξ) with ξ ∈ {−1, +1}^{d'} and H the Walsh–Hadamard matrix scaled by 1/√d'
(orthogonal and symmetric, so Uᵀ = D·H and H·H = I). With ξ uniform, coordinate j of H·D·x
is Σ_k H_jk ξ_k x_k, a sum of independent symmetric terms bounded by |x_k|/√d', hence
subgaussian with variance proxy ‖x‖₂²/d' (Hoeffding).

ξ comes from ``rotation_seed``: every site of a round attempt and the aggregator derive the
same seed from (federation, job, round, attempt), and the sign bits are the low bits of the
PRG stream (``confide.secagg.prg.expand``). It is public on purpose: privacy does not rest on
U (sensitivity is preserved by every orthogonal U and the rounding bound is checked after
rotation), only the range argument does, and a fresh seed per attempt keeps ξ independent of
the updates (a hostile job that knew ξ in advance could only hurt the round's utility, which
it can do anyway). O(d' log d') per transform, in float64.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from confide.secagg.prg import expand

__all__ = ["padded_dim", "rotate", "rotation_seed", "unrotate"]

_LABEL = b"confide/v1/ddg-rotation\x00"


def padded_dim(dim: int) -> int:
    """d' = 2^⌈log₂ d⌉, the length a vector of d coordinates is padded to (d >= 1).

    Raises:
        ValueError: d < 1.
    """
    if dim < 1:
        raise ValueError(f"dimension must be >= 1, got {dim}")
    return 1 << (dim - 1).bit_length()


def rotation_seed(*, federation: str, attempt: str) -> bytes:
    """The 32-byte seed of a round attempt's ξ: SHA-256(label ‖ federation ‖ "/" ‖ attempt).

    Args:
        federation: the federation name.
        attempt: the round attempt, ``job/round/attempt`` (a task id without its kind).
    """
    return hashlib.sha256(_LABEL + f"{federation}/{attempt}".encode()).digest()


def rotate(x: NDArray[np.floating], *, seed: bytes) -> NDArray[np.float64]:
    """U·x = H·D·x for x padded with zeros to d' coordinates (a new float64 array).

    Raises:
        ValueError: x is empty or the seed is not 32 bytes.
    """
    flat = np.asarray(x, dtype=np.float64).ravel()
    d2 = padded_dim(flat.size)
    out = np.zeros(d2, dtype=np.float64)
    out[: flat.size] = flat
    out *= _signs(seed, d2)
    _hadamard(out)
    return out


def unrotate(y: NDArray[np.floating], *, seed: bytes, dim: int) -> NDArray[np.float64]:
    """Uᵀ·y = D·H·y, truncated to the first ``dim`` coordinates (the unpadded vector).

    Raises:
        ValueError: y's length is not a power of two at least ``dim``, or a bad seed.
    """
    out = np.array(y, dtype=np.float64).ravel()
    if out.size != padded_dim(max(1, dim)) or dim < 1:
        raise ValueError(f"a rotated vector of {dim} coordinates has {padded_dim(max(1, dim))}")
    _hadamard(out)
    out *= _signs(seed, out.size)
    return out[:dim]


def _signs(seed: bytes, n: int) -> NDArray[np.float64]:
    """ξ ∈ {−1, +1}^n: +1 where word i of the PRG stream is even."""
    bits = expand(seed, n) & np.uint32(1)
    return 1.0 - 2.0 * bits.astype(np.float64)


def _hadamard(x: NDArray[np.float64]) -> None:
    """In place, x ← H·x with H the d' × d' Walsh–Hadamard matrix scaled by 1/√d'."""
    n = x.size
    h = 1
    while h < n:
        view = x.reshape(-1, 2, h)
        a = view[:, 0, :].copy()
        view[:, 0, :] += view[:, 1, :]
        view[:, 1, :] *= -1.0
        view[:, 1, :] += a
        h *= 2
    x *= 1.0 / np.sqrt(n)
