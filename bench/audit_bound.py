# Math notation (ε, δ, β, α) in docstrings cites the paper's formulas as written.
# ruff: noqa: RUF003
"""The ε lower bound of a one-run privacy audit (Steinke, Nasr, Jagielski 2023).

"Privacy Auditing with One (1) Training Run" (NeurIPS 2023, arXiv:2305.08846). Symbols:

- m: canaries, each included in the input independently with probability 1/2 (S_i = ±1);
- r: guesses the auditor makes after seeing the output (T_i = ±1; the other m - r abstain);
- v: correct guesses, W = #{i : T_i = S_i};
- (ε, δ): the guarantee under test, with respect to adding or removing one canary.

Their main theorem (stated in Section 3, proved in Section 5; for δ = 0 it says W is
stochastically dominated by Binomial(r, p)): if the mechanism is (ε, δ)-DP then, for every v,

    P[W >= v] <= f(v) + 2·m·δ · max_{i=1..m} (f(v - i) - f(v)) / i,
    f(u) = P[Binomial(r, p) >= u],   p = e^ε / (1 + e^ε),

(the max is reached at some i <= v: beyond it f(v - i) = 1, so the numerator stays put),

i.e. an (ε, δ)-DP mechanism lets the auditor do little better than randomized response with
accuracy p on each guess. The right-hand side is the p-value of observing v correct guesses
under the null hypothesis "the mechanism is (ε, δ)-DP" (``p_value``, the same computation as
the ``p_value_DP_audit`` listing of the paper's appendix). The empirical lower bound at
confidence 1 - β is the largest ε whose null hypothesis is rejected at level β
(``epsilon_lower_bound``): with probability at least 1 - β over the canaries' coin flips and
the mechanism's noise, the true ε is at least that large.

Guessing (``audit``): the auditor ranks canaries by a score, guesses the top k as in and the
bottom k as out (r = 2k) and abstains on the rest. The best k is not known in advance, so a
few k are tried and each is tested at level β / (number of k) (Bonferroni), which keeps the
reported maximum a valid 1 - β lower bound; picking the best k without that correction would
overstate it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats  # type: ignore[import-untyped]
from scipy.special import expit  # type: ignore[import-untyped]

__all__ = ["AuditOutcome", "audit", "epsilon_lower_bound", "guess_counts", "p_value"]

DEFAULT_GUESS_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.9)
"""k as fractions of m/2: a few confident guesses (noisy outputs) up to nearly every canary
(outputs that separate in from out). Not 1.0: about m/2 ± √m/2 canaries are in, so guessing
exactly m/2 of each would be wrong on the difference even with a perfect score."""

_EPS_STEP = 0.05
_EPS_MAX = 50.0


@dataclass(frozen=True)
class AuditOutcome:
    """The result of one audit.

    Args:
        epsilon: the empirical ε lower bound at the stated confidence (0 when nothing is shown).
        canaries: m.
        guesses: r for the k that gave the bound.
        correct: v for that k.
        confidence: 1 - β, for all the k tried together.
    """

    epsilon: float
    canaries: int
    guesses: int
    correct: int
    confidence: float


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[W >= v] bounded under the null hypothesis "(ε, δ)-DP" (see the module docstring).

    Args:
        canaries: m >= 1.
        guesses: r in [0, m].
        correct: v in [0, r].
        epsilon: ε >= 0 of the null hypothesis.
        delta: δ in [0, 1] of the null hypothesis.

    Raises:
        ValueError: a parameter is out of range.
    """
    m, r, v = canaries, guesses, correct
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    p = float(expit(epsilon))
    tail = float(stats.binom.sf(v - 1, r, p))  # f(v) = P[Bin(r, p) >= v]
    if delta == 0.0 or v == 0:
        return min(1.0, tail)
    i = np.arange(1, v + 1)
    # f(v - i) - f(v) = P[v - i <= Bin(r, p) < v]
    between = stats.binom.sf(v - i - 1, r, p) - tail
    alpha = float(np.max(between / i))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, significance: float
) -> float:
    """The largest ε whose (ε, δ)-DP hypothesis v correct guesses of r reject at level β.

    ε is scanned upward from 0 in steps of 0.05 to the first ε whose p-value exceeds β, then
    refined by bisection inside that step. Taking the first crossing (not the last) keeps the
    bound valid even where the p-value is not monotone in ε: every ε below the result is
    rejected too, so the result exceeds the true ε only when the true ε's hypothesis was
    falsely rejected, which has probability at most β.

    Args:
        canaries: m.
        guesses: r.
        correct: v.
        delta: δ of the guarantee under test (the accounted δ).
        significance: β in (0, 1), e.g. 0.05 for 95% confidence.

    Raises:
        ValueError: a parameter is out of range.
    """
    if not 0.0 < significance < 1.0:
        raise ValueError(f"significance must be in (0, 1), got {significance}")

    def rejected(eps: float) -> bool:
        pv = p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta)
        return pv <= significance

    if not rejected(0.0):
        return 0.0
    lo = 0.0
    while lo < _EPS_MAX and rejected(lo + _EPS_STEP):
        lo += _EPS_STEP
    hi = lo + _EPS_STEP
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


def guess_counts(
    scores: npt.NDArray[np.float64], included: npt.NDArray[np.bool_], *, k: int
) -> tuple[int, int]:
    """(r, v) when the k highest scores are guessed in and the k lowest out.

    Ties are broken by canary index (a stable sort), which does not depend on who is in.

    Raises:
        ValueError: 2k exceeds the number of canaries, or the arrays differ in length.
    """
    m = int(scores.shape[0])
    if included.shape != scores.shape:
        raise ValueError("scores and included must have the same length")
    if not 0 <= 2 * k <= m:
        raise ValueError(f"need 0 <= 2k <= m, got k={k}, m={m}")
    order = np.argsort(scores, kind="stable")
    low, high = order[:k], order[m - k :]
    correct = int(np.count_nonzero(included[high])) + int(np.count_nonzero(~included[low]))
    return 2 * k, correct


def audit(
    scores: Sequence[float] | npt.NDArray[np.float64],
    included: Sequence[bool] | npt.NDArray[np.bool_],
    *,
    delta: float,
    confidence: float = 0.95,
    fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
) -> AuditOutcome:
    """The ε lower bound from canary scores (higher score = more likely in).

    Each k = max(1, floor(f · m / 2)) for f in ``fractions`` is tested at level
    (1 - confidence) / len(fractions); the largest bound is returned (Bonferroni).

    Args:
        scores: one score per canary.
        included: whether each canary was in the input (the auditor's secret coin flips).
        delta: δ of the guarantee under test.
        confidence: 1 - β for the whole audit.
        fractions: the k to try, as fractions in (0, 1] of m/2.

    Raises:
        ValueError: fewer than 2 canaries, mismatched lengths, or a bad fraction.
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=np.bool_)
    m = int(s.shape[0])
    if m < 2:
        raise ValueError(f"need at least 2 canaries, got {m}")
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {fractions}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    beta = (1.0 - confidence) / len(fractions)
    best = AuditOutcome(epsilon=0.0, canaries=m, guesses=0, correct=0, confidence=confidence)
    for k in sorted({max(1, int(f * m / 2)) for f in fractions}):
        r, v = guess_counts(s, inc, k=k)
        eps = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, significance=beta)
        if eps > best.epsilon or best.guesses == 0:
            best = AuditOutcome(
                epsilon=eps, canaries=m, guesses=r, correct=v, confidence=confidence
            )
    return best
