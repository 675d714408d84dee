"""Baselines for a simulation preset, so a federated result can be judged.

On exactly the nodes' data splits of the federated run (same partition, same held-out records)
and with the same total number of local optimiser steps (rounds × local-steps × nodes):

* **base model**: the initial adapter (LoRA B = 0, i.e. the base model), no training - this is
  exactly the federated run's round 0 (same records, same adapter), so it is taken from there;
* **local-only**: each node trains alone for rounds × local-steps steps and is scored on its own
  held-out records (pooled over nodes: what the nodes get without federating), and on every
  node's held-out records (the pooled set the federated and centralized rows are scored on:
  how a node's model does on patients unlike its own);
* **centralized**: one model trained on the pooled training records of all nodes for the total
  number of steps, scored on every node's held-out records (the usual upper reference);

each with DP-SGD (same target ε, δ = 0.1/N of the data it trains on) and without.  These run
in this process (no federation is involved); the federated rows come from Flower runs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

from fedtune.common.config import ConfigError, RunConfig
from fedtune.common.evaluation import combine_metrics, evaluate
from fedtune.common.model_cache import ModelCache, ModelSpec
from fedtune.node.local_data import NodeData, load_node_data
from fedtune.node.privacy import DPPlan, DPStepper, default_delta, epsilon, noise_for_target, poisson_sample_rate
from fedtune.node.training import train_local

METRICS = ("accuracy", "macro_f1", "rouge_l", "loss", "perplexity")
LOCAL_OWN = "local-only"  # each node's model on its own held-out records
LOCAL_ALL = "local-only, all held-out"  # each node's model on every node's held-out records (pooled)


@dataclass
class Row:
    setting: str  # base model | local-only | federated | centralized
    dp: bool | None  # None: not applicable (no training)
    accuracy: float | None
    macro_f1: float | None
    rouge_l: float | None
    loss: float | None
    perplexity: float | None
    epsilon: float | None  # largest ε of any party (node, or the central trainer)
    steps: int  # optimiser steps in total
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def row_from_metrics(setting: str, dp: bool | None, metrics: dict, eps: float | None, steps: int,
                     seconds: float, prefix: str = "eval_") -> Row:
    return Row(setting, dp, *(metrics.get(prefix + m) for m in METRICS), eps, steps, round(seconds, 1))


def federated_row(records: Sequence[dict], dp: bool, seconds: float) -> Row:
    """The federated run's final round, as a comparison row."""
    last = records[-1]
    eps = [n["epsilon"] for r in records for n in r.get("nodes", {}).values() if n.get("epsilon") is not None]
    steps = sum(int(n.get("steps", 0)) for r in records[1:] for n in r.get("nodes", {}).values()
                if n.get("status") == "ok")
    return row_from_metrics("federated", dp, last, max(eps) if eps else None, steps, seconds)


def base_row(records: Sequence[dict]) -> Row:
    """Round 0 of a federated run scores the initial adapter on every node's held-out records."""
    return row_from_metrics("base model", None, records[0], None, 0, records[0].get("seconds", 0.0))


class Baselines:
    """Runs the in-process baselines for one run configuration and ``num_nodes`` simulated nodes."""

    def __init__(self, cfg: RunConfig, num_nodes: int, say: Callable[[str], None] = print):
        self.cfg, self.say = cfg, say
        self.models, self.spec = ModelCache(capacity=1), ModelSpec.of(cfg)  # the lab's own model, no node's
        self.initial = self.models.initial_adapter(self.spec)
        encoder = self.models.encoder(self.spec)
        self.nodes: list[NodeData] = [load_node_data(cfg, {"partition-id": i, "num-partitions": num_nodes}, encoder)
                                      for i in range(num_nodes)]
        self.steps_per_node = cfg.federation.rounds * cfg.train.local_steps

    def _eval(self, trained, node: NodeData) -> dict:
        c, (model, encoder) = self.cfg, trained
        return evaluate(model, encoder, node.eval, c.train.eval_batch_size, c.model.precision,
                        node.labels, c.train.eval_max_new_tokens, c.train.eval_method).to_metrics()

    def _train(self, data, steps: int, dp: bool, seed: int):
        """Train the initial adapter for ``steps`` steps: ((model, encoder), ε spent or None without DP)."""
        c = self.cfg
        model, encoder = self.models.holding(self.spec, self.initial)
        train_cfg = replace(c.train, local_steps=steps)
        stepper, eps = None, None
        if dp:
            q, delta = poisson_sample_rate(len(data), c.train.batch_size), c.privacy.delta or default_delta(len(data))
            if delta >= 1.0 / len(data):
                raise ConfigError(f"privacy.delta={delta:g} is not below 1/N for the baseline's {len(data)} records")
            sigma = c.privacy.noise_multiplier or noise_for_target(c.privacy.target_epsilon, delta, q, steps,
                                                                   c.privacy.accountant)
            plan = DPPlan(sigma, q, steps, c.privacy.max_grad_norm)
            stepper = DPStepper(model, len(data), train_cfg, plan, c.privacy.clipping)
            eps = epsilon([plan.segment], delta, c.privacy.accountant)
        train_local(model, encoder, data, train_cfg, c.model.precision, seed, stepper, labels=self.nodes[0].labels)
        return (model, encoder), eps

    def local_only(self, dp: bool) -> tuple[Row, Row]:
        """Each node alone, scored on its own held-out records and on every node's (the population)."""
        t0, own, everyone, eps = time.monotonic(), [], [], []
        for i, node in enumerate(self.nodes):
            self.say(f"baseline local-only ({'DP' if dp else 'no DP'}): {node.name}, {self.steps_per_node} steps")
            trained, spent = self._train(node.train, self.steps_per_node, dp, seed=self.cfg.train.seed + i)
            eps.append(spent)
            scores = [self._eval(trained, other) for other in self.nodes]
            own.append(scores[i])
            everyone.extend(scores)
        seconds, steps = time.monotonic() - t0, self.steps_per_node * len(self.nodes)
        spent = max(eps) if dp else None
        return (row_from_metrics(LOCAL_OWN, dp, combine_metrics(own), spent, steps, seconds),
                row_from_metrics(LOCAL_ALL, dp, combine_metrics(everyone), spent, steps, seconds))

    def centralized(self, dp: bool) -> Row:
        t0 = time.monotonic()
        pooled = [e for n in self.nodes for e in n.train]
        steps = self.steps_per_node * len(self.nodes)
        self.say(f"baseline centralized ({'DP' if dp else 'no DP'}): {len(pooled)} pooled records, {steps} steps")
        trained, eps = self._train(pooled, steps, dp, seed=self.cfg.train.seed)
        metrics = combine_metrics([self._eval(trained, n) for n in self.nodes])
        return row_from_metrics("centralized", dp, metrics, eps, steps, time.monotonic() - t0)
