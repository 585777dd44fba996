# Math notation (σ, γ, ∝, ⌊⌋) in docstrings cites the paper's algorithms as written.
# ruff: noqa: RUF001, RUF002, RUF003
"""Exact, vectorised sampling from the discrete Gaussian N_Z(0, σ²) for integer σ.

N_Z(0, σ²) is the distribution on the integers with P[X = x] = exp(−x²/(2σ²)) / Z_σ,
Z_σ = Σ_{y ∈ Z} exp(−y²/(2σ²)) (Canonne, Kamath, Steinke 2020, "The Discrete Gaussian for
Differential Privacy", Definition 1). It is what each site adds in the distributed discrete
Gaussian mechanism (``confide.dp.ddg``).

The sampler is CKS 2020, Section 5, with integer arithmetic only, so it is exact: given
uniform random integers, every output has exactly the probability above (no floating point
touches a probability; Mironov 2012's attack on floating-point noise has nothing to read).

- Algorithm 1, Bernoulli(exp(−γ)) for γ = a/b ∈ [0, 1] (von Neumann): K ← 1; repeat
  A ← Bernoulli(γ/K), i.e. uniform{0, …, bK − 1} < a; if A = 0 stop, else K ← K + 1. Output
  1 iff K is odd. For γ > 1: the product of ⌊γ⌋ draws of Bernoulli(exp(−1)) and one of
  Bernoulli(exp(−(γ − ⌊γ⌋))) (CKS 2020, Section 5.1).
- Algorithm 2, discrete Laplace Lap_Z(t), P[Y = y] ∝ exp(−|y|/t), integer t >= 1:
  U ← uniform{0, …, t − 1}; D ← Bernoulli(exp(−U/t)), restart if D = 0; V ← the number of
  successes of Bernoulli(exp(−1)) before its first failure; X ← U + t·V;
  B ← Bernoulli(1/2), restart if B = 1 and X = 0; output (1 − 2B)·X.
- Algorithm 3, discrete Gaussian: Y ← Lap_Z(t); C ← Bernoulli(exp(−(|Y| − σ²/t)²/(2σ²)));
  output Y if C = 1, else restart. CKS take t = ⌊σ⌋ + 1, but the proof holds for any t > 0
  (the product of the two probabilities is ∝ exp(−y²/(2σ²)) for every t); with integer σ
  and t = σ, as TF Privacy's vectorised version does, the acceptance exponent is the ratio
  of integers (|Y| − σ)² / (2σ²), and the acceptance rate stays near 0.7.

Vectorisation: every loop of the algorithms runs over numpy arrays of the samples still
undecided, with ``Generator.integers`` (exact, unbiased bounded integers) as the only source
of randomness, so each array element follows the scalar algorithm exactly. All integers fit
in int64: σ <= ``MAX_SIGMA`` = 2^26 bounds 2σ²·K below 2^63 for the von Neumann counter K
< 2^9 (reaching K = 2^9 has probability below 1/511!, and raises rather than overflow);
the rare |Y| whose square would overflow (P < e^−45 per draw) takes an exact Python-int path.

``discrete_gaussian`` draws from a Philox generator keyed with 256 bits of ``os.urandom``
(``confide.dp.update.system_rng``); ``_discrete_gaussian_from_parts`` takes the generator,
for test vectors.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from confide.dp.update import system_rng
from confide.errors import InternalError

__all__ = ["MAX_SIGMA", "discrete_gaussian"]

MAX_SIGMA = 1 << 26
"""The largest σ sampled: keeps 2σ²·K (K < 2^9, the von Neumann counter) below 2^63."""

_MAX_K = 1 << 9
_SQUARE_LIMIT = 3_037_000_499
"""The largest |v| with v² < 2^63 (⌊√(2^63 − 1)⌋)."""

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


def discrete_gaussian(*, sigma: int, size: int) -> Ints:
    """``size`` independent draws from N_Z(0, σ²), with randomness from the OS.

    Args:
        sigma: σ, an integer in [1, 2^26] (0 gives zeros: no noise).
        size: how many draws, >= 0.

    Raises:
        ValueError: σ or size out of range.
    """
    return _discrete_gaussian_from_parts(sigma=sigma, size=size, rng=system_rng())


def _discrete_gaussian_from_parts(*, sigma: int, size: int, rng: np.random.Generator) -> Ints:
    """``discrete_gaussian`` with the generator given (CKS 2020, Algorithm 3)."""
    if isinstance(sigma, bool) or not isinstance(sigma, int | np.integer):
        raise ValueError(f"sigma must be an integer, got {sigma!r}")
    if not 0 <= sigma <= MAX_SIGMA:
        raise ValueError(f"sigma must be in [0, {MAX_SIGMA}], got {sigma}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0:
        return out
    s = int(sigma)
    den = 2 * s * s
    todo = np.arange(size)
    while todo.size:
        y = _discrete_laplace(s, todo.size, rng)
        diff = np.abs(y) - s
        big = np.abs(diff) > _SQUARE_LIMIT
        whole = np.zeros(y.size, dtype=np.int64)
        frac = np.zeros(y.size, dtype=np.int64)
        small = ~big
        sq = diff[small] * diff[small]
        whole[small], frac[small] = np.divmod(sq, den)
        accept = np.zeros(y.size, dtype=np.bool_)
        accept[small] = _bernoulli_exp(whole[small], frac[small], den, rng)
        for i in np.flatnonzero(big):  # exact Python-int path; never seen in practice
            w, f = divmod(int(diff[i]) ** 2, den)
            accept[i] = _bernoulli_exp_scalar(w, f, den, rng)
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out


def _discrete_laplace(t: int, size: int, rng: np.random.Generator) -> Ints:
    """``size`` draws from Lap_Z(t), P[Y = y] ∝ exp(−|y|/t) (CKS 2020, Algorithm 2)."""
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        m = todo.size
        u = rng.integers(0, t, size=m, dtype=np.int64)
        d = _bernoulli_exp_fraction(u, t, rng)
        v = np.zeros(m, dtype=np.int64)
        going = d.copy()
        while going.any():
            idx = np.flatnonzero(going)
            success = _bernoulli_exp_fraction(np.ones(idx.size, dtype=np.int64), 1, rng)
            v[idx[success]] += 1
            going[idx[~success]] = False
        idx = np.flatnonzero(d)
        x = u[idx] + t * v[idx]
        negative = rng.integers(0, 2, size=idx.size, dtype=np.int64) < 1  # B ← Bernoulli(1/2)
        keep = d.copy()
        keep[idx[negative & (x == 0)]] = False
        y = np.zeros(m, dtype=np.int64)
        y[idx] = np.where(negative, -x, x)
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


def _bernoulli_exp(whole: Ints, frac: Ints, den: int, rng: np.random.Generator) -> Bools:
    """Bernoulli(exp(−(w + f/den))) per element: ⌊γ⌋ = w draws of Bernoulli(exp(−1)) and one
    of Bernoulli(exp(−f/den)), all of which must succeed (CKS 2020, Section 5.1)."""
    out = _bernoulli_exp_fraction(frac, den, rng)
    done = np.zeros(whole.size, dtype=np.int64)
    going = out & (whole > 0)
    while going.any():
        idx = np.flatnonzero(going)
        success = _bernoulli_exp_fraction(np.ones(idx.size, dtype=np.int64), 1, rng)
        out[idx[~success]] = False
        done[idx] += 1
        going[idx] = success & (done[idx] < whole[idx])
    return out


def _bernoulli_exp_fraction(num: Ints, den: int, rng: np.random.Generator) -> Bools:
    """Bernoulli(exp(−num/den)) per element for 0 <= num <= den (CKS 2020, Algorithm 1).

    Every element still undecided at step K has the same K (they all succeeded K − 1 times),
    so each step is one draw of uniform{0, …, den·K − 1} per undecided element.

    Raises:
        InternalError: the von Neumann counter reached 2^9 (probability < 1/511!).
    """
    out = np.zeros(num.size, dtype=np.bool_)
    idx = np.arange(num.size)
    k = 1
    while idx.size:
        if k >= _MAX_K:
            raise InternalError("discrete Gaussian sampler: von Neumann counter overflow")
        success = rng.integers(0, den * k, size=idx.size, dtype=np.int64) < num[idx]
        out[idx[~success]] = k % 2 == 1
        idx = idx[success]
        k += 1
    return out


def _bernoulli_exp_scalar(whole: int, frac: int, den: int, rng: np.random.Generator) -> bool:
    """One Bernoulli(exp(−(whole + frac/den))) with Python ints (the overflow path)."""
    one = np.ones(1, dtype=np.int64)
    if not bool(_bernoulli_exp_fraction(np.array([frac], dtype=np.int64), den, rng)[0]):
        return False
    return all(bool(_bernoulli_exp_fraction(one, 1, rng)[0]) for _ in range(whole))
