"""SecAgg+ parameters: neighbour graph, threshold and fixed-point encoding, all derived.

Graph and threshold (n sampled nodes, tolerated dropout fraction d):
* degree k = n - 1 (complete graph, i.e. SecAgg) when n <= 8, else the smallest even
  k >= max(6, 2 * ceil(log2 n)) (SecAgg+: O(log n) neighbours, Bell et al. 2020), capped at n - 1;
  neighbours are the k/2 nodes on either side in a ring ordered by a public per-round shuffle.
* threshold t = max(floor(k/2) + 1, ceil(k * (1 - d))) shares out of k. t > k/2 means the server
  can never obtain both the self-mask seed and the mask key of the same node; a node with at
  least t live neighbours can be unmasked, so up to k - t neighbour dropouts are tolerated.

Fixed-point encoding (clip bound C on each node's delta, L2; weight bound W; n nodes):
every value is a node's weighted delta w*x with |w*x| <= W*C per coordinate, mapped to
v = w*x / (W*C) in [-1, 1] and rounded to f fractional bits, as a two's-complement uint32.
f = 31 - ceil(log2 n) - 1 makes the sum of n such values stay inside (-2^31, 2^31): it cannot
wrap.  The per-coordinate error of the decoded *mean* is at most n * W * C * 2^-(f+1) / sum(w).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedtune.common.secagg.crypto import SecAggError

WIDTH = 32


@dataclass(frozen=True)
class Encoding:
    clip: float  # L2 bound each node's delta is clipped to
    max_weight: float  # bound W on a node's aggregation weight (e.g. its record count)
    num_nodes: int

    @property
    def frac_bits(self) -> int:
        f = WIDTH - 1 - math.ceil(math.log2(max(self.num_nodes, 2))) - 1
        if f < 8:
            raise SecAggError(f"{self.num_nodes} nodes leave too few bits for a uint32 encoding")
        return f

    @property
    def unit(self) -> float:  # the real value of one integer step
        return self.max_weight * self.clip / 2.0 ** self.frac_bits

    def encode(self, weighted: np.ndarray) -> np.ndarray:
        """w*x (float) -> uint32 two's complement. Values must already satisfy |w*x| <= W*C."""
        bound = self.max_weight * self.clip
        if not np.all(np.isfinite(weighted)) or np.max(np.abs(weighted), initial=0.0) > bound * (1 + 1e-6):
            raise SecAggError("value outside the encoding range (clip the delta and check the weight first)")
        q = np.rint(np.clip(weighted, -bound, bound) / self.unit).astype(np.int64)
        return (q & 0xFFFFFFFF).astype(np.uint32)

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """uint32 sum of <= num_nodes encodings -> float sum of the w*x."""
        return total.astype(np.uint32).view(np.int32).astype(np.float64) * self.unit


def clip_bound(cfg, num_params: int) -> float:
    """secagg.clip, or when 0 the auto bound 2 × lr × local-steps × sqrt(P): AdamW moves each of the P
    adapter values by about lr per step, so one round's delta stays well inside it."""
    if cfg.secagg.clip > 0:
        return float(cfg.secagg.clip)
    return float(2.0 * cfg.train.lr * cfg.train.local_steps * math.sqrt(num_params))


def clip_l2(vector: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """Scale ``vector`` so its L2 norm is at most ``bound``; returns (clipped, original norm)."""
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm > bound:
        vector = (vector * (bound / norm)).astype(vector.dtype)
    return vector, norm


def degree(n: int) -> int:
    if n < 2:
        raise SecAggError("secure aggregation needs at least 2 nodes")
    if n <= 8:
        return n - 1
    k = max(6, 2 * math.ceil(math.log2(n)))
    k += k % 2
    return min(k, n - 1)


def threshold(k: int, dropout: float) -> int:
    if not 0 <= dropout < 0.5:
        raise SecAggError("tolerated dropout fraction must be in [0, 0.5)")
    return min(k, max(k // 2 + 1, math.ceil(k * (1 - dropout))))


def neighbours(order: list[int], k: int) -> dict[int, list[int]]:
    """Ring neighbours: the k/2 on each side (all others when k = n - 1)."""
    n = len(order)
    if k >= n - 1:
        return {i: [j for j in order if j != i] for i in order}
    half = k // 2
    out = {}
    for pos, i in enumerate(order):
        out[i] = sorted({order[(pos + d) % n] for d in range(-half, half + 1) if d != 0})
    return out
