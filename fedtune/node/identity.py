"""Who this node is in SecAgg+ and whom it believes: its signing key and the pinned roster.

A deployed node reads both from its own node config (``signing-key``, ``roster``), never from the
run: the coordinator cannot hand it another roster.  A simulated node has no operator and no
secrets from the researcher running it: its key is derived from its name (see
``fedtune.common.secagg.roster``), so the same signed protocol runs in a simulation.
"""

from __future__ import annotations

from typing import Mapping

from fedtune.common.secagg.crypto import signing_public_key
from fedtune.common.secagg.protocol import Trust
from fedtune.common.secagg.roster import Roster, RosterError, SimulatedRoster, load_signing_key, simulated_signing_key
from fedtune.node.policy import NodePolicy, PolicyError, node_name


def node_trust(node_config: Mapping[str, object], policy: NodePolicy) -> Trust:
    name = node_name(node_config)
    if policy.simulated:
        return Trust(name, simulated_signing_key(name), SimulatedRoster(), policy.min_peers, policy.min_threshold)
    if policy.roster is None or policy.signing_key is None:
        raise PolicyError("secure aggregation needs 'signing-key' and 'roster' in this node's config: create the key "
                          "with `fedtune node-key`, send its .roster-entry to the federation, and pin the roster file "
                          "assembled with `fedtune roster build` (see docs/guides/node-operator.md)")
    try:
        key, roster = load_signing_key(policy.signing_key), Roster.load(policy.roster)
    except RosterError as exc:
        raise PolicyError(str(exc)) from None
    if roster.keys.get(name) != signing_public_key(key):
        raise PolicyError(f"the roster {policy.roster} lists no key for this node's name '{name}', or another key "
                          f"than its signing-key {policy.signing_key}: fix the node config's name or the roster")
    return Trust(name, key, roster, policy.min_peers, policy.min_threshold)
