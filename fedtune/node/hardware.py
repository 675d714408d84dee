"""Where a node's model runs is its operator's choice: the node config's ``device`` (auto, cpu, cuda)
replaces the run config's ``model.device``, so a coordinator cannot push a node onto hardware it does
not have (a refused round) or off the GPU its operator gave it.  No ``device`` key: the run config's."""

from __future__ import annotations

import dataclasses
from typing import Mapping

from fedtune.common.config import DEVICES, RunConfig
from fedtune.node.policy import PolicyError


def on_this_node(cfg: RunConfig, node_config: Mapping[str, object]) -> RunConfig:
    """``cfg`` with the node's own device, where its node config sets one."""
    wanted = node_config.get("device")
    if wanted is None:
        return cfg
    if wanted not in DEVICES:
        raise PolicyError(f"node config device = {wanted!r}: use one of {', '.join(DEVICES)} (auto = the GPU where "
                          "torch sees one, else the CPU)")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device=str(wanted)))
