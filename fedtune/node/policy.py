"""The node's privacy policy: what protects its records, set only by the node's operator.

A deployed node reads its policy from its own node config (``flower-supernode --node-config``,
``clients/node-config.toml``).  The coordinator's run config is a *request*: it may ask for more
privacy (DP on, a smaller δ, group-level units), never less.  ``effective`` combines the two
and is the only place a node-side privacy setting is decided.

Simulated nodes have no operator of their own: the researcher running the simulation is both
coordinator and operator, so their policy is taken from the run config (as documented).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fedtune.common.config import ConfigError, RunConfig
from fedtune.common.files import cache_root
from fedtune.node.node_config_keys import (ACCOUNTANTS, DEFAULT_MIN_PEERS, DEFAULT_MIN_THRESHOLD, NODE_KEYS, UNITS,
                                          unknown_key_problem)

STATE_LOCK_TIMEOUT = 3600.0  # seconds a node waits for another run's work in its state dir


class PolicyError(ConfigError):
    """The node config is wrong; the message names the node-config key and how to fix it."""


class PolicyRefusal(PermissionError):
    """The run asks for something this node's policy does not allow; the node declines the round."""


def is_simulated(node_config: Mapping[str, object]) -> bool:
    return "partition-id" in node_config and "data-path" not in node_config


def node_name(node_config: Mapping[str, object]) -> str:
    """The name a node reports: its node config's ``name`` (else its data file's stem), or
    ``hospital-<partition>`` in a simulation."""
    if "data-path" in node_config:
        return str(node_config.get("name", Path(str(node_config["data-path"])).stem))
    return f"hospital-{node_config.get('partition-id', '?')}"


@dataclass(frozen=True)
class NodePolicy:
    simulated: bool
    require_dp: bool  # refuse any run with DP off
    require_secagg: bool  # refuse to send an update in the clear
    max_epsilon: float  # the node's total budget over every run on its records
    max_delta: float | None  # ceiling on δ; None = 0.1 / N
    min_eval_records: int  # refuse to evaluate on fewer held-out records
    eval_fraction: float  # the node's own train / held-out split ...
    split_seed: int  # ... and its seed (never the run's)
    release_label_counts: bool  # per-label tp/fp/fn in evaluation replies (a held-out label histogram)
    unit: str  # "record" or "group": the unit ε protects (at least)
    group_column: str  # the field naming each record's group (patient, customer), for unit = group
    accountant: str | None  # None: the ledger's own, or the default (PRV) for a new ledger
    state_dir: Path | None  # None: a simulated node's folder is derived per run (see ``state_dir_for``)
    min_peers: int = DEFAULT_MIN_PEERS  # SecAgg+: smallest survivor set, itself included, it takes part in
    min_threshold: int = DEFAULT_MIN_THRESHOLD  # SecAgg+: smallest threshold it accepts
    roster: Path | None = None  # the federation's pinned roster (deployed nodes)
    signing_key: Path | None = None  # this node's Ed25519 key on that roster

    @classmethod
    def of(cls, node_config: Mapping[str, object], cfg: RunConfig) -> "NodePolicy":
        """Read and check the policy once, at the edge (each message)."""
        if is_simulated(node_config):
            return cls._simulated(node_config, cfg)
        problem = unknown_key_problem(node_config)
        if problem:
            raise PolicyError(problem)
        r = _Reader(node_config)
        policy = cls(
            simulated=False,
            require_dp=r.flag("require-dp"),
            require_secagg=r.flag("require-secagg"),
            max_epsilon=r.number("max-epsilon", positive=True),
            max_delta=r.optional_number("max-delta"),
            min_eval_records=int(r.number("min-eval-records", integer=True)),
            eval_fraction=r.number("eval-fraction"),
            split_seed=int(r.number("split-seed", integer=True)),
            release_label_counts=r.flag("release-label-counts"),
            unit=r.choice("privacy-unit", UNITS),
            group_column=r.text("group-column"),
            accountant=r.choice("accountant", ("", *ACCOUNTANTS)) or None,
            state_dir=r.path("state-dir"),
            min_peers=int(r.number("min-peers", integer=True)),
            min_threshold=int(r.number("min-threshold", integer=True)),
            roster=r.path("roster"), signing_key=r.path("signing-key"),
        )
        policy._check()
        return policy

    @classmethod
    def _simulated(cls, node_config: Mapping[str, object], cfg: RunConfig) -> "NodePolicy":
        r, p = _Reader(node_config), cfg.privacy
        return cls(
            simulated=True, require_dp=False, require_secagg=r.flag("require-secagg", False),
            max_epsilon=r.number("max-epsilon", positive=True, default=p.simulated_max_epsilon),
            max_delta=None, min_eval_records=1, eval_fraction=cfg.data.eval_fraction,
            split_seed=cfg.data.seed + 1000 + int(node_config["partition-id"]),  # type: ignore[arg-type]
            release_label_counts=True, unit="record", group_column="", accountant=p.accountant,
            state_dir=r.path("state-dir"),
            min_peers=int(r.number("min-peers", integer=True)),
            min_threshold=int(r.number("min-threshold", integer=True)),
        )

    def _check(self) -> None:
        if not 0 < self.eval_fraction < 1:
            raise PolicyError(f"node config eval-fraction must be in (0, 1), got {self.eval_fraction}")
        if self.min_eval_records < 1:
            raise PolicyError(f"node config min-eval-records must be >= 1, got {self.min_eval_records}")
        if self.max_delta is not None and not 0 < self.max_delta < 1:
            raise PolicyError(f"node config max-delta must be in (0, 1), got {self.max_delta}")
        if self.min_peers < 2 or self.min_threshold < 1:
            raise PolicyError(f"node config min-peers must be >= 2 and min-threshold >= 1, got {self.min_peers} and "
                              f"{self.min_threshold}: a secure sum of one node is that node's update")
        if self.unit == "group" and not self.group_column:
            raise PolicyError("node config privacy-unit = 'group' needs group-column: the field naming each "
                              "record's patient or customer")

    # -- what a run may ask for -------------------------------------------------------------
    def effective(self, cfg: RunConfig) -> "EffectivePrivacy":
        """The run's request, held to this policy: refused (PolicyRefusal) where it asks for less."""
        p = cfg.privacy
        if self.require_dp and not p.enabled:
            raise PolicyRefusal("this node trains only with differential privacy, but the run has "
                                "privacy.enabled=false (node config: require-dp)")
        unit = "group" if "group" in (self.unit, p.unit) else "record"
        group_column = self.group_column if self.unit == "group" else cfg.data.group_column
        if unit == "group" and not group_column:
            raise PolicyRefusal("the run asks for privacy.unit = 'group' but names no data.group-column")
        return EffectivePrivacy(p.enabled or self.require_dp, unit, group_column, self.accountant)

    def delta_for(self, requested: float, units: int) -> float:
        """The node's δ for ``units`` privacy units: the run may ask for a smaller one, never a larger."""
        ceiling = self.max_delta if self.max_delta is not None else 0.1 / units
        if self.simulated:  # no operator of its own: the run's δ, as asked
            delta = requested or ceiling
        else:
            delta = min(requested, ceiling) if requested > 0 else ceiling
        if delta >= 1.0 / units:
            raise PolicyRefusal(
                f"privacy.delta = {delta:g} is not below 1/N = {1.0 / units:g} for this node's {units} privacy units: "
                "such a δ allows leaking a whole record. Use a smaller delta, or 0 for the default 0.1/N (a deployed "
                "node: lower max-delta in its node config, or leave it unset)")
        return delta

    def state_dir_for(self, cfg: RunConfig, name: str, run_id: int) -> Path:
        """Where this node's ledger lives: a deployed node's own ``state-dir``; for a simulated node
        ``privacy.state-dir`` or a folder of this run."""
        if self.state_dir is not None:
            return self.state_dir
        if not self.simulated:
            raise PolicyError("this node has no 'state-dir' in its node config: the privacy ledger needs one")
        if cfg.privacy.state_dir:
            root = Path(cfg.privacy.state_dir).expanduser()
        elif cfg.output.dir:
            root = Path(cfg.output.dir).expanduser() / "node-state"
        else:  # plain `flwr run .`: the server's timestamped folder is unknown here; key by run id
            root = cache_root() / "simulated-node-state" / f"run-{run_id}"
        return root / name


