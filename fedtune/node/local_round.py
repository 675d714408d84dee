"""One node's training round: policy → budget check → (DP-)training → LoRA delta → privacy ledger.

Shared by the ClientApp and by anything else that must run exactly the same local work (e.g. the
Flower built-in SecAgg+ comparison in ``benchmarks/``).  The ledger is written before this
returns, i.e. before anything derived from the records can leave the node.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from fedtune.common.adapters import delta, get_adapter_arrays, trained_names
from fedtune.common.config import RunConfig
from fedtune.common.files import exclusive_lock
from fedtune.common.messages import BUDGET_EXHAUSTED, OK
from fedtune.node.local_data import NodeData
from fedtune.node.policy import STATE_LOCK_TIMEOUT, EffectivePrivacy, NodePolicy
from fedtune.node.privacy import DPStepper, PrivacyLedger, plan_round
from fedtune.node.privacy.ledger import LEDGER_LOCK
from fedtune.node.process_cache import NODE_PROCESS, NodeCache
from fedtune.node.lr_schedule import round_lr
from fedtune.node.training import train_local


@dataclass
class LocalRound:
    data: NodeData
    status: str  # "ok" or BUDGET_EXHAUSTED (nothing trained, nothing to send)
    metrics: dict
    update: "OrderedDict[str, np.ndarray] | None" = None
    moments: dict | None = None  # AdamW moments to carry to this node's next round (train.carry-optimizer-state)
    accounting: dict = dataclasses.field(default_factory=dict)  # the ledger's unit and accountant, reported with ε


def train_round(cfg: RunConfig, node_config: Mapping, run_id: int, rnd: int, global_arrays: Mapping[str, np.ndarray],
                cache: NodeCache = NODE_PROCESS, moments: Mapping[str, np.ndarray] | None = None) -> LocalRound:
    """One round of local work under the node's own policy (PolicyRefusal if the run asks for less privacy).
    ``moments``: this node's AdamW moments from its last round, used where ``train.carry-optimizer-state``."""
    policy = NodePolicy.of(node_config, cfg)
    eff = policy.effective(cfg)
    # the model holds exactly the received global adapter (anything else is refused)
    start = time.perf_counter()
    model, encoder, data = cache.prepare(cfg, node_config, global_arrays)
    prepared = {"prepare_seconds": time.perf_counter() - start}  # model + records ready: what scale benchmarks split out
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, lr=round_lr(cfg.train, cfg.federation.rounds, rnd)))  # this round's rate, for both steppers
    moments = dict(moments) if cfg.train.carry_optimizer_state and moments else None
    seed = int(np.random.SeedSequence([cfg.train.seed, rnd, zlib.crc32(data.name.encode())]).generate_state(1)[0])
    if not eff.enabled:  # only where the node's policy allows it (simulations; require-dp = false)
        result = train_local(model, encoder, data.train, cfg.train, cfg.model.precision, seed, labels=data.labels,
                             moments=moments)
        metrics = {**_counts(data), "train_loss": result.loss, **_work(result), **prepared}
        return LocalRound(data, OK, metrics, _update(model, global_arrays, cfg), _carried(cfg, result))
    state = policy.state_dir_for(cfg, data.name, run_id)
    # One round at a time per state dir, from the budget check to the ledger write: two runs (or two
    # SuperNodes sharing the folder) can never both spend the same remaining budget.
    with exclusive_lock(state / LEDGER_LOCK, STATE_LOCK_TIMEOUT, "privacy ledger"):
        ledger = open_ledger(cfg, policy, eff, data, state)
        privacy = plan_round(cfg, policy, ledger, data.units, len(data.train), rnd)
        metrics = {**_counts(data), "delta": privacy.delta, "max_epsilon": privacy.max_epsilon,
                   "sample_rate": privacy.plan.sample_rate}
        if not privacy.allowed:  # the node's own budget decides; nothing is trained or sent
            metrics["epsilon"] = privacy.epsilon_before
            if math.isfinite(privacy.epsilon_after):
                metrics["epsilon_if_trained"] = privacy.epsilon_after
            return LocalRound(data, BUDGET_EXHAUSTED, metrics, accounting=_accounting(ledger))
        metrics["noise_multiplier"] = privacy.plan.noise_multiplier
        with DPStepper(model, data.units, cfg.train, privacy.plan, cfg.privacy.clipping, data.groups,
                       privacy.units_per_batch, moments=moments) as stepper:
            result = train_local(model, encoder, data.train, cfg.train, cfg.model.precision, seed, stepper,
                                     labels=data.labels)
        update = _update(model, global_arrays, cfg)
        ledger.record(privacy.plan.segment, round=rnd, run_id=run_id)  # persisted before anything leaves
    # No training loss: it is computed from the private Poisson batch and DP-SGD does not cover it.
    metrics.update(epsilon=ledger.epsilon(delta=privacy.delta), **_work(result), **prepared)
    return LocalRound(data, OK, metrics, update, _carried(cfg, result), _accounting(ledger))


def _accounting(ledger: PrivacyLedger) -> dict:
    """How the reported ε was computed: what it protects and with which accountant (the node's own)."""
    return {"privacy_unit": ledger.unit, "accountant": ledger.accountant}


def _carried(cfg: RunConfig, result) -> dict | None:
    return result.moments if cfg.train.carry_optimizer_state else None


def open_ledger(cfg: RunConfig, policy: NodePolicy, eff: EffectivePrivacy, data: NodeData, state) -> PrivacyLedger:
    """The ledger of the node's data source (never keyed by anything the run config chose)."""
    return PrivacyLedger.open(state, data.source, eff.accountant, policy.delta_for(cfg.privacy.delta, data.units),
                              data.units, eff.unit, data.raw_fingerprint)


def _update(model, global_arrays: Mapping[str, np.ndarray], cfg: RunConfig) -> "OrderedDict[str, np.ndarray]":
    """The delta of the tensors this run trains (under lora.freeze-a the A matrices never change: not sent)."""
    return delta(get_adapter_arrays(model), global_arrays, trained_names(global_arrays, cfg.lora.freeze_a))


def _counts(data: NodeData) -> dict:
    return {"examples": len(data.train), "num_records": len(data.train)}


def _work(result) -> dict:
    return {"steps": result.steps, "samples": result.samples, "train_seconds": result.seconds}
