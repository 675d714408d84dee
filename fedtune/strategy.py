"""Server-side aggregation of LoRA deltas.

Aggregation is split in two so secure aggregation can replace the first half: nodes'
deltas are combined into a weighted *sum* (in the clear here, or unmasked-in-sum by SecAgg+),
and the strategy only ever sees that sum and the total weight.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .adapters import apply_delta

Arrays = Mapping[str, np.ndarray]


def weighted_sum(updates: Sequence[tuple[Arrays, float]]) -> tuple["OrderedDict[str, np.ndarray]", float]:
    """sum_i w_i * delta_i and sum_i w_i (float64 accumulation)."""
    if not updates:
        raise ValueError("no updates to aggregate")
    names = list(updates[0][0])
    total = float(sum(w for _, w in updates))
    acc = OrderedDict((n, np.zeros(updates[0][0][n].shape, dtype=np.float64)) for n in names)
    for arrays, weight in updates:
        if list(arrays) != names:
            raise ValueError("updates disagree on adapter tensor names")
        for n in names:
            acc[n] += np.float64(weight) * arrays[n]
    return acc, total


@dataclass
class FedAvg:
    """A_{t+1} = A_t + server_lr * (sum_i n_i delta_i) / (sum_i n_i)."""

    server_lr: float = 1.0

    def step(self, global_arrays: Arrays, delta_sum: Arrays, total_weight: float) -> "OrderedDict[str, np.ndarray]":
        if total_weight <= 0:
            raise ValueError("total weight must be positive")
        mean = OrderedDict((n, (np.asarray(v, dtype=np.float64) / total_weight).astype(np.float32)) for n, v in delta_sum.items())
        return apply_delta(global_arrays, mean, self.server_lr)