@dataclass(frozen=True)
class EffectivePrivacy:
    enabled: bool
    unit: str
    group_column: str
    accountant: str | None


class _Reader:
    """Typed reads of node-config values (Flower passes TOML scalars or strings); defaults come from
    ``NODE_KEYS``, and reading a key it does not declare is a programming error."""

    def __init__(self, node_config: Mapping[str, object]):
        self.cfg = node_config

    def _get(self, key: str, default: object = None) -> object:
        declared = NODE_KEYS[key].default  # KeyError: declare the key in node_config_keys.py first
        return self.cfg.get(key, declared if default is None else default)

    def flag(self, key: str, default: bool | None = None) -> bool:
        value = self._get(key, default)
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise PolicyError(f"node config {key} must be true or false, got {value!r}")

    def number(self, key: str, positive: bool = False, integer: bool = False, default: float | None = None) -> float:
        value = self._get(key, default)
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise PolicyError(f"node config {key} must be a number, got {value!r}") from None
        if integer and number != int(number):
            raise PolicyError(f"node config {key} must be a whole number, got {value!r}")
        if positive and not number > 0:
            raise PolicyError(f"node config {key} must be > 0, got {value!r}")
        if number < 0:
            raise PolicyError(f"node config {key} must not be negative, got {value!r}")
        return number

    def optional_number(self, key: str) -> float | None:
        return self.number(key, positive=True) if key in self.cfg else None

    def text(self, key: str) -> str:
        value = self._get(key)
        return "" if value is None else str(value)

    def path(self, key: str) -> Path | None:
        value = self.text(key)
        return Path(value).expanduser() if value else None

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in allowed:
            raise PolicyError(f"node config {key} must be one of {', '.join(allowed)}, got {value!r}")
        return value
