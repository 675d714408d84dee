"""Server-side aggregation of LoRA deltas.

Aggregation is split in two so secure aggregation can replace the first half: nodes'
deltas are combined into a weighted *sum* (in the clear here, or unmasked-in-sum by SecAgg+),
and the strategy only ever sees that sum and the total weight.  The strategy checks that sum
before using it: a NaN/Inf or wrongly shaped aggregate is refused (``BadAggregate``) and neither
the global adapter nor the strategy's own state changes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from fedtune.common.adapters import AdapterMismatch, apply_delta, check_arrays

Arrays = Mapping[str, np.ndarray]


class BadAggregate(ValueError):
    """The aggregated update cannot be applied (non-finite, wrong names/shapes, bad total weight)."""


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


def check_aggregate(global_arrays: Arrays, delta_sum: Arrays, total_weight: float) -> None:
    """Raise BadAggregate unless the sum fits the adapter, is finite and has a positive finite weight."""
    if not np.isfinite(total_weight) or total_weight <= 0:
        raise BadAggregate(f"total weight {total_weight!r} is not a positive finite number")
    try:
        check_arrays(global_arrays, delta_sum)
    except AdapterMismatch as exc:
        raise BadAggregate(f"aggregate rejected: {exc}") from exc


@dataclass
class FedAvg:
    """A_{t+1} = A_t + server_lr * v_{t+1},  v_{t+1} = momentum * v_t + (sum_i n_i delta_i) / (sum_i n_i).

    ``momentum = 0`` is FedAvg (v is then just the weighted mean delta); ``momentum > 0`` is FedAvgM
    (Hsu et al., 2019), whose velocity ``v`` is the strategy state a checkpoint must keep.
    """

    server_lr: float = 1.0
    momentum: float = 0.0
    velocity: "OrderedDict[str, np.ndarray] | None" = field(default=None, repr=False)

    def step(self, global_arrays: Arrays, delta_sum: Arrays, total_weight: float) -> "OrderedDict[str, np.ndarray]":
        """The next global adapter; the state is only updated when the result is usable."""
        check_aggregate(global_arrays, delta_sum, total_weight)
        mean = OrderedDict((n, np.asarray(v, dtype=np.float64) / total_weight) for n, v in delta_sum.items())
        velocity = mean
        if self.momentum and self.velocity is not None:
            velocity = OrderedDict((n, self.momentum * self.velocity[n].astype(np.float64) + m) for n, m in mean.items())
        velocity = OrderedDict((n, v.astype(np.float32)) for n, v in velocity.items())
        new = apply_delta(global_arrays, velocity, self.server_lr)
        try:
            check_arrays(global_arrays, new)
        except AdapterMismatch as exc:  # e.g. float32 overflow of a huge but finite sum
            raise BadAggregate(f"applying the aggregate gives an unusable adapter: {exc}") from exc
        if self.momentum:
            self.velocity = velocity
        return new

    # -- checkpointing ----------------------------------------------------------------
    def state_arrays(self) -> "OrderedDict[str, np.ndarray]":
        """Everything the next step depends on besides the global adapter (empty for plain FedAvg)."""
        return OrderedDict() if self.velocity is None else OrderedDict(self.velocity)

    def load_state_arrays(self, arrays: Arrays) -> None:
        self.velocity = OrderedDict((n, np.asarray(a, dtype=np.float32)) for n, a in arrays.items()) or None
