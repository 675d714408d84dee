"""Local training on one node: k AdamW steps on the LoRA parameters, per-sample loss."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .adapters import adapter_parameters
from .config import TrainConfig
from .data.prompts import Encoded, PromptEncoder
from .model import device
from .objective import per_sample_forward


@dataclass
class TrainResult:
    loss: float  # mean per-sample loss over all steps
    steps: int
    samples: int  # samples processed (sum of batch sizes)
    seconds: float


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless fixed-size batches: reshuffle each epoch, never repeat a record within an epoch."""
    size = min(batch_size, n)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - size + 1, size):
            yield order[start:start + size]


def train_local(
    model,
    encoder: PromptEncoder,
    data: Sequence[Encoded],
    cfg: TrainConfig,
    precision: str,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train the adapter in place for ``cfg.local_steps`` steps; return loss and timing."""
    if not data:
        raise ValueError("no training records on this node")
    params = list(adapter_parameters(model).values())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(seed)
    batches = shuffled_batches(len(data), cfg.batch_size, rng)
    model.train()
    start, losses, samples = time.perf_counter(), [], 0
    for step in range(1, cfg.local_steps + 1):
        idx = next(batches)
        batch = encoder.collate([data[i] for i in idx]).to(device())
        loss = per_sample_forward(model, batch, precision).losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        samples += len(idx)
        if progress:
            progress(step, losses[-1])
    model.eval()
    return TrainResult(float(np.mean(losses)), cfg.local_steps, samples, time.perf_counter() - start)
