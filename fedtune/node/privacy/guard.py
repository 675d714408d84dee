"""The node's side of privacy: its own budget, its ledger, and the plan for this round.

Everything that bounds a node's privacy loss comes from the node: ``max-epsilon`` and
``state-dir`` are read from its ``node_config`` (a deployed node's operator sets them), never
from the server's run config.  Only *simulated* nodes, which have no operator, take their
budget from ``privacy.simulated-max-epsilon``.  Before training, the node computes the ε it
would have after this round; if that exceeds its budget it refuses the round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fedtune.common.config import ConfigError, RunConfig
from fedtune.common.model import cache_root
from fedtune.node.privacy.accounting import default_delta, noise_for_target
from fedtune.node.privacy.dp_sgd import DPPlan, poisson_sample_rate
from fedtune.node.privacy.ledger import PrivacyLedger

DEFAULT_NODE_MAX_EPSILON = 8.0  # a deployed node that sets no budget gets this one


def is_simulated(node_config: Mapping[str, object]) -> bool:
    return "partition-id" in node_config and "data-path" not in node_config


def node_budget(cfg: RunConfig, node_config: Mapping[str, object]) -> float:
    if "max-epsilon" in node_config:
        value = float(node_config["max-epsilon"])  # type: ignore[arg-type]
        if value <= 0:
            raise ConfigError(f"node config max-epsilon must be > 0, got {value}")
        return value
    return cfg.privacy.simulated_max_epsilon if is_simulated(node_config) else DEFAULT_NODE_MAX_EPSILON


def node_state_dir(cfg: RunConfig, node_config: Mapping[str, object], name: str, run_id: int = 0) -> Path:
    """A deployed node's own ``state-dir``; for simulated nodes a folder of this run (absolute)."""
    if "state-dir" in node_config:
        return Path(str(node_config["state-dir"])).expanduser()
    if not is_simulated(node_config):
        raise ConfigError("this node has no 'state-dir' in its node config: the privacy ledger needs one")
    if cfg.privacy.state_dir:
        root = Path(cfg.privacy.state_dir).expanduser()
    elif cfg.output.dir:
        root = Path(cfg.output.dir).expanduser() / "node-state"
    else:  # plain `flwr run .`: the server's timestamped folder is unknown here; key by run id
        root = cache_root() / "simulated-node-state" / f"run-{run_id}"
    return root / name


def resolve_delta(cfg: RunConfig, num_records: int) -> float:
    delta = cfg.privacy.delta or default_delta(num_records)
    if delta >= 1.0 / num_records:
        raise ConfigError(
            f"privacy.delta={delta:g} is not below 1/N = {1.0 / num_records:g} for this node's {num_records} records: "
            "such a δ allows leaking a whole record. Use a smaller delta, or 0 for the default 0.1/N"
        )
    return delta


@dataclass
class RoundPrivacy:
    ledger: PrivacyLedger
    plan: DPPlan
    max_epsilon: float
    epsilon_before: float
    epsilon_after: float

    @property
    def allowed(self) -> bool:
        return self.epsilon_after <= self.max_epsilon


def plan_round(
    cfg: RunConfig, node_config: Mapping[str, object], name: str, fingerprint: str, n: int, run_id: int = 0
) -> RoundPrivacy:
    """Open the ledger and work out σ, q and the ε this round would bring the node to."""
    p = cfg.privacy
    delta = resolve_delta(cfg, n)
    state = node_state_dir(cfg, node_config, name, run_id)
    ledger = PrivacyLedger.open(state, fingerprint, p.accountant, delta, n)
    q = poisson_sample_rate(n, cfg.train.batch_size)
    steps = cfg.train.local_steps
    sigma = p.noise_multiplier or noise_for_target(p.target_epsilon, delta, q, steps * cfg.federation.rounds, p.accountant)
    plan = DPPlan(sigma, q, steps, p.max_grad_norm)
    return RoundPrivacy(ledger, plan, node_budget(cfg, node_config), ledger.epsilon(), ledger.epsilon([plan.segment]))
