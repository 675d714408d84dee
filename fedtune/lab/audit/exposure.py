"""Secret-Sharer exposure (Carlini et al., USENIX Security 2019) of the inserted canaries.

A canary's exposure is log2|R| − log2 rank: its rank by score among the candidates R (itself and
every canary that was *not* trained on, random secrets of the same shape).  Rank 1 of |R| gives
the maximum, log2|R| bits; a model that learnt nothing about a canary ranks it uniformly, and the
expected exposure is then ``chance_exposure(|R|)`` (≈ 1.44 bits for a large R).  Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Exposure:
    mean: float  # over the inserted canaries, in bits
    max: float
    chance: float  # the mean a model that learnt nothing would show
    ceiling: float  # log2 |R|: rank 1
    candidates: int  # |R|


def exposures(scores: Sequence[float], inserted: Sequence[bool]) -> np.ndarray:
    """Each inserted canary's exposure against the non-inserted ones (ties count against it)."""
    s = np.asarray(scores, dtype=float)
    ins = np.asarray(inserted, dtype=bool)
    out = np.sort(s[~ins])
    ranks = 1 + len(out) - np.searchsorted(out, s[ins], side="left")  # 1 + #(out scores >= this one)
    return np.log2(len(out) + 1) - np.log2(ranks)


def chance_exposure(candidates: int) -> float:
    """E[log2 |R| − log2 rank] for a rank uniform on 1..|R|."""
    ranks = np.arange(1, candidates + 1)
    return float(np.mean(np.log2(candidates) - np.log2(ranks)))


def summarize(scores: Sequence[float], inserted: Sequence[bool]) -> Exposure:
    e = exposures(scores, inserted)
    n = int(len(scores) - np.count_nonzero(inserted)) + 1
    if e.size == 0:
        return Exposure(0.0, 0.0, chance_exposure(n), float(np.log2(n)), n)
    return Exposure(float(e.mean()), float(e.max()), chance_exposure(n), float(np.log2(n)), n)
