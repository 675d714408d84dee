"""The node learning rate of each round: constant, or linear warm-up then cosine decay over the rounds.

A pure function of the run config and the round number, so every node (and a resumed run) uses
the same rate in the same round.  The last round keeps a non-zero rate: with few rounds a decay
to zero would waste the final round.
"""

from __future__ import annotations

import math

from fedtune.common.config import TrainConfig


def round_lr(train: TrainConfig, rounds: int, rnd: int) -> float:
    """train.lr scaled for round ``rnd`` (1-based) of a ``rounds``-round run."""
    if rnd <= train.warmup_rounds:
        return train.lr * rnd / (train.warmup_rounds + 1)
    if train.lr_schedule == "constant":
        return train.lr
    decay = rounds - train.warmup_rounds  # rounds at or after the peak, the first of them at train.lr
    progress = (min(rnd, rounds) - train.warmup_rounds - 1) / decay
    return train.lr * 0.5 * (1 + math.cos(math.pi * progress))
