"""Server-side aggregation of LoRA deltas: FedAvg / FedAvgM and the adaptive FedAdam, FedYogi, FedAdagrad.

Aggregation is split in two so secure aggregation can replace the first half: nodes'
deltas are combined into a weighted *sum* (in the clear here, or unmasked-in-sum by SecAgg+),
and the strategy only ever sees that sum and the total weight.  The strategy checks that sum
before using it: a NaN/Inf or wrongly shaped aggregate is refused (``BadAggregate``) and neither
the global adapter nor the strategy's own state changes.

The sum may cover an ordered *subset* of the adapter's tensors (FFA-LoRA trains and sends only the
LoRA B matrices): tensors it does not name are returned unchanged, and the strategy's state covers
only the tensors it does name.  State is kept in float32 - what the checkpoint stores - so a run
restored from a checkpoint continues bit for bit like one that never stopped.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Sequence

import numpy as np

from fedtune.common.adapters import AdapterMismatch, check_arrays
from fedtune.common.config import FederationConfig

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


def check_subset(global_arrays: Arrays, arrays: Arrays) -> None:
    """Raise AdapterMismatch unless ``arrays`` names some of the adapter's tensors, in the adapter's order,
    with their shapes, all finite (a subset because FFA-LoRA sends only the B matrices)."""
    check_arrays(OrderedDict((n, a) for n, a in global_arrays.items() if n in arrays), arrays)


def check_aggregate(global_arrays: Arrays, delta_sum: Arrays, total_weight: float) -> None:
    """Raise BadAggregate unless the sum fits (part of) the adapter, is finite and has a positive finite weight."""
    if not np.isfinite(total_weight) or total_weight <= 0:
        raise BadAggregate(f"total weight {total_weight!r} is not a positive finite number")
    if not delta_sum:
        raise BadAggregate("aggregate rejected: it holds no tensors")
    try:
        check_subset(global_arrays, delta_sum)
    except AdapterMismatch as exc:
        raise BadAggregate(f"aggregate rejected: {exc}") from exc


def _mean(delta_sum: Arrays, total_weight: float) -> "OrderedDict[str, np.ndarray]":
    """The weighted mean delta Δ, in float64."""
    return OrderedDict((n, np.asarray(d, dtype=np.float64) / total_weight) for n, d in delta_sum.items())


def _float32(arrays: Arrays, what: str) -> "OrderedDict[str, np.ndarray]":
    """Cast to float32, refusing values that overflow it (a huge but finite aggregate)."""
    out = OrderedDict((n, np.asarray(a).astype(np.float32)) for n, a in arrays.items())
    for n, a in out.items():
        if not np.all(np.isfinite(a)):
            raise BadAggregate(f"{what}: {n}: contains NaN or Inf")
    return out


def _merged(global_arrays: Arrays, new: Arrays) -> "OrderedDict[str, np.ndarray]":
    """The full adapter: stepped tensors from ``new``, every other tensor as it was."""
    return OrderedDict((n, new[n] if n in new else a) for n, a in global_arrays.items())


def _same_names(state: Arrays | None, delta: Arrays) -> None:
    """The state was built over the tensors of earlier rounds; a sum over other tensors cannot use it."""
    if state is not None and list(state) != list(delta):
        raise BadAggregate(f"aggregate rejected: it covers {len(delta)} tensors, the optimiser state another "
                           f"{len(state)} (first: {next(iter(delta), None)!r} vs {next(iter(state), None)!r})")


def _check_state_fits(global_arrays: Arrays, arrays: Arrays) -> None:
    try:
        check_subset(global_arrays, arrays)
    except AdapterMismatch as exc:
        raise AdapterMismatch(f"strategy state does not fit the adapter: {exc}") from exc


@dataclass
class FedAvg:
    """A_{t+1} = A_t + server_lr * v_{t+1},  v_{t+1} = momentum * v_t + (sum_i n_i delta_i) / (sum_i n_i).

    ``momentum = 0`` is FedAvg (v is then just the weighted mean delta); ``momentum > 0`` is FedAvgM
    (Hsu et al., 2019), whose velocity ``v`` is the strategy state a checkpoint must keep (under the
    adapter's own tensor names, as in older checkpoints).
    """

    server_lr: float = 1.0
    momentum: float = 0.0
    velocity: "OrderedDict[str, np.ndarray] | None" = field(default=None, repr=False)

    @np.errstate(over="ignore", invalid="ignore")  # overflow is refused below, not just warned about
    def step(self, global_arrays: Arrays, delta_sum: Arrays, total_weight: float) -> "OrderedDict[str, np.ndarray]":
        """The next global adapter; the state is only updated when the result is usable."""
        check_aggregate(global_arrays, delta_sum, total_weight)
        velocity = _mean(delta_sum, total_weight)
        if self.momentum and self.velocity is not None:
            _same_names(self.velocity, velocity)
            velocity = OrderedDict((n, self.momentum * self.velocity[n].astype(np.float64) + m)
                                   for n, m in velocity.items())
        velocity = _float32(velocity, "the averaged delta overflows float32")
        new = _float32({n: global_arrays[n] + np.float32(self.server_lr) * v for n, v in velocity.items()},
                       "applying the aggregate gives an unusable adapter")
        if self.momentum:
            self.velocity = velocity
        return _merged(global_arrays, new)

    # -- checkpointing ----------------------------------------------------------------
    def state_arrays(self) -> "OrderedDict[str, np.ndarray]":
        """Everything the next step depends on besides the global adapter (empty for plain FedAvg)."""
        return OrderedDict() if self.velocity is None else OrderedDict(self.velocity)

    def load_state_arrays(self, arrays: Arrays) -> None:
        self.velocity = OrderedDict((n, np.asarray(a, dtype=np.float32)) for n, a in arrays.items()) or None

    def check_state(self, global_arrays: Arrays, arrays: Arrays) -> None:
        """AdapterMismatch unless a loaded state is a velocity over (some of) this adapter's tensors."""
        if arrays and not self.momentum:
            raise AdapterMismatch(f"plain FedAvg keeps no state, but {len(arrays)} strategy tensors were given")
        _check_state_fits(global_arrays, arrays)


@dataclass
class _Adaptive:
    """Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2, on the mean delta Δ:

    m ← β1·m + (1−β1)·Δ;  v ← (per optimiser);  x ← x + η·m / (√v + τ),  with m₀ = 0, v₀ = τ².

    As in the paper there is no bias correction: v₀ = τ² and τ already bound the first steps.
    Computed in float64; m and v are stored as float32 (``m/<name>``, ``v/<name>`` in the checkpoint).
    """

    name: ClassVar[str] = ""
    server_lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: "OrderedDict[str, np.ndarray] | None" = field(default=None, repr=False)
    v: "OrderedDict[str, np.ndarray] | None" = field(default=None, repr=False)

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """v_t from v_{t-1} and Δ² (what distinguishes Adam, Yogi and Adagrad)."""
        raise NotImplementedError

    @np.errstate(over="ignore", invalid="ignore")  # overflow is refused below, not just warned about
    def step(self, global_arrays: Arrays, delta_sum: Arrays, total_weight: float) -> "OrderedDict[str, np.ndarray]":
        """The next global adapter; m and v only change when the result is usable."""
        check_aggregate(global_arrays, delta_sum, total_weight)
        mean = _mean(delta_sum, total_weight)
        _same_names(self.m, mean)
        m_prev = dict.fromkeys(mean, 0.0) if self.m is None else self.m
        v_prev = dict.fromkeys(mean, self.tau ** 2) if self.v is None else self.v
        m = OrderedDict((n, self.beta1 * np.asarray(m_prev[n], np.float64) + (1 - self.beta1) * d)
                        for n, d in mean.items())
        v = OrderedDict((n, self.second_moment(np.asarray(v_prev[n], np.float64), d * d)) for n, d in mean.items())
        x = {n: np.asarray(global_arrays[n], np.float64) + self.server_lr * m[n] / (np.sqrt(v[n]) + self.tau)
             for n in mean}
        new = _float32(x, "applying the aggregate gives an unusable adapter")
        m32, v32 = _float32(m, "optimiser state m overflows float32"), _float32(v, "optimiser state v overflows")
        self.m, self.v = m32, v32
        return _merged(global_arrays, new)

    # -- checkpointing ----------------------------------------------------------------
    def state_arrays(self) -> "OrderedDict[str, np.ndarray]":
        """m and v, prefixed ``m/`` and ``v/``; empty before the first step."""
        if self.m is None:
            return OrderedDict()
        return OrderedDict([*((f"m/{n}", a) for n, a in self.m.items()),
                            *((f"v/{n}", a) for n, a in self.v.items())])

    def load_state_arrays(self, arrays: Arrays) -> None:
        self.m, self.v = _split_moments(arrays)

    def check_state(self, global_arrays: Arrays, arrays: Arrays) -> None:
        """AdapterMismatch unless a loaded state is m and v over the same (some of) the adapter's tensors, v >= 0."""
        m, v = _split_moments(arrays)
        if m is None:
            return
        _check_state_fits(global_arrays, m)
        _check_state_fits(global_arrays, v)
        negative = [n for n, a in v.items() if np.any(a < 0)]
        if negative:
            raise AdapterMismatch(f"strategy state: second moment v/{negative[0]} has negative values")


def _split_moments(arrays: Arrays) -> tuple["OrderedDict[str, np.ndarray] | None", ...]:
    """``m/<name>`` and ``v/<name>`` tensors back into m and v (None, None for an empty state)."""
    if not arrays:
        return None, None
    odd = [n for n in arrays if not n.startswith(("m/", "v/"))]
    if odd:
        raise AdapterMismatch(f"strategy state: {odd[0]!r} is not an m/ or v/ tensor of an adaptive optimiser "
                              "(was the checkpoint written with another federation.strategy?)")
    m, v = (OrderedDict((n[2:], np.asarray(a, np.float32)) for n, a in arrays.items() if n.startswith(p))
            for p in ("m/", "v/"))
    if list(m) != list(v):
        raise AdapterMismatch(f"strategy state: m covers {len(m)} tensors, v {len(v)} (or in another order)")
    return m, v


@dataclass
class FedAdam(_Adaptive):
    """Adam second moment: v ← β2·v + (1−β2)·Δ²."""

    name: ClassVar[str] = "fedadam"

    def second_moment(self, v, d2):
        return self.beta2 * v + (1 - self.beta2) * d2


@dataclass
class FedYogi(_Adaptive):
    """Yogi second moment: v ← v − (1−β2)·Δ²·sign(v − Δ²) - where v > Δ² it shrinks by (1−β2)·Δ², not
    by a factor β2 as Adam's does, so a few quiet rounds do not blow up the effective step η/√v."""

    name: ClassVar[str] = "fedyogi"

    def second_moment(self, v, d2):
        return v - (1 - self.beta2) * d2 * np.sign(v - d2)


@dataclass
class FedAdagrad(_Adaptive):
    """Adagrad second moment: v ← v + Δ² (β2 unused)."""

    name: ClassVar[str] = "fedadagrad"

    def second_moment(self, v, d2):
        return v + d2


Strategy = FedAvg | FedAdam | FedYogi | FedAdagrad
ADAPTIVE = {cls.name: cls for cls in (FedAdam, FedYogi, FedAdagrad)}


def make_strategy(fed: FederationConfig) -> Strategy:
    """The server optimiser ``federation.strategy`` names (fedavg with server-momentum > 0 is FedAvgM)."""
    if fed.strategy in ("fedavg", "fedavgm"):
        return FedAvg(fed.server_lr, fed.server_momentum)
    if fed.strategy not in ADAPTIVE:
        raise ValueError(f"unknown federation.strategy {fed.strategy!r}")
    return ADAPTIVE[fed.strategy](fed.server_lr, fed.server_beta1, fed.server_beta2, fed.server_tau)
