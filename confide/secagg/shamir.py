"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Shamir (1979), as used by SecAgg (Bonawitz et al., CCS 2017, Sec. 3.1) to share the self-mask
seed b_u and the mask secret key s_u^SK. A secret s (32 bytes read as a big-endian integer,
s < 2^256) is the constant term of a random polynomial f of degree t - 1 over GF(p); share i is
(x_i, f(x_i)) with distinct non-zero x_i. Any t shares determine f(0) = s by Lagrange
interpolation; any t - 1 are uniformly distributed and independent of s.

Field: p = 2^521 - 1, the Mersenne prime M521. It exceeds 2^256, so every 32-byte secret is a
field element, and if a share is replaced by a random field element the reconstruction lands
in [2^256, p) with probability 1 - 2^-265, which ``reconstruct`` reports as a bad share
instead of returning junk. (This is a sanity check, not integrity: a chosen offset on y
shifts the result by a chosen amount; the server checks a rebuilt s^SK against s^PK.)

Serialized share: x as 8 bytes big-endian, then y as 66 bytes big-endian: ``SHARE_BYTES`` = 74.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confide.errors import MalformedMessage

__all__ = ["PRIME", "SHARE_BYTES", "Share", "reconstruct", "share"]

PRIME = (1 << 521) - 1
"""The field modulus: the Mersenne prime 2^521 - 1."""

SECRET_BYTES = 32
_X_BYTES = 8
_Y_BYTES = 66
SHARE_BYTES = _X_BYTES + _Y_BYTES
"""Length of a serialized share."""

_MAX_X = (1 << (8 * _X_BYTES)) - 1


@dataclass(frozen=True, slots=True)
class Share:
    """One point (x, f(x)) of a sharing polynomial.

    Args:
        x: the evaluation point, 1 <= x < 2^64.
        y: f(x), 0 <= y < PRIME.
    """

    x: int
    y: int

    def to_bytes(self) -> bytes:
        """Serialize to ``SHARE_BYTES`` bytes: x (8, big-endian) then y (66, big-endian)."""
        return self.x.to_bytes(_X_BYTES, "big") + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse a serialized share.

        Raises:
            MalformedMessage: wrong length, x = 0, or y outside the field.
        """
        if len(data) != SHARE_BYTES:
            raise MalformedMessage(f"share must be {SHARE_BYTES} bytes, got {len(data)}")
        x = int.from_bytes(data[:_X_BYTES], "big")
        y = int.from_bytes(data[_X_BYTES:], "big")
        if x == 0 or y >= PRIME:
            raise MalformedMessage("share point outside the field")
        return cls(x=x, y=y)


def _random_field_element(rng: Callable[[int], bytes]) -> int:
    """Draw a uniform element of GF(PRIME) by rejection from 521-bit strings."""
    while True:
        v = int.from_bytes(rng(_Y_BYTES), "big") & PRIME
        if v < PRIME:
            return v


def _share_from_parts(
    secret: bytes, *, threshold: int, xs: Sequence[int], rng: Callable[[int], bytes]
) -> list[Share]:
    """Share ``secret`` with coefficients drawn from ``rng``; see ``share``."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if threshold < 1:
        raise ValueError("threshold must be >= 1")
    if len(xs) < threshold:
        raise ValueError("fewer share points than the threshold")
    if len(set(xs)) != len(xs) or any(not 1 <= x <= _MAX_X for x in xs):
        raise ValueError("share points must be distinct and in [1, 2^64)")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [_random_field_element(rng) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x=x, y=y))
    return shares


def share(secret: bytes, *, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Split a 32-byte secret into one share per point of ``xs``; any ``threshold`` recover it.

    Args:
        secret: 32 bytes.
        threshold: t, the number of shares needed (degree t - 1).
        xs: distinct evaluation points in [1, 2^64), at least t of them.

    Raises:
        ValueError: bad secret length, threshold or points.
    """
    return _share_from_parts(secret, threshold=threshold, xs=xs, rng=os.urandom)


@functools.lru_cache(maxsize=1024)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis values l_i(0) = prod_{j != i} x_j / (x_j - x_i) mod PRIME.

    With P = prod_j x_j and D_i = x_i * prod_{j != i} (x_j - x_i), l_i(0) = P / D_i. The D_i
    are exact products of small integers (no modular work); the t inverses come from one
    modular inversion by Montgomery's batch trick, so the cost is t^2 small multiplications
    plus O(t) field operations instead of t^2 field operations and t inversions.
    """
    dens = [xi * math.prod(xj - xi for xj in xs if xj != xi) % PRIME for xi in xs]
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    numerator = math.prod(xs) % PRIME
    coeffs = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        coeffs[i] = numerator * inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(coeffs)


def reconstruct(shares: Sequence[Share], *, threshold: int) -> bytes:
    """Recover the 32-byte secret from the ``threshold`` shares with the smallest x.

    Args:
        shares: at least ``threshold`` shares with distinct x.
        threshold: t used when sharing.

    Raises:
        MalformedMessage: fewer than t shares, duplicate points, or shares that interpolate to
            a value that is not a 32-byte secret (inconsistent or corrupted shares).
    """
    if threshold < 1:
        raise ValueError("threshold must be >= 1")
    by_x = {s.x: s for s in shares}
    if len(by_x) != len(shares):
        raise MalformedMessage("duplicate share points")
    if len(by_x) < threshold:
        raise MalformedMessage(f"need {threshold} shares, got {len(by_x)}")
    chosen = sorted(by_x)[:threshold]
    basis = _lagrange_at_zero(tuple(chosen))
    value = sum(c * by_x[x].y for c, x in zip(basis, chosen, strict=True)) % PRIME
    if value >> (8 * SECRET_BYTES):
        raise MalformedMessage("shares are inconsistent")
    return value.to_bytes(SECRET_BYTES, "big")
