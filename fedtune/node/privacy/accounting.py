"""Privacy accounting with Opacus's accountants (RDP by default, PRV available).

A node's whole history is a list of ``(noise_multiplier, sample_rate, steps)`` segments - the
exact state of Opacus's accountants - so ε can be recomputed from scratch at any time, for any δ.
"""

from __future__ import annotations

import functools

import contextlib
import warnings
from typing import Iterable, Sequence

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = ("rdp", "prv")
Segment = tuple[float, float, int]


def accountant_for(name: str, history: Iterable[Segment] = ()):
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; use one of {', '.join(ACCOUNTANTS)}")
    acc = create_accountant(name)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return acc


@contextlib.contextmanager
def _quiet_orders():
    """Opacus hints "optimal order is the largest alpha" for short plans. ε is still a valid
    upper bound, and keeping Opacus's default orders keeps it identical to what Opacus reports."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


def epsilon(history: Sequence[Segment], delta: float, name: str = "rdp") -> float:
    """ε spent by ``history`` at ``delta`` (0 for an empty history)."""
    if not history:
        return 0.0
    with _quiet_orders():
        return float(accountant_for(name, history).get_epsilon(delta=delta))


@functools.lru_cache(maxsize=64)  # a pure function of its arguments; the search takes seconds on a CPU
def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int, name: str = "rdp") -> float:
    """Smallest σ such that ``steps`` steps at ``sample_rate`` spend at most ``target_epsilon``."""
    with _quiet_orders():
        return float(get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant=name,
        ))


SIGMA_CEILING = 1e4  # noise beyond this makes a round useless; a node declines instead


@functools.lru_cache(maxsize=256)  # a pure function of its (hashable) arguments
def paced_noise(history: tuple[Segment, ...], goal_epsilon: float, delta: float, sample_rate: float,
                planned_steps: int, name: str = "rdp", rel_tol: float = 1e-3) -> float | None:
    """Smallest σ (within ``rel_tol``) such that ``history`` followed by ``planned_steps`` steps at
    (σ, ``sample_rate``) spends at most ``goal_epsilon``; None if not even σ = SIGMA_CEILING fits.

    Budget pacing: the node plans each round from what it has *left* over the rounds still
    planned, so a longer run gets more noise per round and a retried round never overspends."""
    def spent(sigma: float) -> float:
        return epsilon(list(history) + [(sigma, sample_rate, planned_steps)], delta, name)

    if spent(SIGMA_CEILING) > goal_epsilon:
        return None
    hi = 1.0
    while spent(hi) > goal_epsilon:
        hi *= 2.0
    lo = hi / 2.0
    while spent(lo) <= goal_epsilon and lo > 1e-3:
        hi, lo = lo, lo / 2.0
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2.0
        lo, hi = (lo, mid) if spent(mid) <= goal_epsilon else (mid, hi)
    return hi


def default_delta(num_records: int) -> float:
    """δ well below 1/N (the usual requirement): 0.1 / N."""
    return 0.1 / num_records
