"""Every key a deployed node's own config (``flower-supernode --node-config FILE``) may hold: its
default and what it does, declared once.  The node reads keys only through this table (policy.py's
reader refuses an undeclared one), refuses a config with a key it does not know (a typo such as
``privacy_unit`` must not silently fall back to a weaker default), and ``fedtune config reference``
prints this table.  Simulated nodes (``partition-id`` / ``num-partitions`` from Flower's Simulation
Runtime) take their policy from the run config and are not held to this list."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Mapping

DEFAULT_MAX_EPSILON = 8.0  # a deployed node that sets no budget gets this one
DEFAULT_MIN_EVAL_RECORDS = 20
DEFAULT_EVAL_FRACTION = 0.1
DEFAULT_MIN_PEERS = 3  # a secure sum over 2 nodes reveals each one's update to the other
DEFAULT_MIN_THRESHOLD = 2
UNITS = ("record", "group")
ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class NodeKey:
    name: str
    default: object  # None: no default (required, or unset means "off" as the help says)
    help: str


NODE_KEYS: dict[str, NodeKey] = {k.name: k for k in (
    NodeKey("name", None, "how the coordinator's reports and the roster name this node (default: the data "
            "file's stem)"),
    NodeKey("data-path", None, "required: the node's private records (.jsonl, .csv, .parquet or a datasets "
            "folder); they never leave this machine"),
    NodeKey("state-dir", None, "required: the privacy ledger and evaluation memo; keep it and back it up (a lost "
            "ledger forgets the budget already spent)"),
    NodeKey("max-epsilon", DEFAULT_MAX_EPSILON, "this node's total privacy budget ε on these records, over every "
            "run"),
    NodeKey("max-delta", None, "ceiling on δ (unset: 0.1 / the number of privacy units); a run may ask for a "
            "smaller δ, never a larger one"),
    NodeKey("require-dp", True, "refuse any run with privacy.enabled = false"),
    NodeKey("require-secagg", True, "refuse to send an update that is not masked by secure aggregation"),
    NodeKey("privacy-unit", "record", f"what ε protects: one of {', '.join(UNITS)} (group = a patient or customer, "
            "with group-column); a run may ask for group, never for less"),
    NodeKey("group-column", "", "the field naming each record's patient or customer (privacy-unit = group)"),
    NodeKey("accountant", "", f"one of {', '.join(ACCOUNTANTS)}; unset: an existing ledger's own, else prv; fixed "
            "for the life of a ledger"),
    NodeKey("eval-fraction", DEFAULT_EVAL_FRACTION, "this node's own held-out share of its records (in (0, 1))"),
    NodeKey("split-seed", 0, "the seed of that train / held-out split (the run's seed is never used)"),
    NodeKey("min-eval-records", DEFAULT_MIN_EVAL_RECORDS, "never evaluate on fewer held-out records"),
    NodeKey("release-label-counts", False, "send per-label counts of held-out predictions (for macro-F1): a "
            "held-out label histogram"),
    NodeKey("min-peers", DEFAULT_MIN_PEERS, "SecAgg+: reveal nothing for a secure sum over fewer nodes (itself "
            "included); at least 2"),
    NodeKey("min-threshold", DEFAULT_MIN_THRESHOLD, "SecAgg+: the smallest Shamir threshold this node accepts"),
    NodeKey("roster", None, "the federation's roster (name → public key) you checked key by key; needed for "
            "SecAgg+"),
    NodeKey("signing-key", None, "this node's Ed25519 key on that roster (`fedtune node-key`); never leaves"),
    NodeKey("approved-apps", None, "space-separated `fedtune app hash` values of the apps you reviewed; any other "
            "app is refused unrun (read by the SuperNode's guard, `fedtune/node/app_guard.py`)"),
    NodeKey("device", None, "where the model runs: auto (the GPU if torch sees one), cpu or cuda; unset: the run "
            "config's model.device"),
)}


def unknown_key_problem(node_config: Mapping[str, object]) -> str | None:
    """What is wrong with a deployed node's config whose key this node does not know, or None."""
    for key in node_config:
        if key not in NODE_KEYS:
            hint = difflib.get_close_matches(key, sorted(NODE_KEYS), n=1)
            return (f"node config has an unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                    + ": a misspelt key would leave its safe setting at the default. Known keys: "
                    + ", ".join(sorted(NODE_KEYS)))
    return None
