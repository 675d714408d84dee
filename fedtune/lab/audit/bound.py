"""The one-run privacy audit of Steinke, Nasr & Jagielski (2023, "Privacy Auditing with One (1)
Training Run", arXiv:2305.08846): from guesses about which canaries were trained on to a lower
bound on ε that holds with a chosen confidence.

Each of ``m`` canaries is inserted independently with probability ½.  The auditor guesses
"inserted" for the ``k+`` highest scores and "not inserted" for the ``k-`` lowest, abstaining on
the rest; ``r = k+ + k-`` guesses, ``v`` of them correct.  Under (ε, δ)-DP, ``v`` is dominated by
Binomial(r, e^ε / (1 + e^ε)) up to a δ term (their Theorem 5.2):

    p = β + α · δ · 2m,   β = P[W ≥ v],   α = max_{1 ≤ i ≤ v} (P[W ≥ v − i] − β) / i,   W ~ Bin(r, q)

An (ε, δ) claim is refuted when p ≤ the significance level; ε̂ is the largest refuted ε (0 when
none is).  Choosing the guess counts after seeing the scores is paid for with a Bonferroni
correction over a candidate list fixed in advance (or one count given up front: no correction).
Pure functions: no model, no files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom

GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # of m: the candidate guess counts, fixed in advance
EPS_CEILING = 1e3  # no audit of a few thousand canaries can refute anything near this


@dataclass(frozen=True)
class Guesses:
    top: int  # k+: the highest scores, guessed "inserted"
    bottom: int  # k-: the lowest scores, guessed "not inserted"

    @property
    def total(self) -> int:
        return self.top + self.bottom


@dataclass(frozen=True)
class AuditBound:
    epsilon: float  # ε̂: the largest ε refuted at `confidence` (0 = none)
    confidence: float
    delta: float
    canaries: int  # m
    guesses: Guesses  # the candidate that gave ε̂ (the first one if none refuted anything)
    correct: int
    candidates: int  # how many guess counts were tried (the Bonferroni factor)


def p_value(m: int, guesses: int, correct: int, eps: float, delta: float) -> float:
    """P-value of ``correct`` right out of ``guesses`` under (ε, δ)-DP with ``m`` canaries."""
    q = float(expit(eps))
    beta = float(binom.sf(correct - 1, guesses, q))
    if delta == 0 or correct == 0:
        return beta
    i = np.arange(1, correct + 1)
    alpha = max(float(np.max((binom.sf(correct - i - 1, guesses, q) - beta) / i)), 0.0)
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, guesses: int, correct: int, delta: float, significance: float) -> float:
    """The largest ε whose (ε, δ)-DP claim ``correct`` out of ``guesses`` refutes at ``significance``; 0 if none."""
    def margin(eps: float) -> float:  # > 0 while the claim is refuted
        return significance - p_value(m, guesses, correct, eps, delta)

    if guesses == 0 or margin(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while margin(hi) > 0:
        if hi >= EPS_CEILING:
            return EPS_CEILING
        lo, hi = hi, hi * 2
    return float(brentq(margin, lo, hi, xtol=1e-6))


def candidate_guesses(m: int, fixed: int | None = None) -> list[Guesses]:
    """The guess counts to try: ``fixed`` highest and ``fixed`` lowest when given, else one-sided (k, 0) and
    two-sided (k, k) for k at each of GUESS_FRACTIONS of m."""
    if fixed is not None:
        if not 1 <= 2 * fixed <= m:
            raise ValueError(f"--guesses {fixed}: guess at least 1 and at most half of the {m} canaries each way")
        return [Guesses(fixed, fixed)]
    ks = sorted({max(1, round(f * m)) for f in GUESS_FRACTIONS})
    one_sided = [Guesses(k, 0) for k in ks]
    two_sided = [Guesses(k, k) for k in ks if 2 * k <= m]
    return list(dict.fromkeys(one_sided + two_sided))


def can_refute(m: int, delta: float, confidence: float = 0.95, fixed: int | None = None) -> bool:
    """Could *any* outcome refute even ε = 0? Not when the δ term α·δ·2m alone exceeds the corrected
    significance for every candidate, even with every guess right: then the audit is blind whatever it sees."""
    candidates = candidate_guesses(m, fixed)
    significance = (1 - confidence) / len(candidates)
    return any(p_value(m, g.total, g.total, 0.0, delta) <= significance for g in candidates)


def correct_guesses(scores: Sequence[float], inserted: Sequence[bool], g: Guesses) -> int:
    """Right guesses among the ``g.top`` highest (inserted?) and ``g.bottom`` lowest (not inserted?) scores.
    Ties are broken by canary order, which the coin flips do not influence."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    truth = np.asarray(inserted, dtype=bool)[order]
    return int(truth[:g.top].sum() + (~truth[len(truth) - g.bottom:]).sum())


def audit_bound(scores: Sequence[float], inserted: Sequence[bool], delta: float, confidence: float = 0.95,
                fixed: int | None = None) -> AuditBound:
    """ε̂ at ``confidence`` from each canary's score (higher = more likely trained on) and its coin flip."""
    m = len(scores)
    if m != len(inserted) or m < 2:
        raise ValueError(f"need one score per canary and at least 2 canaries (got {m} scores, {len(inserted)} flips)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    candidates = candidate_guesses(m, fixed)
    significance = (1 - confidence) / len(candidates)
    best: tuple[float, Guesses, int] | None = None
    for g in candidates:
        v = correct_guesses(scores, inserted, g)
        eps = epsilon_lower_bound(m, g.total, v, delta, significance)
        if best is None or eps > best[0]:
            best = (eps, g, v)
    assert best is not None
    return AuditBound(best[0], confidence, delta, m, best[1], best[2], len(candidates))
