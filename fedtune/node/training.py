"""Local training on one node: k optimiser steps on the LoRA parameters, per-sample loss.

The loop is the same with and without differential privacy; what differs is the *stepper*:
how batches are drawn and how a step turns per-sample losses into an update.
``PlainStepper`` draws shuffled fixed-size batches and runs AdamW; the DP stepper
(``fedtune.node.privacy.dp_sgd.DPStepper``) draws Poisson batches and runs Opacus DP-SGD.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from fedtune.common.adapters import trainable_parameters
from fedtune.common.config import TrainConfig
from fedtune.common.data.prompts import Encoded, PromptEncoder
from fedtune.common.objective import objective_for
from fedtune.node.optimizer_state import export_moments, restore_moments


@dataclass
class TrainResult:
    loss: float  # mean per-sample loss over all non-empty steps
    steps: int
    samples: int  # samples processed (sum of batch sizes)
    seconds: float
    moments: dict | None = None  # the AdamW moments after the last step (kept on the node, never sent)


class Stepper(Protocol):
    def batches(self) -> Iterator[np.ndarray]:
        """Endless stream of record-index batches."""

    def step(self, losses: torch.Tensor) -> None:
        """Backward the per-sample losses of one batch and update the adapter."""

    def step_empty(self) -> None:
        """Update on an empty batch (possible under Poisson sampling)."""

    def moments(self) -> dict:
        """The optimiser's moments by parameter name (``optimizer_state``)."""

    def close(self) -> None:
        ...


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless fixed-size batches: reshuffle each epoch, never repeat a record within an epoch."""
    size = min(batch_size, n)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - size + 1, size):
            yield order[start:start + size]


class PlainStepper:
    """Non-private AdamW on shuffled fixed-size batches."""

    def __init__(self, model, num_records: int, cfg: TrainConfig, seed: int, moments: dict | None = None):
        self.named = trainable_parameters(model)
        self.optimizer = torch.optim.AdamW(list(self.named.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
        restore_moments(self.optimizer, self.named, moments)
        self._batches = shuffled_batches(num_records, cfg.batch_size, np.random.default_rng(seed))

    def batches(self) -> Iterator[np.ndarray]:
        return self._batches

    def step(self, losses: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        self.optimizer.step()

    def step_empty(self) -> None:  # fixed-size batches are never empty
        raise AssertionError("unreachable")

    def moments(self) -> dict:
        return export_moments(self.optimizer, self.named)

    def close(self) -> None:
        pass


def train_local(
    model,
    encoder: PromptEncoder,
    data: Sequence[Encoded],
    cfg: TrainConfig,
    precision: str,
    seed: int,
    stepper: Stepper | None = None,
    progress: Callable[[int, float], None] | None = None,
    labels: Sequence[str] = (),
    moments: dict | None = None,
) -> TrainResult:
    """Train the adapter in place for ``cfg.local_steps`` steps; return loss, timing and the optimiser's moments.
    ``labels``: the task's label set (the ``labels`` objective scores the answer against them); ``moments``:
    AdamW moments carried from the node's last round, for the plain stepper (a DP stepper gets its own)."""
    if not data:
        raise ValueError("no training records on this node")
    objective = objective_for(cfg.objective, encoder, data, labels, precision)
    private = stepper is not None
    stepper = stepper or PlainStepper(model, len(data), cfg, seed, moments)
    with torch.random.fork_rng(devices=[]):
        if not private:  # LoRA dropout draws from torch's global RNG: seed it so a resumed run repeats the round.
            torch.manual_seed(seed)  # Never under DP: its noise must not be reproducible from a known seed.
        return _train_steps(model, objective, cfg, stepper, progress)


def proximal_pull(params: Sequence[torch.nn.Parameter], anchor: Sequence[torch.Tensor], lr: float, mu: float) -> None:
    """FedProx, decoupled: w <- w - lr·μ·(w - w_global) after each step, the way AdamW applies weight decay.
    It uses only the public global adapter, never a record, so it is post-processing of DP-SGD's output."""
    with torch.no_grad():
        for p, a in zip(params, anchor):
            p.sub_(lr * mu * (p - a))


def _train_steps(model, objective, cfg, stepper, progress) -> TrainResult:
    batches = stepper.batches()
    params = list(trainable_parameters(model).values())
    anchor = [p.detach().clone() for p in params] if cfg.proximal_mu else []  # the received global adapter
    model.train()
    start, losses, samples = time.perf_counter(), [], 0
    try:
        for step in range(1, cfg.local_steps + 1):
            idx = next(batches)
            if len(idx) == 0:
                stepper.step_empty()
            else:
                per_sample = objective(model, idx)
                stepper.step(per_sample)
                losses.append(per_sample.mean().item())
                samples += len(idx)
            if cfg.proximal_mu:  # after every step, empty Poisson batches included
                proximal_pull(params, anchor, cfg.lr, cfg.proximal_mu)
            if progress and len(idx):
                progress(step, losses[-1])
        moments = stepper.moments()
    finally:
        stepper.close()
        model.eval()
    return TrainResult(float(np.mean(losses)) if losses else float("nan"), cfg.local_steps, samples,
                       time.perf_counter() - start, moments)
