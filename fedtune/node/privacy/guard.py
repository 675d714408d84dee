"""The node's side of privacy for one round: its budget, its ledger, and the plan (σ, q, steps).

Every bound comes from the node's policy (``node/policy.py``: its own node config), never from
the coordinator's run config: ``max-epsilon`` caps the ledger's total, ``max-delta`` caps δ.
σ is *paced*: chosen from the budget still left over the rounds the node still expects to train
in, so a run extended with more rounds trains on with more noise, and a retried round never
overspends.  With partial participation a node trains in about ``fraction-train`` of the rounds,
so it plans over that many, not over every round: that is the run config's word, and a
coordinator that samples the node more often than it said only makes it reach its budget sooner,
where its own ledger stops it (never beyond).  Before
training the node computes the ε it would have after this round; beyond its budget it declines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedtune.common.config import RunConfig
from fedtune.node.policy import NodePolicy
from fedtune.node.privacy.accounting import paced_noise
from fedtune.node.privacy.dp_sgd import DPPlan, poisson_sample_rate
from fedtune.node.privacy.ledger import PrivacyLedger


@dataclass
class RoundPrivacy:
    ledger: PrivacyLedger
    plan: DPPlan
    delta: float  # the δ this round's ε is stated at (the node's, or a smaller one the run asked for)
    max_epsilon: float
    epsilon_before: float
    epsilon_after: float
    units_per_batch: int  # the expected Poisson batch (records, or groups) q was computed for

    @property
    def allowed(self) -> bool:
        return self.epsilon_after <= self.max_epsilon


def expected_units_per_batch(batch_size: int, num_records: int, num_units: int) -> int:
    """Group-level DP samples groups: as many per batch as give ``batch_size`` records on average."""
    return max(1, round(batch_size * num_units / num_records))


def expected_rounds(rounds_left: int, fraction_train: float) -> int:
    """Rounds a node sampled now expects to train in, this one included: it certainly trains now,
    and in each later round with probability ``fraction_train`` (rounded up: a little more noise,
    never a plan that runs out early on average)."""
    return max(1, math.ceil(1 + (rounds_left - 1) * fraction_train - 1e-9))


def plan_round(cfg: RunConfig, policy: NodePolicy, ledger: PrivacyLedger, units: int, records: int,
               rnd: int) -> RoundPrivacy:
    """σ, q and the ε this round would bring the node's ledger to (nothing is spent here)."""
    p = cfg.privacy
    delta = min(policy.delta_for(p.delta, units), ledger.delta)
    batch = expected_units_per_batch(cfg.train.batch_size, records, units)
    q = poisson_sample_rate(units, batch)
    steps = cfg.train.local_steps
    before = ledger.epsilon(delta=delta)
    if p.noise_multiplier:  # the run fixes σ; the budget check below still holds the line
        sigma: float | None = p.noise_multiplier
    else:  # the ledger may reach min(target, budget) by the run's last planned round
        goal = min(p.target_epsilon, policy.max_epsilon)
        rounds = expected_rounds(cfg.federation.rounds - rnd + 1, cfg.federation.fraction_train)
        sigma = paced_noise(tuple(ledger.history), goal, delta, q, steps * rounds,
                            ledger.accountant)
    if sigma is None:  # nothing left to spend: not even the largest σ fits
        plan = DPPlan(math.inf, q, steps, p.max_grad_norm)
        return RoundPrivacy(ledger, plan, delta, policy.max_epsilon, before, math.inf, batch)
    plan = DPPlan(sigma, q, steps, p.max_grad_norm)
    return RoundPrivacy(ledger, plan, delta, policy.max_epsilon, before, ledger.epsilon([plan.segment], delta), batch)
