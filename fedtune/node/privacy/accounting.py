"""Privacy accounting with Opacus's accountants (PRV by default: tight; RDP available).

A node's whole history is a list of ``(noise_multiplier, sample_rate, steps)`` segments - the
exact state of Opacus's accountants - so ε can be recomputed from scratch at any time, for any δ.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Iterable, Sequence

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from scipy.optimize import brentq

ACCOUNTANTS = ("rdp", "prv")
# PRV (Gopi et al. 2021) returns an upper bound on ε within 0.01 of the exact one; RDP over-reports
# (at the quickstart's σ for which RDP says 8.0, PLD/PRV say about 6.3): 6-10% less noise at the same ε.
DEFAULT_ACCOUNTANT = "prv"
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


def epsilon(history: Sequence[Segment], delta: float, name: str = DEFAULT_ACCOUNTANT) -> float:
    """ε spent by ``history`` at ``delta`` (0 for an empty history)."""
    if not history:
        return 0.0
    return _epsilon(tuple((float(s), float(q), int(n)) for s, q, n in history), delta, name)


@functools.lru_cache(maxsize=1024)  # pure; a node asks for the same history's ε at the start and end of a round
def _epsilon(history: tuple[Segment, ...], delta: float, name: str) -> float:
    with _quiet_orders():
        return float(accountant_for(name, history).get_epsilon(delta=delta))


@functools.lru_cache(maxsize=64)  # a pure function of its arguments; the search takes seconds on a CPU
def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                     name: str = DEFAULT_ACCOUNTANT) -> float:
    """Smallest σ such that ``steps`` steps at ``sample_rate`` spend at most ``target_epsilon``."""
    with _quiet_orders():
        return float(get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant=name,
        ))


SIGMA_CEILING = 1e4  # noise beyond this makes a round useless; a node declines instead


@functools.lru_cache(maxsize=256)  # a pure function of its (hashable) arguments
def paced_noise(history: tuple[Segment, ...], goal_epsilon: float, delta: float, sample_rate: float,
                planned_steps: int, name: str = DEFAULT_ACCOUNTANT, rel_tol: float = 1e-3) -> float | None:
    """Smallest σ (within ``rel_tol``) such that ``history`` followed by ``planned_steps`` steps at
    (σ, ``sample_rate``) spends at most ``goal_epsilon``; None if not even σ = SIGMA_CEILING fits.

    Budget pacing: the node plans each round from what it has *left* over the rounds still
    planned, so a longer run gets more noise per round and a retried round never overspends.

    Each ε costs an accountant run (PRV: about a second on a CPU, more as the history grows), so the
    search is frugal: it brackets the answer outwards from a guess (the last σ spent, which after a
    round that went as planned is the answer again: two runs) and finishes with Brent's method on
    log σ, where ε falls smoothly.  The σ returned never spends more than the goal."""
    def over(log_sigma: float) -> float:  # > 0 while σ = e^log_sigma spends more than the goal
        spent = epsilon(history + ((math.exp(log_sigma), sample_rate, planned_steps),), delta, name)
        return math.log(max(spent, 1e-300)) - math.log(goal_epsilon)

    bracket = _bracket(over, math.log(history[-1][0]) if history else 0.0, rel_tol)
    if bracket is None:
        return None
    lo, hi = bracket
    if hi - lo > rel_tol * (1 + 1e-6):  # wider than the tolerance: narrow it down
        hi = brentq(over, lo, hi, xtol=rel_tol / 4) + rel_tol / 2
        while over(hi) > 0:  # Brent's root may sit a hair below the boundary
            hi += rel_tol / 2
    return math.exp(hi)


def _bracket(over, guess: float, first_step: float, growth: float = 8.0,
             max_step: float = math.log(2.0)) -> tuple[float, float] | None:
    """(lo, hi) in log σ with over(lo) > 0 >= over(hi), searched outwards from ``guess`` in steps that grow
    from ``first_step`` up to a factor of 2 in σ; None if even SIGMA_CEILING spends too much, (floor, floor)
    if σ = 1e-3 is enough.  Never more than a halving per step: PRV's discretisation grows with ε, and at a
    σ far below the answer one accountant run needs gigabytes (a ×3,000 jump once took 21 GB)."""
    ceiling, floor = math.log(SIGMA_CEILING), math.log(1e-3)
    x = min(max(guess, floor), ceiling)
    up, step = over(x) > 0, first_step
    if up and over(ceiling) > 0:  # a spent budget: say so in one run, not after a dozen doublings
        return None
    while True:
        nxt = min(x + step, ceiling) if up else max(x - step, floor)
        if up and over(nxt) <= 0:  # reached by the ceiling at the latest: over(ceiling) <= 0 was checked
            return x, nxt
        if not up and over(nxt) > 0:
            return nxt, x
        if not up and nxt <= floor:
            return nxt, nxt
        x, step = nxt, min(step * growth, max_step)


def default_delta(num_records: int) -> float:
    """δ well below 1/N (the usual requirement): 0.1 / N."""
    return 0.1 / num_records
