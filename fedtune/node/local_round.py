"""One node's training round: budget check → (DP-)training → LoRA delta → privacy ledger.

Shared by the ClientApp and by anything else that must run exactly the same local work (e.g. the
Flower built-in SecAgg+ comparison in ``benchmarks/``).  The ledger is written before this
returns, i.e. before anything derived from the records can leave the node.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from fedtune.common.adapters import delta, get_adapter_arrays
from fedtune.common.config import RunConfig
from fedtune.common.messages import BUDGET_EXHAUSTED
from fedtune.node.local_data import NodeData
from fedtune.node.privacy import DPStepper, plan_round
from fedtune.node.process_cache import NODE_PROCESS, NodeCache
from fedtune.node.training import train_local


@dataclass
class LocalRound:
    data: NodeData
    status: str  # "ok" or BUDGET_EXHAUSTED (nothing trained, nothing to send)
    metrics: dict
    update: "OrderedDict[str, np.ndarray] | None" = None


def train_round(cfg: RunConfig, node_config: Mapping, run_id: int, rnd: int, global_arrays: Mapping[str, np.ndarray],
                cache: NodeCache = NODE_PROCESS) -> LocalRound:
    # the model holds exactly the received global adapter (anything else is refused)
    model, encoder, data = cache.prepare(cfg, node_config, global_arrays)
    metrics: dict = {"examples": len(data.train), "num_records": len(data.train)}
    stepper = privacy = None
    if cfg.privacy.enabled:
        privacy = plan_round(cfg, node_config, data.name, data.fingerprint, len(data.train), run_id)
        metrics.update(delta=privacy.ledger.delta, max_epsilon=privacy.max_epsilon,
                       noise_multiplier=privacy.plan.noise_multiplier, sample_rate=privacy.plan.sample_rate)
        if not privacy.allowed:  # the node's own budget decides; nothing is trained or sent
            metrics.update(epsilon=privacy.epsilon_before, epsilon_if_trained=privacy.epsilon_after)
            return LocalRound(data, BUDGET_EXHAUSTED, metrics)
        stepper = DPStepper(model, len(data.train), cfg.train, privacy.plan, cfg.privacy.clipping)
    seed = int(np.random.SeedSequence([cfg.train.seed, rnd, zlib.crc32(data.name.encode())]).generate_state(1)[0])
    result = train_local(model, encoder, data.train, cfg.train, cfg.model.precision, seed, stepper)
    update = delta(get_adapter_arrays(model), global_arrays)
    if privacy is not None:  # persist the spent budget before anything derived from the data leaves
        metrics["epsilon"] = privacy.ledger.record(privacy.plan.segment, round=rnd, run_id=run_id)
    metrics.update(train_loss=result.loss, steps=result.steps, samples=result.samples, train_seconds=result.seconds)
    return LocalRound(data, "ok", metrics, update)
